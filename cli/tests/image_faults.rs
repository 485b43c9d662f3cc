//! `kiln pull` under registry faults: killed mid-download and resumed, 503s, a corrupt blob.

mod image_support;

use std::time::{Duration, Instant};

use image_support::{big_image, push, Kiln};
use kiln_testsupport::{busybox_image, Fault, FaultProxy, TestRegistry};

/// Kills the child (SIGKILL) when dropped, so a failing test leaves no process behind.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_during_download_then_pull_resumes_and_nothing_partial_is_visible() {
    let registry = TestRegistry::start();
    let image = big_image(6 << 20, 7);
    push(&registry, &image, "big:1");
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let layer = &image.layers[0].descriptor;
    let blob_path = format!("/blobs/{}", layer.digest);
    proxy.inject(
        Some("GET"),
        &blob_path,
        Fault::Slow {
            bytes_per_second: 2 << 20,
        },
        1,
    );
    let name = format!("{}/big:1", proxy.address());
    let kiln = Kiln::new();
    let mut child = KillOnDrop(
        kiln.command(&["pull", &name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn kiln pull"),
    );
    let ingest = kiln.root().join("content/ingest").join(layer.digest.hex());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let size = std::fs::metadata(&ingest).map(|m| m.len()).unwrap_or(0);
        if size > (1 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "the download never started");
        assert!(
            child.0.try_wait().expect("wait").is_none(),
            "kiln pull ended early"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.0.kill().expect("kill -9");
    let _ = child.0.wait();
    let partial = std::fs::metadata(&ingest)
        .expect("partial download kept")
        .len();
    assert!(partial > 0 && partial < layer.size, "partial {partial}");
    assert!(
        !kiln.blob_exists(&layer.digest),
        "a partial blob is visible"
    );
    kiln.assert_blobs_verified();

    proxy.clear_log();
    let output = kiln.ok(&["pull", &name]);
    assert!(output.contains("Downloaded newer image"), "{output}");
    let resumed = proxy
        .requests()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path.contains(&blob_path))
        .collect::<Vec<_>>();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    let range = resumed[0]
        .range
        .clone()
        .expect("the second pull asks for a range");
    let start: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .expect("range start");
    assert!(
        start > 0 && start <= partial,
        "range {range} after {partial} bytes"
    );
    assert!(kiln.blob_exists(&layer.digest));
    assert!(!ingest.exists(), "the ingest file is gone once committed");
    kiln.assert_blobs_verified();
    let inspected = kiln.inspect(&name);
    let top = inspected["TopSnapshot"].as_str().expect("top snapshot");
    let data = image_support::snapshot_fs(&kiln, top).join("data.bin");
    assert_eq!(std::fs::metadata(data).expect("data.bin").len(), 6 << 20);
    // Only the committed snapshot is left: the killed pull's unpack directory is gone.
    let snapshots = std::fs::read_dir(kiln.root().join("snapshots"))
        .expect("snapshots")
        .count();
    assert_eq!(snapshots, 1);
}

#[test]
fn two_503s_then_success() {
    let registry = TestRegistry::start();
    let image = busybox_image();
    push(&registry, &image, "busybox:1");
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let blob_path = format!("/blobs/{}", image.layers[0].descriptor.digest);
    let unavailable = Fault::Status {
        status: 503,
        headers: vec![],
    };
    proxy.inject(Some("GET"), &blob_path, unavailable.clone(), 2);
    proxy.inject(Some("GET"), "/manifests/", unavailable, 2);
    let kiln = Kiln::new();
    let name = format!("{}/busybox:1", proxy.address());
    kiln.ok(&["pull", &name]);
    assert_eq!(proxy.count(Some("GET"), &blob_path), 3);
    assert_eq!(kiln.image_names(), vec![name]);
    kiln.assert_blobs_verified();
}

#[test]
fn a_blob_with_the_wrong_digest_is_rejected_and_not_stored() {
    let registry = TestRegistry::start();
    let image = busybox_image();
    push(&registry, &image, "busybox:1");
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let layer = &image.layers[0].descriptor;
    let blob_path = format!("/blobs/{}", layer.digest);
    proxy.inject(Some("GET"), &blob_path, Fault::CorruptBody, 100);
    let kiln = Kiln::new();
    let name = format!("{}/busybox:1", proxy.address());
    let error = kiln.fail(&["pull", &name]);
    assert!(
        error.contains("digest mismatch") || error.contains("unpacking layer"),
        "{error}"
    );
    assert!(!kiln.blob_exists(&layer.digest));
    assert!(kiln.image_names().is_empty());
    kiln.assert_blobs_verified();
    // No partial download is left to resume from: the bytes were wrong.
    let ingest = kiln.root().join("content/ingest").join(layer.digest.hex());
    assert_eq!(std::fs::metadata(&ingest).map(|m| m.len()).unwrap_or(0), 0);
    // No snapshot was committed (the store's recovery removes the unpack directory).
    let store = kiln.store();
    assert!(store.snapshotter().list().expect("snapshots").is_empty());

    // Once the registry serves the right bytes, the pull succeeds.
    proxy.clear_faults();
    kiln.ok(&["pull", &name]);
    assert!(kiln.blob_exists(&layer.digest));
}
