//! Every Dockerfile of the real-world corpus (/work/shared/conformance/real-world, 209 files)
//! parses and converts to a DAG with an offline resolver, with the build args its project
//! passes where a stage needs one. Every file must convert, none may panic.

#![allow(clippy::print_stderr)]

use std::path::{Path, PathBuf};

use kiln_frontend::convert::{convert, ConvertOptions};
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::Platform;

const CORPUS: &str = "/work/shared/conformance/real-world";

fn dockerfiles(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            dockerfiles(&path, out);
        } else if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains("Dockerfile"))
        {
            out.push(path);
        }
    }
}

/// Build args some projects pass where a FROM needs one.
fn build_args_for(path: &Path) -> Vec<(&'static str, &'static str)> {
    let text = path.to_string_lossy();
    let mut args = Vec::new();
    if text.contains("/moby/") {
        // moby's Dockerfiles take these from its Makefile / CI.
        args.push(("GO_VERSION", "1.24"));
    }
    args
}

#[test]
fn real_world_dockerfiles_convert() {
    let root = Path::new(CORPUS);
    if !root.is_dir() {
        if std::env::var_os("CI").is_some() {
            panic!("the real-world corpus is missing at {CORPUS}");
        }
        eprintln!("skipped: {CORPUS} not found");
        return;
    }
    let mut files = Vec::new();
    dockerfiles(root, &mut files);
    files.sort();
    let resolver = OfflineResolver;
    let mut converted = 0;
    let mut failures = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let mut options = ConvertOptions::new(&resolver);
        options.build_platform = Some(Platform::parse("linux/amd64").unwrap());
        for (key, value) in build_args_for(path) {
            options
                .build_args
                .insert(key.to_string(), value.to_string());
        }
        let name = path
            .strip_prefix(root)
            .unwrap_or(path)
            .display()
            .to_string();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            convert(&text, &name, &options)
        })) {
            Ok(Ok(result)) => {
                assert!(!result.definition.is_empty(), "{name}: empty definition");
                converted += 1;
            }
            Ok(Err(error)) => failures.push(format!("{error}")),
            Err(_) => failures.push(format!("{name}: panicked")),
        }
    }
    eprintln!(
        "real-world: {converted} of {} Dockerfiles converted",
        files.len()
    );
    for failure in &failures {
        eprintln!("  {failure}");
    }
    assert_eq!(files.len(), 209, "corpus size changed");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
