//! `kiln push` against a real registry: a built image pushed (its base layer mounted from the
//! base's repository), pulled back into a fresh root and run; blobs the registry has are not
//! sent again; a 503, a dropped answer and a token-auth registry.

mod image_support;

use std::io::Write as _;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, Fault, FaultProxy, TestRegistry, TokenPolicy};

/// Requests that send blob bytes or open uploads: POST/PATCH/PUT under `/blobs/uploads/`.
fn upload_requests(proxy: &FaultProxy) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|request| {
            matches!(request.method.as_str(), "POST" | "PATCH" | "PUT")
                && request.path.contains("/blobs/uploads/")
        })
        .count()
}

/// Imports busybox's rootfs as `name`.
fn import_busybox(kiln: &Kiln, name: &str) {
    let directory = tempfile::tempdir().expect("temp dir");
    let tarball = directory.path().join("rootfs.tar");
    std::fs::write(&tarball, &busybox_image().layers[0].tar).expect("write tar");
    kiln.ok(&[
        "import",
        tarball.to_str().expect("path"),
        name,
        "--change",
        "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
}

fn pushed_digest(output: &str, tag: &str) -> String {
    let line = output
        .lines()
        .find(|line| line.starts_with(&format!("{tag}: digest: sha256:")))
        .unwrap_or_else(|| panic!("no digest line in {output:?}"));
    let digest = line
        .split_whitespace()
        .nth(2)
        .expect("digest field")
        .to_string();
    assert!(line.contains(" size: "), "{line}");
    digest
}

#[test]
fn push_a_built_image_pull_it_back_and_run_it() {
    let registry = TestRegistry::start();
    let base = push(&registry, &busybox_image(), "library/busybox:1");
    let kiln = Kiln::new();
    kiln.ok(&["pull", &base.to_string()]);

    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo pushed-and-back > /hello\nCMD [\"cat\", \"/hello\"]\n"),
    )
    .expect("Dockerfile");
    let app = format!("{}/team/app:1", registry.address());
    kiln.ok(&["build", "-t", &app, context.path().to_str().expect("path")]);

    let output = kiln.command(&["push", &app]).output().expect("kiln push");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let digest = pushed_digest(&stdout, "1");
    assert!(
        stderr.contains(&format!(
            "Mounted from {}/library/busybox",
            registry.address()
        )),
        "the base layer should be mounted: {stderr}"
    );

    let fresh = Kiln::new();
    let pulled = fresh.ok(&["pull", &app]);
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    let ran = fresh.ok(&["run", "--rm", &app]);
    assert_eq!(ran.trim(), "pushed-and-back");

    // The store keeps the built layer uncompressed (as Docker's does); the push compressed
    // it with gzip, and the image (its config, its id) is the same on both sides.
    let local: serde_json::Value =
        serde_json::from_str(&kiln.ok(&["inspect", &app])).expect("inspect json");
    let remote: serde_json::Value =
        serde_json::from_str(&fresh.ok(&["inspect", &app])).expect("inspect json");
    let local_text = local.to_string();
    let remote_text = remote.to_string();
    assert!(
        local_text.contains("\"application/vnd.docker.image.rootfs.diff.tar\""),
        "{local_text}"
    );
    assert!(
        !remote_text.contains("\"application/vnd.docker.image.rootfs.diff.tar\""),
        "{remote_text}"
    );
    assert!(
        remote_text.contains("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{remote_text}"
    );
    let id = |value: &serde_json::Value| {
        value
            .as_array()
            .and_then(|items| items.first())
            .unwrap_or(value)["Id"]
            .clone()
    };
    assert!(
        id(&local)
            .as_str()
            .is_some_and(|id| id.starts_with("sha256:")),
        "{local_text}"
    );
    assert_eq!(id(&local), id(&remote));
}

#[test]
fn blobs_the_registry_has_are_not_sent_again() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let kiln = Kiln::new();
    let first = format!("{}/one/busybox:1", proxy.address());
    import_busybox(&kiln, &first);
    let output = kiln.ok(&["push", &first]);
    pushed_digest(&output, "1");
    // Layer and config: each one POST and one PUT.
    assert_eq!(upload_requests(&proxy), 4, "{:?}", proxy.requests());

    proxy.clear_log();
    let again = kiln.ok(&["push", &first]);
    assert_eq!(pushed_digest(&again, "1"), pushed_digest(&output, "1"));
    assert_eq!(upload_requests(&proxy), 0, "{:?}", proxy.requests());
    assert_eq!(proxy.count(Some("HEAD"), "/blobs/"), 2);

    // Another tag of the same repository: only the manifest is PUT.
    proxy.clear_log();
    let second = format!("{}/one/busybox:2", proxy.address());
    kiln.ok(&["tag", &first, &second]);
    pushed_digest(&kiln.ok(&["push", &second]), "2");
    assert_eq!(upload_requests(&proxy), 0);
    assert_eq!(proxy.count(Some("PUT"), "/manifests/2"), 1);

    // Another repository of the same registry: mounted, not uploaded (one POST each, no PUT).
    proxy.clear_log();
    let other = format!("{}/two/busybox:1", proxy.address());
    kiln.ok(&["tag", &first, &other]);
    kiln.ok(&["push", &other]);
    assert_eq!(
        proxy.count(Some("PUT"), "/blobs/uploads/"),
        0,
        "{:?}",
        proxy.requests()
    );
    assert_eq!(proxy.count(Some("POST"), "/blobs/uploads/"), 2);

    let fresh = Kiln::new();
    fresh.ok(&["pull", &other]);
    assert_eq!(
        fresh.ok(&["run", "--rm", &other, "echo", "ok"]).trim(),
        "ok"
    );
}

#[test]
fn a_503_once_and_a_dropped_answer_are_survived() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let kiln = Kiln::new();
    let name = format!("{}/faults/busybox:1", proxy.address());
    import_busybox(&kiln, &name);
    proxy.inject(
        Some("PUT"),
        "/blobs/uploads/",
        Fault::Status {
            status: 503,
            headers: Vec::new(),
        },
        1,
    );
    proxy.inject(
        Some("PUT"),
        "/manifests/",
        Fault::Status {
            status: 503,
            headers: Vec::new(),
        },
        1,
    );
    let output = kiln.ok(&["push", &name]);
    let digest = pushed_digest(&output, "1");
    assert!(proxy.requests().iter().any(|request| request.status == 503));

    // The answer to the blob upload is lost after the registry stored the blob: the push
    // either recovers by itself or a second run finishes it.
    let second = format!("{}/faults/other:1", proxy.address());
    let other_kiln = Kiln::new();
    import_busybox(&other_kiln, &second);
    proxy.inject(Some("PUT"), "/blobs/uploads/", Fault::DropResponse, 1);
    let first_try = other_kiln.run(&["push", &second]);
    if !first_try.status.success() {
        other_kiln.ok(&["push", &second]);
    }
    let fresh = Kiln::new();
    let pulled = fresh.ok(&["pull", &name]);
    assert!(pulled.contains(&digest), "{pulled}");
    fresh.ok(&["pull", &second]);
    assert_eq!(
        fresh.ok(&["run", "--rm", &second, "echo", "ok"]).trim(),
        "ok"
    );
}

#[test]
fn push_to_a_token_registry_after_login() {
    let policy = TokenPolicy::default().with_user("alice", "wonderland");
    let registry = TestRegistry::start_with_token_auth(policy);
    let kiln = Kiln::new();
    let name = format!("{}/alice/busybox:1", registry.address());
    import_busybox(&kiln, &name);
    let refused = kiln.fail(&["push", &name]);
    assert!(refused.contains("pushing"), "{refused}");

    let mut login = kiln
        .command(&[
            "login",
            "-u",
            "alice",
            "--password-stdin",
            registry.address(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln login");
    login
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"wonderland\n")
        .expect("password");
    let login = login.wait_with_output().expect("kiln login");
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );

    let digest = pushed_digest(&kiln.ok(&["push", &name]), "1");
    let fresh = Kiln::new();
    std::fs::copy(kiln.credentials_file(), fresh.credentials_file()).expect("credentials");
    let pulled = fresh.ok(&["pull", &name]);
    assert!(pulled.contains(&digest), "{pulled}");
}

#[test]
fn build_push_and_output_push_true() {
    let registry = TestRegistry::start();
    let base = push(&registry, &busybox_image(), "library/busybox:1");
    let kiln = Kiln::new();
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo built-and-pushed > /hello\nCMD [\"cat\", \"/hello\"]\n"),
    )
    .expect("Dockerfile");
    let context = context.path().to_str().expect("path");
    let first = format!("{}/team/built:1", registry.address());
    let output = kiln.ok(&["build", "--push", "-t", &first, context]);
    let digest = pushed_digest(&output, "1");
    let second = format!("{}/team/built:2", registry.address());
    let output = kiln.ok(&[
        "build",
        "-o",
        "type=image,push=true",
        "-t",
        &second,
        context,
    ]);
    assert_eq!(pushed_digest(&output, "2"), digest);
    let refused = kiln.fail(&["build", "--push", context]);
    assert!(refused.contains("-t NAME"), "{refused}");

    let fresh = Kiln::new();
    fresh.ok(&["pull", &second]);
    assert_eq!(
        fresh.ok(&["run", "--rm", &second]).trim(),
        "built-and-pushed"
    );
}
