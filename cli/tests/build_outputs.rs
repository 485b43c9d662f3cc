//! `kiln build -o type=docker|oci`: the archives skopeo reads, and specs kiln refuses.

mod image_support;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry};

fn skopeo_inspect(transport: &str) -> serde_json::Value {
    let output = std::process::Command::new("skopeo")
        .args(["inspect", transport])
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "skopeo inspect {transport}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("skopeo JSON")
}

#[test]
fn docker_and_oci_outputs_are_read_by_skopeo() {
    let registry = TestRegistry::start();
    let base = push(&registry, &busybox_image(), "library/busybox:1");
    let kiln = Kiln::new();
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!(
            "FROM {base}\nRUN echo out > /hello && chown 12:34 /hello && chmod 640 /hello && ln -s hello /link && rm /bin/true\nENV OUTPUT=yes\n"
        ),
    )
    .expect("Dockerfile");
    let out = tempfile::tempdir().expect("out");
    let docker = out.path().join("image.tar");
    let oci_tar = out.path().join("oci.tar");
    let oci_dir = out.path().join("layout");
    kiln.ok(&[
        "build",
        "-t",
        "app:1",
        "-o",
        &format!("type=docker,dest={}", docker.display()),
        "-o",
        &format!("type=oci,dest={}", oci_tar.display()),
        "--output",
        &format!("type=oci,dest={}", oci_dir.display()),
        context.path().to_str().expect("path"),
    ]);
    let from_docker = skopeo_inspect(&format!("docker-archive:{}", docker.display()));
    let from_oci = skopeo_inspect(&format!("oci-archive:{}", oci_tar.display()));
    let from_dir = skopeo_inspect(&format!("oci:{}", oci_dir.display()));
    for inspected in [&from_docker, &from_oci, &from_dir] {
        assert_eq!(
            inspected["Layers"].as_array().map(Vec::len),
            Some(2),
            "{inspected}"
        );
        let env = inspected["Env"].to_string();
        assert!(env.contains("OUTPUT=yes"), "{inspected}");
    }
    assert_eq!(from_oci["Digest"], from_dir["Digest"]);
    // The store has the image too.
    assert!(kiln
        .image_names()
        .contains(&"docker.io/library/app:1".to_string()));

    let local = out.path().join("rootfs");
    kiln.ok(&[
        "build",
        "-o",
        &format!("type=local,dest={}", local.display()),
        context.path().to_str().expect("path"),
    ]);
    use std::os::unix::fs::MetadataExt as _;
    let hello = std::fs::symlink_metadata(local.join("hello")).expect("hello");
    assert_eq!(
        (hello.uid(), hello.gid(), hello.mode() & 0o7777),
        (12, 34, 0o640)
    );
    assert_eq!(
        std::fs::read_to_string(local.join("hello")).expect("read"),
        "out\n"
    );
    assert_eq!(
        std::fs::read_link(local.join("link"))
            .expect("link")
            .to_str(),
        Some("hello")
    );
    assert!(local.join("bin/busybox").is_file());
    assert!(
        std::fs::symlink_metadata(local.join("bin/true")).is_err(),
        "whiteout applied"
    );
    assert!(std::fs::symlink_metadata(local.join("bin/.wh.true")).is_err());

    let tarball = out.path().join("rootfs.tar");
    kiln.ok(&[
        "build",
        "-o",
        &format!("type=tar,dest={}", tarball.display()),
        context.path().to_str().expect("path"),
    ]);
    let mut archive = tar::Archive::new(std::fs::File::open(&tarball).expect("tar"));
    let mut found = false;
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let path = entry.path().expect("path").to_string_lossy().into_owned();
        if path.trim_start_matches("./") == "hello" {
            let header = entry.header();
            assert_eq!(header.uid().expect("uid"), 12);
            assert_eq!(header.mode().expect("mode") & 0o7777, 0o640);
            found = true;
        }
        assert_ne!(path.trim_start_matches("./"), "bin/true");
    }
    assert!(found, "hello is in the tar");

    let refused = kiln.fail(&[
        "build",
        "-o",
        "type=zip,dest=/tmp/x",
        context.path().to_str().expect("path"),
    ]);
    assert!(refused.contains("type=zip is not supported"), "{refused}");
    let refused = kiln.fail(&[
        "build",
        "-o",
        "type=docker",
        context.path().to_str().expect("path"),
    ]);
    assert!(refused.contains("needs dest"), "{refused}");
}
