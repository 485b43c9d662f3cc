//! Snapshots on real overlayfs: unpack and commit by chain id, active overlays, whiteouts in
//! committed uppers, views, 150-layer chains under a long root, both mount methods.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod store_support;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use kiln_snapshotter::{
    chain_ids, CommitOptions, MountMethod, PreparedUnpack, SnapshotId, SnapshotKind, Store,
    StoreError, StoreOptions,
};
use kiln_types::{media_type, Descriptor, Digest, ImageIndex, ImageManifest, Platform};
use store_support::{mounts_under, TestRoot};

fn open(root: &TestRoot, method: MountMethod) -> Store {
    Store::open_with(
        root.path(),
        StoreOptions::default().with_mount_method(method),
    )
    .unwrap()
}

/// Unpacks a layer holding `files` (path, content) under `key`; returns its snapshot.
fn unpack(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    key: &str,
    parent: Option<&SnapshotId>,
    files: &[(&str, &str)],
) -> SnapshotId {
    match store
        .snapshotter()
        .prepare_unpack(lease, key, parent)
        .unwrap()
    {
        PreparedUnpack::Existing(id) => id,
        PreparedUnpack::New(directory) => {
            for (path, content) in files {
                let target = directory.path().join(path);
                fs::create_dir_all(target.parent().unwrap()).unwrap();
                fs::write(target, content).unwrap();
            }
            directory.commit(None, None).unwrap()
        }
    }
}

#[test]
fn unpack_commit_and_reuse_by_key() {
    let root = TestRoot::new();
    let store = open(&root, MountMethod::Auto);
    let lease = store.lease("test").unwrap();
    let snapshotter = store.snapshotter();
    let chain = Digest::of_bytes(b"layer one").to_string();
    let PreparedUnpack::New(directory) = snapshotter.prepare_unpack(&lease, &chain, None).unwrap()
    else {
        panic!("nothing was unpacked yet")
    };
    assert!(directory.path().starts_with(root.path().join("snapshots")));
    fs::write(directory.path().join("hello"), "world").unwrap();
    let diff_id = Digest::of_bytes(b"diff");
    let id = directory.commit(Some(diff_id.clone()), Some(5)).unwrap();
    let record = snapshotter.info(&id).unwrap();
    assert_eq!(record.kind, SnapshotKind::Committed);
    assert_eq!(record.diff_id, Some(diff_id));
    assert_eq!(record.key.as_deref(), Some(chain.as_str()));
    assert_eq!(snapshotter.lookup(&chain).unwrap(), Some(id.clone()));
    assert_eq!(
        fs::read_to_string(snapshotter.fs_dir(&id).join("hello")).unwrap(),
        "world"
    );
    match snapshotter.prepare_unpack(&lease, &chain, None).unwrap() {
        PreparedUnpack::Existing(existing) => assert_eq!(existing, id),
        PreparedUnpack::New(_) => panic!("should reuse the committed snapshot"),
    }
    // An unpack dropped before commit leaves nothing.
    let other = Digest::of_bytes(b"layer two").to_string();
    let PreparedUnpack::New(directory) = snapshotter
        .prepare_unpack(&lease, &other, Some(&id))
        .unwrap()
    else {
        panic!()
    };
    let abandoned = directory.path().parent().unwrap().to_path_buf();
    drop(directory);
    assert!(!abandoned.exists());
    assert_eq!(snapshotter.list().unwrap().len(), 1);
    assert_eq!(snapshotter.lookup(&other).unwrap(), None);
}

#[test]
fn concurrent_unpacks_of_one_chain_id_share_the_winner() {
    let root = TestRoot::new();
    let store = open(&root, MountMethod::Auto);
    let lease = store.lease("test").unwrap();
    let snapshotter = store.snapshotter();
    let chain = Digest::of_bytes(b"contended").to_string();
    let PreparedUnpack::New(first) = snapshotter.prepare_unpack(&lease, &chain, None).unwrap()
    else {
        panic!()
    };
    let PreparedUnpack::New(second) = snapshotter.prepare_unpack(&lease, &chain, None).unwrap()
    else {
        panic!()
    };
    fs::write(first.path().join("f"), "1").unwrap();
    fs::write(second.path().join("f"), "1").unwrap();
    let second_dir = second.path().parent().unwrap().to_path_buf();
    let winner = first.commit(None, None).unwrap();
    let loser_result = second.commit(None, None).unwrap();
    assert_eq!(winner, loser_result);
    assert!(!second_dir.exists());
    let records = snapshotter.list().unwrap();
    assert_eq!(records.len(), 1);
    let lease_record = store
        .leases()
        .unwrap()
        .into_iter()
        .find(|(id, _)| id == lease.id())
        .unwrap()
        .1;
    assert!(lease_record.snapshots.contains(&winner));
}

fn overlay_round_trip(method: MountMethod) {
    let root = TestRoot::new();
    let store = open(&root, method);
    let lease = store.lease("test").unwrap();
    let snapshotter = store.snapshotter();
    let base = unpack(
        &store,
        &lease,
        "base",
        None,
        &[("a", "from base"), ("d/x", "x"), ("keep", "kept")],
    );

    let active = snapshotter.prepare(&lease, Some(&base)).unwrap();
    let merged = active.mountpoint();
    assert_eq!(fs::read_to_string(merged.join("a")).unwrap(), "from base");
    fs::write(merged.join("b"), "new").unwrap();
    fs::remove_file(merged.join("a")).unwrap();
    fs::remove_dir_all(merged.join("d")).unwrap();
    fs::create_dir(merged.join("d")).unwrap();
    fs::write(merged.join("d/y"), "y").unwrap();
    assert_eq!(active.lower_dirs(), [snapshotter.fs_dir(&base)]);
    let upper = active.upper_dir();
    let active_dir = active.mountpoint().parent().unwrap().to_path_buf();
    let run = snapshotter
        .commit(
            active,
            CommitOptions {
                key: Some("run-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(mounts_under(&active_dir).is_empty());
    assert_eq!(snapshotter.fs_dir(&run), upper);
    assert!(!active_dir.join("work").exists());

    // The committed upper keeps overlay whiteouts and opaque markers.
    let whiteout = fs::symlink_metadata(upper.join("a")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    let mut value = [0u8; 8];
    let length = rustix::fs::getxattr(upper.join("d"), "trusted.overlay.opaque", &mut value)
        .expect("opaque xattr on the recreated directory");
    assert_eq!(&value[..length], b"y");
    assert_eq!(
        snapshotter.chain(&run).unwrap(),
        vec![run.clone(), base.clone()]
    );

    // ... and is a valid lower as is.
    let next = snapshotter.prepare(&lease, Some(&run)).unwrap();
    let merged = next.mountpoint();
    assert!(!merged.join("a").exists());
    assert!(!merged.join("d/x").exists());
    assert_eq!(fs::read_to_string(merged.join("d/y")).unwrap(), "y");
    assert_eq!(fs::read_to_string(merged.join("b")).unwrap(), "new");
    assert_eq!(fs::read_to_string(merged.join("keep")).unwrap(), "kept");
    let next_dir = merged.parent().unwrap().to_path_buf();
    let next_id = next.id().clone();
    drop(next);
    assert!(mounts_under(&next_dir).is_empty());
    assert!(!next_dir.exists());
    assert!(matches!(
        snapshotter.info(&next_id),
        Err(StoreError::SnapshotNotFound { .. })
    ));

    // A read-only view.
    let view = snapshotter.view(&lease, &run).unwrap();
    assert_eq!(
        fs::read_to_string(view.mountpoint().join("b")).unwrap(),
        "new"
    );
    assert!(fs::write(view.mountpoint().join("c"), "no").is_err());
    let view_dir = view.mountpoint().parent().unwrap().to_path_buf();
    drop(view);
    assert!(!view_dir.exists());

    // remove() an active snapshot explicitly; scratch (no parent) works too.
    let scratch = snapshotter.prepare(&lease, None).unwrap();
    fs::write(scratch.mountpoint().join("only"), "1").unwrap();
    let scratch_dir = scratch.mountpoint().parent().unwrap().to_path_buf();
    snapshotter.remove(scratch).unwrap();
    assert!(!scratch_dir.exists());
    assert!(mounts_under(&root.path().join("snapshots")).is_empty());
}

#[test]
fn overlay_round_trip_new_mount_api() {
    overlay_round_trip(MountMethod::NewMountApi);
}

#[test]
fn overlay_round_trip_legacy_mount() {
    overlay_round_trip(MountMethod::Legacy);
}

#[test]
fn prepare_on_an_uncommitted_parent_fails_cleanly() {
    let root = TestRoot::new();
    let store = open(&root, MountMethod::Auto);
    let lease = store.lease("test").unwrap();
    let snapshotter = store.snapshotter();
    let active = snapshotter.prepare(&lease, None).unwrap();
    let error = snapshotter.prepare(&lease, Some(active.id())).unwrap_err();
    assert!(
        matches!(error, StoreError::SnapshotNotCommitted { .. }),
        "{error}"
    );
    let missing = SnapshotId::parse("0123456789ab").unwrap();
    assert!(matches!(
        snapshotter.prepare(&lease, Some(&missing)),
        Err(StoreError::SnapshotNotFound { .. })
    ));
    drop(active);
    assert_eq!(
        fs::read_dir(root.path().join("snapshots")).unwrap().count(),
        0
    );
    assert!(snapshotter.list().unwrap().is_empty());
}

fn deep_chain(method: MountMethod, layers: usize) {
    // A root path of 300+ bytes: absolute lowerdirs for 150 layers take ~50 KB.
    let root = TestRoot::with_prefix_len(300);
    let store = open(&root, method);
    let lease = store.lease("test").unwrap();
    let snapshotter = store.snapshotter();
    let mut parent: Option<SnapshotId> = None;
    for index in 0..layers {
        let name = format!("layer-{index}");
        let content = index.to_string();
        let id = unpack(
            &store,
            &lease,
            &format!("chain-{index}"),
            parent.as_ref(),
            &[(name.as_str(), content.as_str()), ("top", content.as_str())],
        );
        parent = Some(id);
    }
    let top = parent.unwrap();
    let absolute_length: usize = snapshotter
        .lower_dirs(&top)
        .unwrap()
        .iter()
        .map(|path| path.as_os_str().len() + 1)
        .sum();
    assert!(absolute_length > 4096, "{absolute_length}");
    let started = std::time::Instant::now();
    let active = snapshotter.prepare(&lease, Some(&top)).unwrap();
    eprintln!(
        "{method:?}: prepare of a {layers}-layer chain took {:?}",
        started.elapsed()
    );
    let merged = active.mountpoint();
    assert_eq!(
        fs::read_to_string(merged.join("top")).unwrap(),
        (layers - 1).to_string()
    );
    for index in 0..layers {
        assert_eq!(
            fs::read_to_string(merged.join(format!("layer-{index}"))).unwrap(),
            index.to_string()
        );
    }
    fs::write(merged.join("written"), "on top").unwrap();
    let committed = snapshotter
        .commit(active, CommitOptions::default())
        .unwrap();
    assert_eq!(snapshotter.chain(&committed).unwrap().len(), layers + 1);
    let view = snapshotter.view(&lease, &committed).unwrap();
    assert_eq!(
        fs::read_to_string(view.mountpoint().join("written")).unwrap(),
        "on top"
    );
}

#[test]
fn chain_of_150_layers_under_a_long_root_new_mount_api() {
    deep_chain(MountMethod::NewMountApi, 150);
}

#[test]
fn chain_of_150_layers_under_a_long_root_legacy_relative_paths() {
    deep_chain(MountMethod::Legacy, 150);
}

/// Stores a JSON document and returns its descriptor.
fn put_json(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    media: &str,
    value: &serde_json::Value,
) -> Descriptor {
    let bytes = serde_json::to_vec(value).unwrap();
    let (digest, size) = store.content().put_bytes(lease, &bytes, None).unwrap();
    Descriptor::new(media, digest, size)
}

/// Stores a fake three-layer image (and an index over it); returns (index, manifest, diff ids).
pub fn fake_image(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
) -> (Descriptor, Descriptor, Vec<Digest>) {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for index in 0..3 {
        let blob = format!("layer blob {index}");
        let (digest, size) = store
            .content()
            .put_bytes(lease, blob.as_bytes(), None)
            .unwrap();
        layers.push(Descriptor::new(media_type::OCI_LAYER_GZIP, digest, size));
        diff_ids.push(Digest::of_bytes(format!("layer tar {index}").as_bytes()));
    }
    let config = put_json(
        store,
        lease,
        media_type::OCI_CONFIG,
        &serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }),
    );
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: None,
        extra: Default::default(),
    };
    let manifest = put_json(
        store,
        lease,
        media_type::OCI_MANIFEST,
        &serde_json::to_value(&manifest).unwrap(),
    );
    let mut entry = manifest.clone();
    entry.platform = Some(Platform::parse("linux/amd64").unwrap());
    let index = ImageIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.into()),
        manifests: vec![entry],
        annotations: None,
        extra: Default::default(),
    };
    let index = put_json(
        store,
        lease,
        media_type::OCI_INDEX,
        &serde_json::to_value(&index).unwrap(),
    );
    (index, manifest, diff_ids)
}

#[test]
fn stored_image_resolves_to_its_snapshot_chain() {
    let root = TestRoot::new();
    let store = open(&root, MountMethod::Auto);
    let lease = store.lease("test").unwrap();
    let (index, manifest, diff_ids) = fake_image(&store, &lease);
    store.put_image("example.com/app:1", &index).unwrap();
    let platform = Platform::parse("linux/amd64").unwrap();
    let resolved = store.resolve_layers(&index, &platform).unwrap();
    assert_eq!(resolved.manifest_descriptor.digest, manifest.digest);
    assert_eq!(resolved.layers.len(), 3);
    let chains = chain_ids(&diff_ids);
    for (layer, chain) in resolved.layers.iter().zip(&chains) {
        assert_eq!(&layer.chain_id, chain);
        assert!(layer.snapshot.is_none());
    }
    assert!(resolved.top_snapshot().is_none());
    // Unpack them by chain id, bottom up.
    let mut parent = None;
    for (position, chain) in chains.iter().enumerate() {
        let name = format!("file{position}");
        parent = Some(unpack(
            &store,
            &lease,
            chain.as_str(),
            parent.as_ref(),
            &[(name.as_str(), "x")],
        ));
    }
    let resolved = store.resolve_layers(&manifest, &platform).unwrap();
    assert_eq!(resolved.top_snapshot(), parent.as_ref());
    assert!(matches!(
        store.resolve_layers(&index, &Platform::parse("linux/arm64").unwrap()),
        Err(StoreError::PlatformNotFound { .. })
    ));
}

#[allow(dead_code)]
fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}

/// Past what one page of relative paths holds: the new mount API still mounts; the legacy
/// path refuses with a clear error (flattening is not implemented).
#[test]
fn chain_of_300_layers_mounts_with_lowerdir_plus_and_is_refused_by_legacy() {
    let root = TestRoot::with_prefix_len(300);
    let store = open(&root, MountMethod::NewMountApi);
    let lease = store.lease("test").unwrap();
    let mut parent: Option<SnapshotId> = None;
    for index in 0..300 {
        let content = index.to_string();
        parent = Some(unpack(
            &store,
            &lease,
            &format!("deep-{index}"),
            parent.as_ref(),
            &[("top", content.as_str())],
        ));
    }
    let top = parent.unwrap();
    let active = store.snapshotter().prepare(&lease, Some(&top)).unwrap();
    assert_eq!(
        fs::read_to_string(active.mountpoint().join("top")).unwrap(),
        "299"
    );
    drop(active);
    drop(lease);
    drop(store);
    let legacy = open(&root, MountMethod::Legacy);
    let lease = legacy.lease("test").unwrap();
    let error = legacy
        .snapshotter()
        .prepare(&lease, Some(&top))
        .unwrap_err();
    assert!(
        matches!(error, StoreError::MountOptionsTooLong { layers: 300, .. }),
        "{error}"
    );
    assert!(mounts_under(&root.path().join("snapshots")).is_empty());
}

/// A throwaway snapshot (`kiln run --rm`) is a volatile overlay, can be written, cannot be
/// committed, and leaves nothing behind when removed.
#[test]
fn throwaway_snapshots_are_volatile_and_never_committed() {
    for method in [MountMethod::NewMountApi, MountMethod::Legacy] {
        let root = TestRoot::new();
        let store = open(&root, method);
        let lease = store.lease("test").unwrap();
        let snapshotter = store.snapshotter();
        let base = unpack(&store, &lease, "base", None, &[("a", "from base")]);
        let active = snapshotter.prepare_throwaway(&lease, Some(&base)).unwrap();
        let merged = active.mountpoint();
        fs::write(merged.join("b"), "scratch").unwrap();
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        let line = mounts
            .lines()
            .find(|line| line.contains(merged.to_str().unwrap()))
            .expect("the overlay is mounted");
        assert!(line.contains("volatile"), "{method:?}: {line}");
        let refused = snapshotter.commit(active, CommitOptions::default());
        assert!(
            matches!(refused, Err(StoreError::SnapshotNotCommitted { .. })),
            "{refused:?}"
        );
        // the refused commit dropped the snapshot: unmounted and removed
        assert!(mounts_under(root.path()).is_empty());
        assert!(!merged.exists());
        let active = snapshotter.prepare_throwaway(&lease, Some(&base)).unwrap();
        snapshotter.remove(active).unwrap();
        assert!(mounts_under(root.path()).is_empty());
    }
}

/// The snapshots and cache-mount directories carry ext4's top-of-tree flag (`chattr +T`), so
/// a new snapshot's files are not allocated among the inodes of snapshots just deleted. Only
/// checked where the filesystem keeps that flag (ext2/3/4); elsewhere opening must still work.
#[test]
fn snapshot_directories_are_marked_top_of_tree_where_supported() {
    let root = TestRoot::new();
    let probe = root.path().join("probe");
    fs::create_dir_all(&probe).unwrap();
    let probe_dir = fs::File::open(&probe).unwrap();
    let supported = rustix::fs::ioctl_getflags(&probe_dir)
        .and_then(|flags| {
            rustix::fs::ioctl_setflags(&probe_dir, flags | rustix::fs::IFlags::TOPDIR)
        })
        .and_then(|()| rustix::fs::ioctl_getflags(&probe_dir))
        .map(|flags| flags.contains(rustix::fs::IFlags::TOPDIR))
        .unwrap_or(false);
    let _store = open(&root, MountMethod::Auto);
    for name in ["snapshots", "cache-mounts"] {
        let directory = fs::File::open(root.path().join(name)).unwrap();
        let flags = rustix::fs::ioctl_getflags(&directory).ok();
        println!("{name}: flags {flags:?}, filesystem keeps TOPDIR: {supported}");
        if supported {
            assert!(
                flags.unwrap().contains(rustix::fs::IFlags::TOPDIR),
                "{name} not marked"
            );
        }
    }
}
