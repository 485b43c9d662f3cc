//! Several kiln processes on one root: two pulls of one image, a pull during prunes.

mod image_support;

use std::time::Duration;

use image_support::{big_image, push, Kiln};
use kiln_testsupport::{many_layer_image, Fault, FaultProxy, TestRegistry};

#[test]
fn two_pulls_of_the_same_image_at_once_both_succeed() {
    let registry = TestRegistry::start();
    let image = many_layer_image(30);
    let reference = push(&registry, &image, "many:30");
    let name = reference.to_string();
    let kiln = Kiln::new();
    // Open the store once first, so both start on an initialized root.
    drop(kiln.store());
    for _round in 0..3 {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                kiln.command(&["pull", &name])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn")
            })
            .collect();
        for child in handles {
            let output = child.wait_with_output().expect("wait");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let inspected = kiln.inspect(&name);
        let layers = inspected["Layers"].as_array().expect("layers");
        assert!(layers.iter().all(|layer| layer["Snapshot"].is_string()));
        // One committed snapshot per layer; the losers' copies are gone.
        let snapshots = kiln.store().snapshotter().list().expect("snapshots");
        assert_eq!(snapshots.len(), 30);
        kiln.assert_blobs_verified();
        kiln.ok(&["rmi", &name]);
    }
}

#[test]
fn a_pull_during_prunes_finishes_complete() {
    let registry = TestRegistry::start();
    let image = big_image(3 << 20, 11);
    push(&registry, &image, "big:1");
    let proxy = FaultProxy::start(registry.address()).expect("proxy");
    let layer = &image.layers[0].descriptor;
    proxy.inject(
        Some("GET"),
        &format!("/blobs/{}", layer.digest),
        Fault::Slow {
            bytes_per_second: 2 << 20,
        },
        1,
    );
    let name = format!("{}/big:1", proxy.address());
    let kiln = Kiln::new();
    drop(kiln.store());
    let pull = kiln
        .command(&["pull", &name])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pull");
    let mut prunes = 0;
    let pull_output = {
        let mut pull = pull;
        loop {
            if pull.try_wait().expect("wait").is_some() {
                break pull.wait_with_output().expect("pull output");
            }
            kiln.ok(&["prune"]);
            prunes += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        pull_output.status.success(),
        "{}",
        String::from_utf8_lossy(&pull_output.stderr)
    );
    assert!(prunes >= 3, "only {prunes} prunes ran during the pull");
    // One more prune after the pull: the tagged image keeps everything.
    kiln.ok(&["prune"]);
    let inspected = kiln.inspect(&name);
    let top = inspected["TopSnapshot"].as_str().expect("complete image");
    let data = image_support::snapshot_fs(&kiln, top).join("data.bin");
    assert_eq!(std::fs::metadata(data).expect("data.bin").len(), 3 << 20);
    assert!(kiln.blob_exists(&layer.digest));
    assert!(kiln.blob_exists(&image.config_descriptor.digest));
    assert!(kiln.blob_exists(&image.manifest_digest));
    kiln.assert_blobs_verified();
}
