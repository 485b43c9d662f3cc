//! Archive outputs that exist and are not plain files are written into, never replaced:
//! `kiln save -o` and `-o type=docker,dest=` through a symlink and into a fifo. (A temp file
//! renamed over `-o /dev/null` once turned the host's /dev/null into a regular file.)

mod image_support;

use std::io::Read as _;
use std::os::unix::fs::FileTypeExt as _;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry};

fn kiln_with_busybox() -> (TestRegistry, Kiln, String) {
    let registry = TestRegistry::start();
    let name = push(&registry, &busybox_image(), "busybox:latest").to_string();
    let kiln = Kiln::new();
    kiln.ok(&["pull", "-q", &name]);
    (registry, kiln, name)
}

/// Whether bytes are a tar holding a docker-archive's manifest.json.
fn is_docker_archive(bytes: &[u8]) -> bool {
    let mut archive = tar::Archive::new(bytes);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    entries.flatten().any(|entry| {
        entry
            .path()
            .is_ok_and(|path| path.to_str() == Some("manifest.json"))
    })
}

#[test]
fn save_writes_through_a_symlink_and_into_a_fifo() {
    let (_registry, kiln, name) = kiln_with_busybox();
    let directory = tempfile::tempdir().expect("temp dir");

    let real = directory.path().join("real.tar");
    std::fs::write(&real, b"old contents, longer than nothing").expect("real file");
    let link = directory.path().join("link.tar");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    kiln.ok(&["save", "-o", link.to_str().expect("path"), &name]);
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink(),
        "the symlink was replaced"
    );
    assert!(is_docker_archive(&std::fs::read(&real).expect("read real")));

    let fifo = directory.path().join("fifo");
    let fifo_c = std::ffi::CString::new(fifo.to_str().expect("path")).expect("c path");
    // SAFETY: mkfifo on a NUL-terminated path
    assert_eq!(unsafe { libc::mkfifo(fifo_c.as_ptr(), 0o600) }, 0);
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::fs::File::open(&reader_path)
            .expect("open fifo")
            .read_to_end(&mut bytes)
            .expect("read fifo");
        bytes
    });
    kiln.ok(&["save", "-o", fifo.to_str().expect("path"), &name]);
    let bytes = reader.join().expect("reader");
    assert!(is_docker_archive(&bytes));
    assert!(std::fs::symlink_metadata(&fifo)
        .expect("fifo")
        .file_type()
        .is_fifo());
    assert!(!directory.path().join(".fifo.kiln-tmp").exists());
}

#[test]
fn build_archive_output_writes_through_a_symlink() {
    let (_registry, kiln, name) = kiln_with_busybox();
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {name}\nRUN echo in-place > /f\n"),
    )
    .expect("Dockerfile");
    let directory = tempfile::tempdir().expect("temp dir");
    let real = directory.path().join("real.tar");
    std::fs::write(&real, b"").expect("real file");
    let link = directory.path().join("link.tar");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    kiln.ok(&[
        "build",
        "-t",
        "inplace:1",
        "-o",
        &format!("type=docker,dest={}", link.display()),
        context.path().to_str().expect("path"),
    ]);
    assert!(std::fs::symlink_metadata(&link)
        .expect("link")
        .file_type()
        .is_symlink());
    assert!(is_docker_archive(&std::fs::read(&real).expect("read real")));
}
