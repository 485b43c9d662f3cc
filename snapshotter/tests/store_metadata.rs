//! Metadata: image records, cache records, corrupt database, many threads and processes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod store_support;

use kiln_snapshotter::{CacheRecord, Store, StoreError};
use kiln_types::{media_type, Descriptor, Digest};
use store_support::{current_role, RoleChild, TestRoot};

fn stored_descriptor(store: &Store, bytes: &[u8]) -> Descriptor {
    let lease = store.lease("test").unwrap();
    let (digest, size) = store.content().put_bytes(&lease, bytes, None).unwrap();
    Descriptor::new(media_type::OCI_MANIFEST, digest, size)
}

#[test]
fn image_records_tag_resolve_and_remove() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let first = stored_descriptor(&store, b"{\"manifest\":1}");
    let second = stored_descriptor(&store, b"{\"manifest\":2}");
    store.put_image("docker.io/library/app:1", &first).unwrap();
    store.put_image("docker.io/library/app:2", &second).unwrap();
    assert_eq!(
        store
            .image("docker.io/library/app:1")
            .unwrap()
            .unwrap()
            .target,
        first
    );
    assert!(store.image("docker.io/library/app:3").unwrap().is_none());

    // By full digest, by unique prefix, and ambiguity.
    assert_eq!(
        store.resolve_image(first.digest.as_str()).unwrap().target,
        first
    );
    assert_eq!(
        store
            .resolve_image(&first.digest.hex()[..12])
            .unwrap()
            .target,
        first
    );
    let tagged = store
        .tag_image("docker.io/library/app:1", "mine:latest")
        .unwrap();
    assert_eq!(tagged.target, first);
    // Two names of one digest are not ambiguous.
    assert_eq!(
        store
            .resolve_image(&first.digest.hex()[..8])
            .unwrap()
            .target,
        first
    );
    assert!(matches!(
        store.resolve_image("nothing:here"),
        Err(StoreError::ImageNotFound { .. })
    ));
    let names: Vec<String> = store
        .images()
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(
        names,
        [
            "docker.io/library/app:1",
            "docker.io/library/app:2",
            "mine:latest"
        ]
    );
    assert!(store.remove_image("mine:latest").unwrap());
    assert!(!store.remove_image("mine:latest").unwrap());
    assert_eq!(store.images().unwrap().len(), 2);

    // A tag needs its blob.
    let missing = Descriptor::new(media_type::OCI_MANIFEST, Digest::of_bytes(b"nope"), 4);
    assert!(matches!(
        store.put_image("x:y", &missing),
        Err(StoreError::BlobNotFound { .. })
    ));

    // Records survive reopening.
    drop(store);
    let store = Store::open(root.path()).unwrap();
    assert_eq!(store.images().unwrap().len(), 2);
}

#[test]
fn cache_records_round_trip_and_check_references() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let blob = stored_descriptor(&store, b"layer");
    let record = CacheRecord {
        snapshots: vec![],
        blobs: vec![blob.digest.clone()],
        cache_mounts: vec![],
        data: serde_json::json!({"solver": "defined", "n": 1}),
        created_unix: 0,
    };
    store.put_cache_record("key-1", &record).unwrap();
    let stored = store.cache_record("key-1").unwrap().unwrap();
    assert_eq!(stored.data, record.data);
    assert!(stored.created_unix > 0);
    assert_eq!(store.cache_records().unwrap().len(), 1);
    let dangling = CacheRecord {
        blobs: vec![Digest::of_bytes(b"absent")],
        ..record.clone()
    };
    assert!(store.put_cache_record("key-2", &dangling).is_err());
    let bad_snapshot: CacheRecord = serde_json::from_value(serde_json::json!({
        "snapshots": ["0123456789ab"]
    }))
    .unwrap();
    assert!(matches!(
        store.put_cache_record("key-3", &bad_snapshot),
        Err(StoreError::SnapshotNotFound { .. })
    ));
    assert!(serde_json::from_value::<CacheRecord>(serde_json::json!({
        "snapshots": ["../../../etc"]
    }))
    .is_err());
    assert!(store.remove_cache_record("key-1").unwrap());
    assert!(store.cache_record("key-1").unwrap().is_none());
}

/// The WAL is checkpointed as it grows, so it stays short: every kiln command's first
/// connection reads the whole log to rebuild its index (a 1,000-page log was 5 ms per open).
#[test]
fn the_write_ahead_log_stays_short() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let record = CacheRecord {
        snapshots: vec![],
        blobs: vec![],
        cache_mounts: vec![],
        data: serde_json::json!({"step": "x".repeat(2000)}),
        created_unix: 0,
    };
    // each commit appends at least one 4 KiB page to the log
    for index in 0..400 {
        store
            .put_cache_record(&format!("key-{index}"), &record)
            .unwrap();
    }
    let log = root.path().join("metadata.db-wal");
    let frame = 24 + 4096;
    let frames = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) / frame;
    assert!(
        frames < 200,
        "{frames} frames in the log after 400 commits: it is not checkpointed"
    );
    drop(store);
    let store = Store::open(root.path()).unwrap();
    assert_eq!(store.cache_records().unwrap().len(), 400);
}

/// HOSTILE-INPUTS C4: a database that cannot be opened is a clear error and blobs stay.
#[test]
fn corrupt_database_is_a_clear_error_and_keeps_blobs() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let blob = stored_descriptor(&store, b"precious");
    drop(store);
    let database = root.path().join("metadata.db");
    let mut bytes = std::fs::read(&database).unwrap();
    for byte in bytes.iter_mut().take(4096) {
        *byte ^= 0x5a;
    }
    std::fs::write(&database, &bytes).unwrap();
    // the WAL outlives the process (no checkpoint on close): damage its header too, or
    // SQLite reads the good first page from it
    let wal = root.path().join("metadata.db-wal");
    if let Ok(mut bytes) = std::fs::read(&wal) {
        for byte in bytes.iter_mut().take(32) {
            *byte ^= 0x5a;
        }
        std::fs::write(&wal, &bytes).unwrap();
    }
    let error = Store::open(root.path()).unwrap_err();
    eprintln!("{error}");
    assert!(
        matches!(error, StoreError::MetadataUnreadable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("metadata.db"));
    assert!(root
        .path()
        .join("content/blobs/sha256")
        .join(blob.digest.hex())
        .is_file());
    // Moving the file away gives a fresh, working store with the blobs still there.
    std::fs::rename(&database, root.path().join("metadata.db.broken")).unwrap();
    let _ = std::fs::rename(&wal, root.path().join("metadata.db-wal.broken"));
    let _ = std::fs::remove_file(root.path().join("metadata.db-shm"));
    let store = Store::open(root.path()).unwrap();
    assert!(store.content().exists(&blob.digest));
}

#[test]
fn many_threads_and_processes_write_records() {
    if current_role().is_some() {
        return;
    }
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let blob = stored_descriptor(&store, b"shared");
    let mut children: Vec<RoleChild> = (0..3)
        .map(|index| {
            RoleChild::spawn(
                "role_writer",
                "writer",
                root.path(),
                &[
                    ("KILN_STORE_TEST_INDEX", index.to_string()),
                    ("KILN_STORE_TEST_BLOB", blob.digest.to_string()),
                ],
            )
        })
        .collect();
    let handles: Vec<_> = (0..4)
        .map(|thread| {
            let store = store.clone();
            let blob = blob.clone();
            std::thread::spawn(move || {
                for round in 0..25 {
                    store
                        .put_image(&format!("thread{thread}:{round}"), &blob)
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    for child in &mut children {
        assert!(child.wait_success());
    }
    assert_eq!(store.images().unwrap().len(), 4 * 25 + 3 * 25);
}

#[test]
fn role_writer() {
    let Some((role, root)) = current_role() else {
        return;
    };
    assert_eq!(role, "writer");
    let index: usize = std::env::var("KILN_STORE_TEST_INDEX")
        .unwrap()
        .parse()
        .unwrap();
    let digest = Digest::parse(&std::env::var("KILN_STORE_TEST_BLOB").unwrap()).unwrap();
    let store = Store::open(&root).unwrap();
    let descriptor = Descriptor::new(
        media_type::OCI_MANIFEST,
        digest.clone(),
        store.content().size(&digest).unwrap(),
    );
    for round in 0..25 {
        store
            .put_image(&format!("process{index}:{round}"), &descriptor)
            .unwrap();
    }
}

/// A figure for the report: one metadata transaction (open redb, write, commit, close).
#[test]
fn transaction_cost_figure() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let blob = stored_descriptor(&store, b"timing");
    let started = std::time::Instant::now();
    for round in 0..200 {
        store.put_image(&format!("t:{round}"), &blob).unwrap();
    }
    let write = started.elapsed() / 200;
    let started = std::time::Instant::now();
    for round in 0..200 {
        store.image(&format!("t:{round}")).unwrap().unwrap();
    }
    let read = started.elapsed() / 200;
    eprintln!("metadata write transaction: {write:?}, read transaction: {read:?}");
}

/// A writer that keeps the database locked past the busy timeout gives a clear error, not a
/// hang; reads still work meanwhile (WAL), and writes work again once it lets go.
#[test]
fn a_stuck_writer_elsewhere_is_reported_as_busy() {
    let root = TestRoot::new();
    let store = Store::open_with(
        root.path(),
        kiln_snapshotter::StoreOptions::default()
            .with_busy_timeout(std::time::Duration::from_millis(300)),
    )
    .unwrap();
    let blob = stored_descriptor(&store, b"busy");
    store.put_image("before:1", &blob).unwrap();
    let other = rusqlite::Connection::open(store.metadata_path()).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let error = store.put_image("during:1", &blob).unwrap_err();
    assert!(matches!(error, StoreError::MetadataBusy { .. }), "{error}");
    assert!(store.image("before:1").unwrap().is_some());
    other.execute_batch("ROLLBACK").unwrap();
    store.put_image("after:1", &blob).unwrap();
}
