//! Links OpenSSL's libcrypto, which provides kiln's sha256 (see `src/sha256.rs`).
//!
//! Statically when the system has `libcrypto.a` (Debian's `libssl-dev` ships it): only the
//! sha256 code is then taken into the binary, and no kiln command loads and relocates the
//! 5 MB shared library at start. Otherwise, or with `KILN_OPENSSL_DYNAMIC` set, dynamically.
//! The library is found with pkg-config (`libcrypto`'s `libdir`).

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_OPENSSL_DYNAMIC");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let library_dir: Option<PathBuf> = pkg_config::get_variable("libcrypto", "libdir")
        .ok()
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from);
    if let Some(dir) = &library_dir {
        println!("cargo:rustc-link-search=native={}", dir.display());
    }
    let archive = library_dir
        .as_ref()
        .map(|dir| dir.join("libcrypto.a"))
        .filter(|archive| archive.is_file());
    match archive {
        Some(archive) if std::env::var_os("KILN_OPENSSL_DYNAMIC").is_none() => {
            println!("cargo:rerun-if-changed={}", archive.display());
            println!("cargo:rustc-link-lib=static=crypto");
        }
        _ => println!("cargo:rustc-link-lib=dylib=crypto"),
    }
}
