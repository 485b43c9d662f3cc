//! `kiln import`: a rootfs tarball becomes a one-layer image with the --change config.

mod image_support;

use std::io::Write as _;

use image_support::{snapshot_fs, Kiln};
use kiln_testsupport::busybox_image;

#[test]
fn import_a_busybox_rootfs_with_changes() {
    let kiln = Kiln::new();
    let image = busybox_image();
    let directory = tempfile::tempdir().expect("temp dir");
    let tarball = directory.path().join("rootfs.tar");
    std::fs::write(&tarball, &image.layers[0].tar).expect("write tar");
    let output = kiln.ok(&[
        "import",
        tarball.to_str().expect("path"),
        "busybox",
        "--change",
        r#"CMD ["sh", "-c", "echo hi"]"#,
        "--change",
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "-c",
        "WORKDIR /root",
    ]);
    assert!(output.trim().starts_with("sha256:"), "{output}");
    assert_eq!(
        kiln.image_names(),
        vec!["docker.io/library/busybox:latest".to_string()]
    );
    let table = kiln.ok(&["images"]);
    assert!(
        table.lines().any(|line| line.starts_with("busybox ")),
        "{table}"
    );

    let inspected = kiln.inspect("busybox");
    let config = &inspected["Config"];
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["sh", "-c", "echo hi"])
    );
    assert_eq!(config["config"]["WorkingDir"], "/root");
    assert_eq!(config["history"][0]["comment"], "Imported from -");
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        image.layers[0].diff_id.to_string()
    );
    assert_eq!(
        inspected["Layers"][0]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let top = inspected["TopSnapshot"].as_str().expect("top");
    assert!(snapshot_fs(&kiln, top).join("bin/busybox").is_file());
    kiln.assert_blobs_verified();
}

#[test]
fn import_a_gzip_tarball_from_stdin_and_refuse_bad_changes() {
    let kiln = Kiln::new();
    let image = busybox_image();
    let mut child = kiln
        .command(&["import", "-", "127.0.0.1:5999/base:2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln import");
    // The seed's layer blob is gzip.
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&image.layers[0].blob)
        .expect("write");
    let output = child.wait_with_output().expect("import");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let inspected = kiln.inspect("127.0.0.1:5999/base:2");
    assert_eq!(
        inspected["Config"]["rootfs"]["diff_ids"][0],
        image.layers[0].diff_id.to_string()
    );

    let directory = tempfile::tempdir().expect("temp dir");
    let tarball = directory.path().join("rootfs.tar");
    std::fs::write(&tarball, &image.layers[0].tar).expect("write tar");
    let error = kiln.fail(&[
        "import",
        tarball.to_str().expect("path"),
        "x",
        "--change",
        "RUN rm -rf /",
    ]);
    assert!(error.contains("not a valid change command"), "{error}");
    let error = kiln.fail(&["import", "/nonexistent/rootfs.tar", "x"]);
    assert!(error.contains("opening /nonexistent/rootfs.tar"), "{error}");
}
