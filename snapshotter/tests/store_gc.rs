//! Garbage collection: what images, cache records and live leases (of any process) keep, and
//! what a dead process leaves behind.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod store_support;

use std::fs;

use kiln_snapshotter::{
    chain_ids, CacheRecord, CommitOptions, PreparedUnpack, PruneOptions, SnapshotId, Store,
};
use kiln_types::{media_type, Descriptor, Digest, ImageManifest};
use store_support::{current_role, mounts_under, RoleChild, TestRoot};

fn unpack(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    key: &str,
    parent: Option<&SnapshotId>,
) -> SnapshotId {
    match store
        .snapshotter()
        .prepare_unpack(lease, key, parent)
        .unwrap()
    {
        PreparedUnpack::Existing(id) => id,
        PreparedUnpack::New(directory) => {
            fs::write(directory.path().join("file"), key).unwrap();
            directory.commit(None, None).unwrap()
        }
    }
}

/// A stored two-layer image; returns its manifest descriptor, its blobs and its chain ids.
fn image(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    seed: &str,
) -> (Descriptor, Vec<Digest>, Vec<Digest>) {
    let content = store.content();
    let mut blobs = Vec::new();
    let mut layers = Vec::new();
    let diff_ids: Vec<Digest> = (0..2)
        .map(|index| Digest::of_bytes(format!("{seed} tar {index}").as_bytes()))
        .collect();
    for index in 0..2 {
        let (digest, size) = content
            .put_bytes(lease, format!("{seed} blob {index}").as_bytes(), None)
            .unwrap();
        blobs.push(digest.clone());
        layers.push(Descriptor::new(media_type::OCI_LAYER_GZIP, digest, size));
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (config_digest, config_size) = content.put_bytes(lease, &config, None).unwrap();
    blobs.push(config_digest.clone());
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.into()),
        config: Descriptor::new(media_type::OCI_CONFIG, config_digest, config_size),
        layers,
        annotations: None,
        extra: Default::default(),
    };
    let (digest, size) = content
        .put_bytes(lease, &serde_json::to_vec(&manifest).unwrap(), None)
        .unwrap();
    blobs.push(digest.clone());
    (
        Descriptor::new(media_type::OCI_MANIFEST, digest, size),
        blobs,
        chain_ids(&diff_ids),
    )
}

#[test]
fn prune_keeps_what_images_cache_records_and_leases_reference() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let content = store.content();
    let snapshotter = store.snapshotter();
    let lease = store.lease("build").unwrap();

    let (manifest, image_blobs, chains) = image(&store, &lease, "app");
    let bottom = unpack(&store, &lease, chains[0].as_str(), None);
    let top = unpack(&store, &lease, chains[1].as_str(), Some(&bottom));
    store.put_image("app:1", &manifest).unwrap();

    // A RUN step on top of the image, kept only by a cache record.
    let active = snapshotter.prepare(&lease, Some(&top)).unwrap();
    fs::write(active.mountpoint().join("built"), "1").unwrap();
    let run = snapshotter
        .commit(active, CommitOptions::default())
        .unwrap();
    let (layer_blob, _) = content.put_bytes(&lease, b"exported layer", None).unwrap();
    store
        .put_cache_record(
            "cache-key-1",
            &CacheRecord {
                snapshots: vec![run.clone()],
                blobs: vec![layer_blob.clone()],
                cache_mounts: vec![],
                data: serde_json::json!({}),
                created_unix: 0,
            },
        )
        .unwrap();

    // Garbage: a blob, a snapshot, a cache mount, a stray directory.
    let (garbage_blob, _) = content.put_bytes(&lease, b"garbage", None).unwrap();
    let garbage_snapshot = unpack(&store, &lease, "orphan", None);
    let cache_mount = store.cache_mount(&lease, "go-build").unwrap();
    fs::write(cache_mount.join("object"), "o").unwrap();
    fs::create_dir_all(root.path().join("snapshots/not-a-snapshot/fs")).unwrap();

    // Everything is leased so far: a prune removes only the stray directory.
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert!(content.exists(&garbage_blob));
    assert!(!root.path().join("snapshots/not-a-snapshot").exists());

    // A second lease keeps one more blob alive after the first goes.
    let keeper = store.lease("keeper").unwrap();
    let (kept_blob, _) = content.put_bytes(&keeper, b"kept by lease", None).unwrap();
    drop(lease);

    let report = store.prune(&PruneOptions::default()).unwrap();
    eprintln!("{report:?}");
    assert!(!content.exists(&garbage_blob));
    assert!(content.exists(&kept_blob));
    for blob in &image_blobs {
        assert!(content.exists(blob), "image blob {blob} must stay");
    }
    assert!(content.exists(&layer_blob));
    assert!(snapshotter.info(&garbage_snapshot).is_err());
    assert!(!snapshotter.fs_dir(&garbage_snapshot).exists());
    assert!(snapshotter.lookup("orphan").unwrap().is_none());
    for id in [&bottom, &top, &run] {
        assert!(snapshotter.fs_dir(id).exists(), "{id} must stay");
    }
    assert!(!cache_mount.exists());
    assert!(store.cache_mounts().unwrap().is_empty());
    assert_eq!(report.blobs_removed, 1);
    assert_eq!(report.snapshots_removed, 1);
    assert_eq!(report.cache_mounts_removed, 1);
    assert!(report.bytes_freed > 0);

    // Untagged: the cache record still keeps the RUN snapshot and its parents, not the blobs.
    store.remove_image("app:1").unwrap();
    store.prune(&PruneOptions::default()).unwrap();
    for blob in &image_blobs {
        assert!(!content.exists(blob));
    }
    for id in [&bottom, &top, &run] {
        assert!(
            snapshotter.fs_dir(id).exists(),
            "{id} is kept by the cache record"
        );
    }
    assert!(content.exists(&layer_blob));

    store.remove_cache_record("cache-key-1").unwrap();
    drop(keeper);
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.snapshots_removed, 3);
    assert!(content.list().unwrap().is_empty());
    assert!(snapshotter.list().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(root.path().join("snapshots")).unwrap().count(),
        0
    );
    assert_eq!(fs::read_dir(root.path().join("trash")).unwrap().count(), 0);
    assert!(store.leases().unwrap().is_empty());
}

/// HOSTILE-INPUTS C3: a prune in one process while another holds a lease deletes nothing
/// leased; once the holder dies (kill -9) its lease is stale and its leftovers go.
#[test]
fn prune_respects_another_process_lease_until_it_dies() {
    if current_role().is_some() {
        return;
    }
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let mut child = RoleChild::spawn("role_lease_holder", "lease-holder", root.path(), &[]);
    let reported = child.wait_for("READY");
    let mut parts = reported.split_whitespace();
    let blob = Digest::parse(parts.next().unwrap()).unwrap();
    let committed = SnapshotId::parse(parts.next().unwrap()).unwrap();
    let active = SnapshotId::parse(parts.next().unwrap()).unwrap();
    let active_dir = root.path().join("snapshots").join(active.as_str());
    assert_eq!(mounts_under(&active_dir).len(), 1);

    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.blobs_removed, 0);
    assert_eq!(report.snapshots_removed, 0);
    assert!(store.content().exists(&blob));
    assert!(store.snapshotter().fs_dir(&committed).exists());
    assert_eq!(mounts_under(&active_dir).len(), 1);
    // Recovery in another process leaves a live process's work alone too.
    drop(Store::open(root.path()).unwrap());
    assert_eq!(mounts_under(&active_dir).len(), 1);

    child.kill();
    // The next start cleans the dead process's mount and active snapshot.
    let store = Store::open(root.path()).unwrap();
    assert!(mounts_under(&active_dir).is_empty());
    assert!(!active_dir.exists());
    assert!(store.leases().unwrap().is_empty());
    assert!(
        store.content().exists(&blob),
        "recovery keeps committed content"
    );
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert!(!store.content().exists(&blob));
    assert!(!store.snapshotter().fs_dir(&committed).exists());
    assert_eq!(report.snapshots_removed, 1);
}

#[test]
fn role_lease_holder() {
    let Some((role, root)) = current_role() else {
        return;
    };
    assert_eq!(role, "lease-holder");
    let store = Store::open(&root).unwrap();
    let lease = store.lease("holder").unwrap();
    let (blob, _) = store
        .content()
        .put_bytes(&lease, b"leased blob", None)
        .unwrap();
    let committed = unpack(&store, &lease, "leased-layer", None);
    let active = store
        .snapshotter()
        .prepare(&lease, Some(&committed))
        .unwrap();
    println!("READY {blob} {committed} {}", active.id());
    std::thread::sleep(std::time::Duration::from_secs(120));
    drop(active);
}

/// `protect_many` keeps what it names from a prune as one-by-one protection does, and
/// protecting again (one by one or many) changes nothing.
#[test]
fn protect_many_keeps_snapshots_and_blobs_from_prune() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let content = store.content();
    let writer = store.lease("writer").unwrap();
    let first = unpack(&store, &writer, "first", None);
    let second = unpack(&store, &writer, "second", None);
    let loose = unpack(&store, &writer, "loose", None);
    let (blob, _) = content.put_bytes(&writer, b"a layer", None).unwrap();
    let (loose_blob, _) = content.put_bytes(&writer, b"not protected", None).unwrap();

    let holder = store.lease("holder").unwrap();
    holder
        .protect_many(&[first.clone(), second.clone()], &[blob.clone()])
        .unwrap();
    holder.protect_snapshot(&first).unwrap();
    holder
        .protect_many(&[second.clone()], &[blob.clone()])
        .unwrap();
    drop(writer);

    store.prune(&PruneOptions::default()).unwrap();
    assert!(store.snapshotter().info(&first).is_ok());
    assert!(store.snapshotter().info(&second).is_ok());
    assert!(content.exists(&blob));
    assert!(store.snapshotter().info(&loose).is_err());
    assert!(!content.exists(&loose_blob));
}
