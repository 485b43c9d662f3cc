//! Layer export from real overlay uppers: round trip through apply, compressions and their
//! diffIDs, compressed-once reuse, reproducible digests, empty layers.

mod support;

use std::fs;
use std::io::Read;

use kiln_exporter::{Compression, LayerExporter, LayerOptions};
use kiln_snapshotter::archive::{apply_layer, decompressing_reader, ApplyOptions, WhiteoutMode};
use kiln_snapshotter::Store;
use kiln_types::{media_type, Digest};
use support::{base_snapshot, empty_snapshot, run_snapshot, tree_listing, TestRoot};

fn options(compression: Compression) -> LayerOptions {
    LayerOptions {
        compression,
        ..LayerOptions::default()
    }
}

/// The uncompressed tar of a stored layer blob.
fn uncompressed_tar(store: &Store, digest: &Digest, compression: Compression) -> Vec<u8> {
    let blob = store.content().open(digest).unwrap();
    let mut tar = Vec::new();
    decompressing_reader(blob, compression)
        .unwrap()
        .read_to_end(&mut tar)
        .unwrap();
    tar
}

#[test]
fn exported_layers_apply_back_to_the_same_tree() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let top = run_snapshot(&store, &lease, &base);
    let exporter = LayerExporter::new(&store);
    let options = options(Compression::Gzip);
    let base_layer = exporter
        .layer_for_snapshot(&lease, &base, &options)
        .unwrap();
    let top_layer = exporter.layer_for_snapshot(&lease, &top, &options).unwrap();
    assert!(!base_layer.empty && !top_layer.empty);

    let applied = root.path().join("applied");
    fs::create_dir(&applied).unwrap();
    for layer in [&base_layer, &top_layer] {
        let blob = store.content().open(&layer.descriptor.digest).unwrap();
        let result = apply_layer(
            blob,
            Compression::Gzip,
            &applied,
            &ApplyOptions {
                expected_diff_id: Some(layer.diff_id.clone()),
                ..ApplyOptions::new(WhiteoutMode::Apply)
            },
        )
        .unwrap();
        assert_eq!(result.uncompressed_size, layer.uncompressed_size);
    }
    let view = store.snapshotter().view(&lease, &top).unwrap();
    let expected = tree_listing(view.mountpoint());
    let found = tree_listing(&applied);
    assert_eq!(found, expected);
    assert!(!found.iter().any(|line| line.starts_with("etc/gone")));
    assert!(!found.iter().any(|line| line.starts_with("replaced/old")));
    assert!(found
        .iter()
        .any(|line| line.contains("xattr:user.kiln.test=value")));
    assert!(found
        .iter()
        .any(|line| line.contains("links-with=usr/bin/tool")
            && line.starts_with("usr/bin/tool-alias")));

    // The same layers applied as overlay lowers in a fresh store give the same merged tree.
    let fresh = root.store("fresh");
    let fresh_lease = fresh.lease("test").unwrap();
    let mut parent = None;
    let chain =
        kiln_snapshotter::chain_ids(&[base_layer.diff_id.clone(), top_layer.diff_id.clone()]);
    for (layer, chain_id) in [&base_layer, &top_layer].into_iter().zip(&chain) {
        let kiln_snapshotter::PreparedUnpack::New(directory) = fresh
            .snapshotter()
            .prepare_unpack(&fresh_lease, chain_id.as_str(), parent.as_ref())
            .unwrap()
        else {
            panic!("fresh store has no snapshots");
        };
        let blob = store.content().open(&layer.descriptor.digest).unwrap();
        apply_layer(
            blob,
            Compression::Gzip,
            directory.path(),
            &ApplyOptions::new(WhiteoutMode::Overlay),
        )
        .unwrap();
        parent = Some(directory.commit(Some(layer.diff_id.clone()), None).unwrap());
    }
    let fresh_view = fresh
        .snapshotter()
        .view(&fresh_lease, parent.as_ref().unwrap())
        .unwrap();
    assert_eq!(tree_listing(fresh_view.mountpoint()), expected);
}

#[test]
fn overlay_whiteouts_and_opaque_directories_become_oci_entries() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let top = run_snapshot(&store, &lease, &base);
    let layer = LayerExporter::new(&store)
        .layer_for_snapshot(&lease, &top, &options(Compression::Uncompressed))
        .unwrap();
    let tar_bytes = uncompressed_tar(&store, &layer.descriptor.digest, Compression::Uncompressed);
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut names = Vec::new();
    let mut xattr_found = false;
    let mut hardlink_found = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().display().to_string();
        if name == "usr/bin/tool" {
            if let Some(extensions) = entry.pax_extensions().unwrap() {
                for extension in extensions {
                    let extension = extension.unwrap();
                    if extension.key().unwrap() == "SCHILY.xattr.user.kiln.test" {
                        xattr_found = extension.value_bytes() == b"value";
                    }
                }
            }
        }
        if entry.header().entry_type() == tar::EntryType::Link {
            hardlink_found = name == "usr/bin/tool-alias";
        }
        names.push(name);
    }
    assert!(names.contains(&"etc/.wh.gone".to_string()), "{names:?}");
    assert!(
        names.contains(&"replaced/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    assert!(xattr_found, "xattr as a PAX record");
    assert!(
        hardlink_found,
        "second name of the file is a hardlink entry"
    );
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names.first().map(String::as_str), Some("etc/"));
}

#[test]
fn every_compression_gives_the_same_diff_id() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let top = run_snapshot(&store, &lease, &base);
    let exporter = LayerExporter::new(&store);
    let mut diff_ids = Vec::new();
    for (compression, docker_type, oci_type) in [
        (
            Compression::Gzip,
            media_type::DOCKER_LAYER_GZIP,
            media_type::OCI_LAYER_GZIP,
        ),
        (
            Compression::Zstd,
            media_type::OCI_LAYER_ZSTD,
            media_type::OCI_LAYER_ZSTD,
        ),
        (
            Compression::Uncompressed,
            kiln_exporter::DOCKER_LAYER_TAR,
            media_type::OCI_LAYER_TAR,
        ),
    ] {
        let layer = exporter
            .layer_for_snapshot(&lease, &top, &options(compression))
            .unwrap();
        assert_eq!(layer.descriptor.media_type, docker_type);
        let stored = fs::read(store.content().blob_path(&layer.descriptor.digest)).unwrap();
        assert_eq!(Digest::of_bytes(&stored), layer.descriptor.digest);
        assert_eq!(stored.len() as u64, layer.descriptor.size);
        let tar = uncompressed_tar(&store, &layer.descriptor.digest, compression);
        assert_eq!(Digest::of_bytes(&tar), layer.diff_id, "{compression:?}");
        assert_eq!(tar.len() as u64, layer.uncompressed_size);
        if compression == Compression::Uncompressed {
            assert_eq!(layer.descriptor.digest, layer.diff_id);
        } else {
            assert!(layer.descriptor.size < layer.uncompressed_size);
        }
        let oci = exporter
            .layer_for_snapshot(
                &lease,
                &top,
                &LayerOptions {
                    oci_media_types: true,
                    ..options(compression)
                },
            )
            .unwrap();
        assert_eq!(oci.descriptor.media_type, oci_type);
        assert_eq!(oci.descriptor.digest, layer.descriptor.digest);
        diff_ids.push(layer.diff_id);
    }
    assert!(diff_ids.windows(2).all(|pair| pair[0] == pair[1]));
}

#[test]
fn a_layer_is_compressed_once_per_variant() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let top = run_snapshot(&store, &lease, &base);
    let exporter = LayerExporter::new(&store);
    let gzip = options(Compression::Gzip);
    let first = exporter.layer_for_snapshot(&lease, &top, &gzip).unwrap();
    assert!(!first.reused);
    let recorded = store.layer_blob(&top, &gzip.variant()).unwrap().unwrap();
    assert_eq!(recorded.digest, first.descriptor.digest);
    assert_eq!(recorded.diff_id, first.diff_id);
    assert_eq!(gzip.variant(), "gzip-6");

    // Another process (another store handle) reuses it too, without compressing.
    let other = Store::open(store.root()).unwrap();
    let other_lease = other.lease("other").unwrap();
    let again = LayerExporter::new(&other)
        .layer_for_snapshot(&other_lease, &top, &gzip)
        .unwrap();
    assert!(again.reused);
    assert_eq!(again.descriptor, first.descriptor);
    assert_eq!(again.diff_id, first.diff_id);

    // Another level, or an epoch, is another variant.
    let level_one = LayerOptions {
        level: Some(1),
        ..gzip
    };
    assert_eq!(level_one.variant(), "gzip-1");
    assert!(
        !exporter
            .layer_for_snapshot(&lease, &top, &level_one)
            .unwrap()
            .reused
    );
    let with_epoch = LayerOptions {
        source_date_epoch: Some(1_600_000_000),
        ..gzip
    };
    assert_eq!(with_epoch.variant(), "gzip-6-epoch1600000000");
    assert!(
        !exporter
            .layer_for_snapshot(&lease, &top, &with_epoch)
            .unwrap()
            .reused
    );
    assert!(
        exporter
            .layer_for_snapshot(&lease, &top, &with_epoch)
            .unwrap()
            .reused
    );

    // A blob deleted since is written again.
    store.content().delete(&first.descriptor.digest).unwrap();
    let rewritten = exporter.layer_for_snapshot(&lease, &top, &gzip).unwrap();
    assert!(!rewritten.reused);
    assert_eq!(rewritten.descriptor.digest, first.descriptor.digest);
    assert!(store.content().exists(&first.descriptor.digest));
}

#[test]
fn source_date_epoch_gives_identical_digests_in_fresh_roots() {
    let root = TestRoot::new();
    let mut results = Vec::new();
    for (name, threads) in [("one", 1), ("two", 4)] {
        let store = root.store(name);
        let lease = store.lease("test").unwrap();
        let base = base_snapshot(&store, &lease);
        let top = run_snapshot(&store, &lease, &base);
        let exporter = LayerExporter::new(&store).with_threads(threads);
        let mut digests = Vec::new();
        for compression in [Compression::Gzip, Compression::Zstd] {
            let options = LayerOptions {
                compression,
                source_date_epoch: Some(1_600_000_000),
                ..LayerOptions::default()
            };
            for snapshot in [&base, &top] {
                let layer = exporter
                    .layer_for_snapshot(&lease, snapshot, &options)
                    .unwrap();
                digests.push((layer.descriptor.digest, layer.diff_id));
            }
        }
        results.push(digests);
        // Make the next root's files get other times.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn empty_layers_are_detected() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let empty = empty_snapshot(&store, &lease, &base);
    let exporter = LayerExporter::new(&store);
    assert!(exporter.is_empty(&empty).unwrap());
    assert!(!exporter.is_empty(&base).unwrap());
    let layer = exporter
        .layer_for_snapshot(&lease, &empty, &options(Compression::Gzip))
        .unwrap();
    assert!(layer.empty);
    // An empty tar is the end-of-archive marker alone.
    assert_eq!(layer.diff_id, Digest::of_bytes(&[0u8; 1024]));
}

#[test]
fn active_snapshots_are_refused() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let active = store.snapshotter().prepare(&lease, Some(&base)).unwrap();
    let result = LayerExporter::new(&store).layer_for_snapshot(
        &lease,
        active.id(),
        &options(Compression::Gzip),
    );
    assert!(matches!(
        result,
        Err(kiln_exporter::ExportError::SnapshotNotCommitted { .. })
    ));
}

/// A COPY-like layer of 12 MB over `base`: 24 files of 500 kB, the last one's bytes from
/// `last_seed`, fixed times.
fn big_sibling(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    base: &kiln_snapshotter::SnapshotId,
    last_seed: u8,
) -> kiln_snapshotter::SnapshotId {
    let snapshotter = store.snapshotter();
    let active = snapshotter.prepare(lease, Some(base)).unwrap();
    let app = active.mountpoint().join("app");
    fs::create_dir(&app).unwrap();
    for index in 0..24u8 {
        let seed = if index == 23 { last_seed } else { index };
        let content: Vec<u8> = (0..500_000u32)
            .map(|byte| (byte as u8).wrapping_mul(31) ^ seed)
            .collect();
        let path = app.join(format!("f{index:02}"));
        fs::write(&path, content).unwrap();
        support::set_mtime(&path, 1_700_000_000);
    }
    support::set_mtime(&app, 1_700_000_000);
    snapshotter
        .commit(active, kiln_snapshotter::CommitOptions::default())
        .unwrap()
}

/// The same step rebuilt with its last file changed: the export resumes the diffID from the
/// earlier sibling's saved states, and the blob it stores still hashes to that diffID; a
/// third sibling equal to the first gets the first's diffID.
#[test]
fn a_rebuilt_layer_resumes_its_diff_id_from_the_earlier_sibling() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let base = base_snapshot(&store, &lease);
    let exporter = LayerExporter::new(&store);
    let options = options(Compression::Uncompressed);

    let first = big_sibling(&store, &lease, &base, 100);
    let first_layer = exporter
        .layer_for_snapshot(&lease, &first, &options)
        .unwrap();
    let first_record = store
        .layer_blobs(&first)
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .1;
    assert_eq!(
        first_record.midstates.len(),
        2,
        "12 MB of tar: states at 4 and 8 MiB"
    );

    for (seed, same_as_first) in [(200u8, false), (100u8, true)] {
        let sibling = big_sibling(&store, &lease, &base, seed);
        let layer = exporter
            .layer_for_snapshot(&lease, &sibling, &options)
            .unwrap();
        let tar = uncompressed_tar(&store, &layer.descriptor.digest, Compression::Uncompressed);
        assert_eq!(
            Digest::of_bytes(&tar),
            layer.diff_id,
            "the blob hashes to its diffID"
        );
        assert_eq!(layer.descriptor.digest, layer.diff_id);
        assert_eq!(layer.diff_id == first_layer.diff_id, same_as_first);
        let record = store
            .layer_blobs(&sibling)
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .1;
        assert_eq!(record.midstates[..2], first_record.midstates[..2]);
    }
}
