//! `kiln push` under faults on the wire (issue 6): a connection reset in the middle of a
//! chunked blob upload is recovered from in the same run, and a push killed with SIGKILL
//! half-way is finished by running it again, without sending the blobs the registry already
//! holds. Both images are pulled back into a fresh root and run.
//!
//! The registry client uploads blobs over 32 MiB in 16 MiB PATCH chunks and kiln has no knob
//! to lower that, so the big layer is 40 MiB of random bytes (its gzip is as large).

mod image_support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, Fault, FaultProxy, TestRegistry};
use kiln_types::Digest;

const BIG_FILE_SIZE: usize = 40 * 1024 * 1024;

/// Requests that send blob bytes or open uploads: POST/PATCH/PUT under `/blobs/uploads/`.
fn upload_requests(proxy: &FaultProxy, method: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|request| request.method == method && request.path.contains("/blobs/uploads/"))
        .count()
}

fn pushed_digest(output: &str, tag: &str) -> String {
    let line = output
        .lines()
        .find(|line| line.starts_with(&format!("{tag}: digest: sha256:")))
        .unwrap_or_else(|| panic!("no digest line in {output:?}"));
    line.split_whitespace()
        .nth(2)
        .expect("digest field")
        .to_string()
}

/// Writes `big.bin` (random, incompressible) into `context`; returns its sha256 hex.
fn write_big_file(context: &Path) -> String {
    let mut data = vec![0u8; BIG_FILE_SIZE];
    let mut random = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut random, &mut data).expect("random bytes");
    std::fs::write(context.join("big.bin"), &data).expect("big.bin");
    Digest::of_bytes(&data).hex().to_string()
}

/// Pulls `name` into a fresh root, checks the manifest digest and runs it: the small files'
/// text and the big file's sha256 must come back.
fn pull_back_and_run(name: &str, digest: &str, big_sha256: &str, expected_text: &str) {
    let fresh = Kiln::new();
    let pulled = fresh.ok(&["pull", name]);
    assert!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    let ran = fresh.ok(&[
        "run",
        "--rm",
        name,
        "sh",
        "-c",
        "cat /small-*.txt; sha256sum /big.bin",
    ]);
    assert!(ran.starts_with(expected_text), "{ran}");
    assert!(ran.contains(big_sha256), "{ran}");
}

#[test]
fn a_connection_reset_mid_chunk_is_recovered_in_the_same_push() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let base = push(&registry, &busybox_image(), "library/busybox:1");
    let kiln = Kiln::new();
    kiln.ok(&["pull", &base.to_string()]);

    let context = tempfile::tempdir().expect("context");
    let big_sha256 = write_big_file(context.path());
    std::fs::write(context.path().join("small-1.txt"), "chunked\n").expect("small file");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY small-1.txt big.bin /\n"),
    )
    .expect("Dockerfile");
    let name = format!("{}/faults/chunked:1", proxy.address());
    kiln.ok(&["build", "-t", &name, context.path().to_str().expect("path")]);

    // The second PATCH (bytes 16 MiB..32 MiB) is cut after 5 MiB: the registry is sent part
    // of a chunk and the client gets a reset and no answer. The resent PATCH no longer fits
    // the session (distribution refuses it before reading its 16 MiB body and closes), which
    // the proxy answers 502, as a reverse proxy does. Regression: kiln gave up on a 5xx
    // PATCH answer instead of asking the upload's status.
    proxy.inject_after(
        Some("PATCH"),
        "/blobs/uploads/",
        Fault::CutRequestBody {
            after_bytes: 5 * 1024 * 1024,
        },
        1,
        1,
    );
    let pushed = kiln.run(&["push", &name]);
    let requests = proxy.requests();
    assert!(
        pushed.status.success(),
        "kiln push failed: {}\n{requests:#?}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let digest = pushed_digest(&String::from_utf8_lossy(&pushed.stdout), "1");
    assert!(
        requests
            .iter()
            .any(|request| request.method == "PATCH" && request.status == 0),
        "the PATCH was not cut: {requests:?}"
    );
    // Three chunks at least, and the cut one sent again.
    assert!(upload_requests(&proxy, "PATCH") >= 4, "{requests:?}");

    // Pulled back through the registry itself, not the proxy: the same repository.
    let direct = format!("{}/faults/chunked:1", registry.address());
    pull_back_and_run(&direct, &digest, &big_sha256, "chunked\n");
    // A second push finds everything there.
    proxy.clear_log();
    assert_eq!(pushed_digest(&kiln.ok(&["push", &name]), "1"), digest);
    assert_eq!(upload_requests(&proxy, "PATCH"), 0);
    assert_eq!(upload_requests(&proxy, "PUT"), 0);
}

#[test]
fn a_push_killed_half_way_is_finished_by_running_it_again() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let base = push(&registry, &busybox_image(), "library/busybox:1");
    let kiln = Kiln::new();
    kiln.ok(&["pull", &base.to_string()]);

    let context = tempfile::tempdir().expect("context");
    let big_sha256 = write_big_file(context.path());
    std::fs::write(context.path().join("small-1.txt"), "first\n").expect("small file");
    std::fs::write(context.path().join("small-2.txt"), "second\n").expect("small file");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {base}\nCOPY small-1.txt /\nCOPY big.bin /\nCOPY small-2.txt /\n"),
    )
    .expect("Dockerfile");
    // Pushed to another registry name than the base's (the proxy's address), so nothing is
    // mounted: four layers uploaded (busybox, two small ones, the big one), then the config.
    let name = format!("{}/faults/killed:1", proxy.address());
    kiln.ok(&["build", "-t", &name, context.path().to_str().expect("path")]);

    // The big layer's first PATCH is held unanswered; the small layers finish meanwhile
    // (layers go up in parallel), and kiln is killed while the PATCH waits.
    proxy.inject(Some("PATCH"), "/blobs/uploads/", Fault::Hang, 1);
    let mut child = kiln
        .command(&["push", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln push");
    let small_layers = 3;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let requests = proxy.requests();
        let hung = requests
            .iter()
            .any(|request| request.method == "PATCH" && request.status == 0);
        let completed = requests
            .iter()
            .filter(|request| {
                request.method == "PUT"
                    && request.path.contains("/blobs/uploads/")
                    && request.status == 201
            })
            .count();
        if hung && completed >= small_layers {
            assert_eq!(completed, small_layers, "{requests:?}");
            break;
        }
        if let Some(status) = child.try_wait().expect("waiting for kiln") {
            let output = child.wait_with_output().expect("kiln output");
            panic!(
                "kiln push ended ({status}) before it was killed: {}\n{requests:?}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the push did not reach the held PATCH: {requests:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SIGKILL, to this child's pid only.
    child.kill().expect("killing kiln push");
    let killed = child.wait_with_output().expect("kiln push");
    assert!(!killed.status.success());
    let first_stdout = String::from_utf8_lossy(&killed.stdout).into_owned();
    assert!(
        !first_stdout.contains("digest: sha256:"),
        "the killed push should not have pushed its manifest: {first_stdout}"
    );

    proxy.clear_faults();
    proxy.clear_log();
    let output = kiln.ok(&["push", &name]);
    let digest = pushed_digest(&output, "1");
    let requests = proxy.requests();
    // Every blob is checked; only the big layer and the config are uploaded again.
    assert_eq!(proxy.count(Some("HEAD"), "/blobs/"), 5, "{requests:?}");
    assert_eq!(upload_requests(&proxy, "POST"), 2, "{requests:?}");
    assert_eq!(upload_requests(&proxy, "PUT"), 2, "{requests:?}");
    assert!(upload_requests(&proxy, "PATCH") >= 3, "{requests:?}");

    let direct = format!("{}/faults/killed:1", registry.address());
    pull_back_and_run(&direct, &digest, &big_sha256, "first\nsecond\n");
}
