//! Content store: blob ingest, verification, resume, concurrent writers, disk full.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod store_support;

use std::io::Write;

use kiln_snapshotter::{PruneOptions, Store, StoreError};
use kiln_types::Digest;
use store_support::{pattern_bytes, TestRoot};

#[test]
fn put_open_and_existing_blob_is_success() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let content = store.content();
    let bytes = b"hello kiln".to_vec();
    let expected = Digest::of_bytes(&bytes);
    let (digest, size) = content.put_bytes(&lease, &bytes, Some(&expected)).unwrap();
    assert_eq!(digest, expected);
    assert_eq!(size, bytes.len() as u64);
    assert!(content.exists(&digest));
    assert_eq!(content.size(&digest).unwrap(), size);
    assert_eq!(content.read_bytes(&digest, 1024).unwrap(), bytes);
    assert!(matches!(
        content.read_bytes(&digest, 3),
        Err(StoreError::BlobTooLarge { .. })
    ));
    assert_eq!(
        content.blob_path(&digest),
        root.path().join("content/blobs/sha256").join(digest.hex())
    );
    // Storing it again is success, not an error.
    let again = content.put_bytes(&lease, &bytes, None).unwrap();
    assert_eq!(again.0, digest);
    assert_eq!(content.list().unwrap(), vec![digest.clone()]);
    assert!(content.delete(&digest).unwrap());
    assert!(!content.exists(&digest));
    assert!(matches!(
        content.open(&digest),
        Err(StoreError::BlobNotFound { .. })
    ));
    assert_eq!(
        std::fs::read_dir(root.path().join("content/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn wrong_digest_or_size_is_refused_and_never_visible() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let content = store.content();
    let claimed = Digest::of_bytes(b"something else");
    let error = content
        .put_bytes(&lease, b"actual bytes", Some(&claimed))
        .unwrap_err();
    assert!(
        matches!(error, StoreError::DigestMismatch { .. }),
        "{error}"
    );
    assert!(!content.exists(&claimed));
    assert!(!content.exists(&Digest::of_bytes(b"actual bytes")));

    // More bytes than announced: the write itself fails.
    let bytes = b"twelve bytes";
    let mut writer = content
        .writer(&lease, Some((Digest::of_bytes(bytes), 5)))
        .unwrap();
    assert!(writer.write_all(bytes).is_err());
    drop(writer);
    // Fewer bytes than announced: commit fails.
    let mut writer = content
        .writer(&lease, Some((Digest::of_bytes(bytes), 100)))
        .unwrap();
    writer.write_all(bytes).unwrap();
    assert!(matches!(
        writer.commit(),
        Err(StoreError::SizeMismatch { .. })
    ));
    assert!(content.list().unwrap().is_empty());
    // Poisoned partial files are removed; nothing is left to resume.
    assert_eq!(content.ingest_offset(&Digest::of_bytes(bytes)), 0);
}

#[test]
fn interrupted_download_resumes_from_its_offset() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let content = store.content();
    let bytes = pattern_bytes(300_000, 7);
    let digest = Digest::of_bytes(&bytes);
    let mut writer = content
        .writer(&lease, Some((digest.clone(), bytes.len() as u64)))
        .unwrap();
    assert_eq!(writer.offset(), 0);
    writer.write_all(&bytes[..100_000]).unwrap();
    drop(writer); // a network error
    assert_eq!(content.ingest_offset(&digest), 100_000);
    assert!(!content.exists(&digest));
    let mut writer = content
        .writer(&lease, Some((digest.clone(), bytes.len() as u64)))
        .unwrap();
    assert_eq!(writer.offset(), 100_000);
    let offset = writer.offset() as usize;
    writer.write_all(&bytes[offset..]).unwrap();
    assert_eq!(
        writer.commit().unwrap(),
        (digest.clone(), bytes.len() as u64)
    );
    assert_eq!(std::fs::read(content.blob_path(&digest)).unwrap(), bytes);
    assert_eq!(content.ingest_offset(&digest), 0);

    // restart() throws a partial write away.
    let other = pattern_bytes(1000, 9);
    let other_digest = Digest::of_bytes(&other);
    let mut writer = content
        .writer(&lease, Some((other_digest.clone(), 1000)))
        .unwrap();
    writer.write_all(&[0u8; 10]).unwrap();
    drop(writer);
    let mut writer = content
        .writer(&lease, Some((other_digest.clone(), 1000)))
        .unwrap();
    assert_eq!(writer.offset(), 10);
    writer.restart().unwrap();
    writer.write_all(&other).unwrap();
    assert_eq!(writer.commit().unwrap().0, other_digest);
}

#[test]
fn unknown_digest_writer_and_two_writers_of_one_blob() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = store.lease("test").unwrap();
    let content = store.content();
    let bytes = pattern_bytes(50_000, 3);
    let mut writer = content.writer(&lease, None).unwrap();
    writer.write_all(&bytes).unwrap();
    let (digest, size) = writer.commit().unwrap();
    assert_eq!(digest, Digest::of_bytes(&bytes));
    assert_eq!(size, 50_000);

    // Two writers of one digest at once (the second gets a private ingest file).
    let second = pattern_bytes(80_000, 4);
    let second_digest = Digest::of_bytes(&second);
    let expected = Some((second_digest.clone(), second.len() as u64));
    let mut first_writer = content.writer(&lease, expected.clone()).unwrap();
    let mut second_writer = content.writer(&lease, expected).unwrap();
    first_writer.write_all(&second[..40_000]).unwrap();
    second_writer.write_all(&second).unwrap();
    first_writer.write_all(&second[40_000..]).unwrap();
    assert_eq!(second_writer.commit().unwrap().0, second_digest);
    assert_eq!(first_writer.commit().unwrap().0, second_digest);
    assert_eq!(
        std::fs::read(content.blob_path(&second_digest)).unwrap(),
        second
    );
    assert_eq!(
        std::fs::read_dir(root.path().join("content/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn threads_ingest_concurrently() {
    let root = TestRoot::new();
    let store = Store::open(root.path()).unwrap();
    let lease = std::sync::Arc::new(store.lease("test").unwrap());
    let handles: Vec<_> = (0..8u8)
        .map(|seed| {
            let store = store.clone();
            let lease = lease.clone();
            std::thread::spawn(move || {
                let bytes = pattern_bytes(20_000, seed % 4);
                let digest = Digest::of_bytes(&bytes);
                let stored = store
                    .content()
                    .put_bytes(&lease, &bytes, Some(&digest))
                    .unwrap();
                assert_eq!(stored.0, digest);
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    assert_eq!(store.content().list().unwrap().len(), 4);
}

/// HOSTILE-INPUTS C5: disk full gives a clean error, no half blob, and works after prune.
#[test]
fn disk_full_is_a_clean_error_and_prune_recovers() {
    let root = TestRoot::new();
    let small = root.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    rustix::mount::mount(
        "tmpfs",
        &small,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        c"size=3m",
    )
    .unwrap();
    let store = Store::open(&small).unwrap();
    let content = store.content();
    {
        let lease = store.lease("filler").unwrap();
        let big = pattern_bytes(4 << 20, 1);
        let error = content
            .put_bytes(&lease, &big, Some(&Digest::of_bytes(&big)))
            .unwrap_err();
        eprintln!("disk full error: {error}");
        assert!(matches!(error, StoreError::Io { .. }), "{error}");
        assert!(!content.exists(&Digest::of_bytes(&big)));
    }
    // The partial file of a known digest stays for resuming until a prune.
    let report = store.prune(&PruneOptions::default()).unwrap();
    assert_eq!(report.ingest_files_removed, 1);
    let lease = store.lease("after").unwrap();
    let modest = pattern_bytes(1 << 20, 2);
    content
        .put_bytes(&lease, &modest, Some(&Digest::of_bytes(&modest)))
        .unwrap();
    drop(lease);
    drop(store);
    rustix::mount::unmount(&small, rustix::mount::UnmountFlags::DETACH).unwrap();
}
