//! Layer blob records: a committed snapshot's exported blob per variant, read back, refused
//! for bad input, and forgotten with the snapshot by prune.

mod store_support;

use std::fs;

use kiln_snapshotter::{LayerBlobRecord, PreparedUnpack, PruneOptions, Store, StoreError};
use kiln_types::{media_type, Digest};
use store_support::TestRoot;

fn committed_snapshot(
    store: &Store,
    lease: &kiln_snapshotter::Lease,
    key: &str,
) -> kiln_snapshotter::SnapshotId {
    match store
        .snapshotter()
        .prepare_unpack(lease, key, None)
        .unwrap()
    {
        PreparedUnpack::Existing(id) => id,
        PreparedUnpack::New(directory) => {
            fs::write(directory.path().join("file"), key).unwrap();
            directory.commit(None, None).unwrap()
        }
    }
}

fn record_for(store: &Store, lease: &kiln_snapshotter::Lease, bytes: &[u8]) -> LayerBlobRecord {
    let (digest, size) = store.content().put_bytes(lease, bytes, None).unwrap();
    LayerBlobRecord {
        media_type: media_type::OCI_LAYER_GZIP.to_string(),
        digest,
        size,
        diff_id: Digest::of_bytes(b"uncompressed"),
        uncompressed_size: 12,
        created_unix: 0,
        midstates: Vec::new(),
    }
}

#[test]
fn records_are_kept_per_variant_and_read_back() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let snapshot = committed_snapshot(&store, &lease, "one");
    assert!(store.layer_blob(&snapshot, "gzip-6").unwrap().is_none());
    let gzip = record_for(&store, &lease, b"gzip bytes");
    let zstd = record_for(&store, &lease, b"zstd bytes");
    store.put_layer_blob(&snapshot, "gzip-6", &gzip).unwrap();
    store.put_layer_blob(&snapshot, "zstd-3", &zstd).unwrap();
    let found = store.layer_blob(&snapshot, "gzip-6").unwrap().unwrap();
    assert_eq!(found.digest, gzip.digest);
    assert!(found.created_unix > 0);
    let all = store.layer_blobs(&snapshot).unwrap();
    let names: Vec<&str> = all.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["gzip-6", "zstd-3"]);
    // Another handle (another process would be the same) sees it.
    let other = Store::open(root.path()).unwrap();
    assert_eq!(
        other
            .layer_blob(&snapshot, "zstd-3")
            .unwrap()
            .unwrap()
            .digest,
        zstd.digest
    );
}

#[test]
fn bad_variants_missing_blobs_and_unknown_snapshots_are_refused() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let snapshot = committed_snapshot(&store, &lease, "one");
    let record = record_for(&store, &lease, b"bytes");
    for variant in ["", "has space", "tab\t", &"x".repeat(201)] {
        assert!(matches!(
            store.put_layer_blob(&snapshot, variant, &record),
            Err(StoreError::InvalidLayerVariant { .. })
        ));
    }
    let mut missing = record.clone();
    missing.digest = Digest::of_bytes(b"never stored");
    assert!(matches!(
        store.put_layer_blob(&snapshot, "gzip", &missing),
        Err(StoreError::BlobNotFound { .. })
    ));
    let unknown = kiln_snapshotter::SnapshotId::parse("0123456789ab").unwrap();
    assert!(matches!(
        store.put_layer_blob(&unknown, "gzip", &record),
        Err(StoreError::SnapshotNotFound { .. })
    ));
}

#[test]
fn prune_forgets_the_records_of_removed_snapshots() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let kept_lease = store.lease("kept").unwrap();
    let kept = committed_snapshot(&store, &kept_lease, "kept");
    let gone = {
        let lease = store.lease("gone").unwrap();
        let gone = committed_snapshot(&store, &lease, "gone");
        let record = record_for(&store, &lease, b"gone bytes");
        store.put_layer_blob(&gone, "gzip", &record).unwrap();
        let record = record_for(&store, &kept_lease, b"kept bytes");
        store.put_layer_blob(&kept, "gzip", &record).unwrap();
        gone
    };
    store.prune(&PruneOptions::default()).unwrap();
    assert!(store.layer_blobs(&gone).unwrap().is_empty());
    assert!(store.layer_blob(&kept, "gzip").unwrap().is_some());
}
