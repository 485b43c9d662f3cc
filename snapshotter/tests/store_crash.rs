//! Crash safety (HOSTILE-INPUTS C): child processes killed with SIGKILL mid-ingest and at
//! random points of a busy workload; two processes ingesting one blob at once.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod store_support;

use std::fs;
use std::io::Write;
use std::time::Duration;

use kiln_snapshotter::{
    CommitOptions, ImageRecord, PreparedUnpack, PruneOptions, SnapshotKind, Store,
};
use kiln_types::{media_type, Descriptor, Digest};
use store_support::{current_role, mounts_under, pattern_bytes, RoleChild, TestRoot};

const BLOB_SIZE: usize = 4 << 20;

/// Checks the invariants a crash must never break.
fn check_store_is_consistent(store: &Store) {
    let content = store.content();
    for digest in content.list().unwrap() {
        let bytes = fs::read(content.blob_path(&digest)).unwrap();
        assert_eq!(
            Digest::of_bytes(&bytes),
            digest,
            "a visible blob is always complete"
        );
    }
    let images: Vec<ImageRecord> = store.images().unwrap();
    for image in images {
        assert!(
            content.exists(&image.target.digest),
            "tag {} lost its blob",
            image.name
        );
    }
    let snapshotter = store.snapshotter();
    for record in snapshotter.list().unwrap() {
        assert_eq!(
            record.kind,
            SnapshotKind::Committed,
            "recovery removes dead active snapshots"
        );
        assert!(snapshotter.fs_dir(&record.id).is_dir());
    }
    assert!(mounts_under(&store.root().join("snapshots")).is_empty());
    for entry in fs::read_dir(store.root().join("snapshots")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let id = kiln_snapshotter::SnapshotId::parse(&name).unwrap();
        assert!(
            snapshotter.info(&id).is_ok(),
            "directory {name} without record after recovery"
        );
    }
}

#[test]
fn kill_during_ingest_leaves_no_blob_and_resumes() {
    if current_role().is_some() {
        return;
    }
    let root = TestRoot::new();
    let bytes = pattern_bytes(BLOB_SIZE, 11);
    let digest = Digest::of_bytes(&bytes);
    let mut child = RoleChild::spawn("role_slow_ingest", "slow-ingest", root.path(), &[]);
    child.wait_for("HALF");
    child.kill();
    let store = Store::open(root.path()).unwrap();
    assert!(!store.content().exists(&digest));
    assert!(store.content().list().unwrap().is_empty());
    check_store_is_consistent(&store);
    let lease = store.lease("resume").unwrap();
    let mut writer = store
        .content()
        .writer(&lease, Some((digest.clone(), bytes.len() as u64)))
        .unwrap();
    let offset = writer.offset() as usize;
    assert_eq!(offset, BLOB_SIZE / 2, "the partial download is resumed");
    writer.write_all(&bytes[offset..]).unwrap();
    assert_eq!(writer.commit().unwrap().0, digest);
    check_store_is_consistent(&store);
}

#[test]
fn role_slow_ingest() {
    let Some((role, root)) = current_role() else {
        return;
    };
    assert_eq!(role, "slow-ingest");
    let store = Store::open(&root).unwrap();
    let lease = store.lease("slow").unwrap();
    let bytes = pattern_bytes(BLOB_SIZE, 11);
    let mut writer = store
        .content()
        .writer(&lease, Some((Digest::of_bytes(&bytes), bytes.len() as u64)))
        .unwrap();
    writer.write_all(&bytes[..BLOB_SIZE / 2]).unwrap();
    writer.flush().unwrap();
    println!("HALF");
    std::thread::sleep(Duration::from_secs(120));
}

/// kill -9 at random moments of a workload that ingests, tags, unpacks, mounts, commits and
/// prunes: every time, the store opens, is consistent, and works.
#[test]
fn kill_at_random_points_leaves_a_usable_store() {
    if current_role().is_some() {
        return;
    }
    let root = TestRoot::new();
    let mut pauses = [35u64, 120, 260, 70, 400, 180, 55, 310, 90, 220, 150, 500];
    for (round, pause) in pauses.iter_mut().enumerate() {
        let mut child = RoleChild::spawn(
            "role_churn",
            "churn",
            root.path(),
            &[("KILN_STORE_TEST_SEED", round.to_string())],
        );
        child.wait_for("STARTED");
        std::thread::sleep(Duration::from_millis(*pause));
        child.kill();
        let store = Store::open(root.path()).unwrap();
        eprintln!(
            "round {round}: killed after {pause} ms; {} images, {} snapshots, {} ingest files",
            store.images().unwrap().len(),
            store.snapshotter().list().unwrap().len(),
            fs::read_dir(root.path().join("content/ingest"))
                .unwrap()
                .count()
        );
        check_store_is_consistent(&store);
        // And it works: ingest, tag, unpack, prune.
        let lease = store.lease("after crash").unwrap();
        let bytes = format!("after round {round}");
        let (digest, size) = store
            .content()
            .put_bytes(&lease, bytes.as_bytes(), None)
            .unwrap();
        store
            .put_image(
                &format!("survivor:{round}"),
                &Descriptor::new(media_type::OCI_MANIFEST, digest, size),
            )
            .unwrap();
        drop(lease);
        store.prune(&PruneOptions::default()).unwrap();
        check_store_is_consistent(&store);
    }
    let store = Store::open(root.path()).unwrap();
    assert!(store.images().unwrap().len() >= 12);
}

#[test]
fn role_churn() {
    let Some((role, root)) = current_role() else {
        return;
    };
    assert_eq!(role, "churn");
    let seed: u64 = std::env::var("KILN_STORE_TEST_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(&root).unwrap();
    println!("STARTED");
    let snapshotter = store.snapshotter();
    for step in 0u64.. {
        let lease = store.lease("churn").unwrap();
        let bytes = pattern_bytes(
            200_000 + (step as usize % 7) * 10_000,
            (seed * 31 + step) as u8,
        );
        let digest = Digest::of_bytes(&bytes);
        let mut writer = store
            .content()
            .writer(&lease, Some((digest.clone(), bytes.len() as u64)))
            .unwrap();
        if writer.offset() != 0 {
            writer.restart().unwrap();
        }
        for chunk in bytes.chunks(32_768) {
            writer.write_all(chunk).unwrap();
        }
        let (digest, size) = writer.commit().unwrap();
        store
            .put_image(
                &format!("churn:{seed}-{step}"),
                &Descriptor::new(media_type::OCI_MANIFEST, digest.clone(), size),
            )
            .unwrap();
        let key = format!("layer-{seed}-{step}");
        let base = match snapshotter.prepare_unpack(&lease, &key, None).unwrap() {
            PreparedUnpack::Existing(id) => id,
            PreparedUnpack::New(directory) => {
                for index in 0..20 {
                    fs::write(directory.path().join(format!("f{index}")), &bytes[..1000]).unwrap();
                }
                directory.commit(Some(digest), None).unwrap()
            }
        };
        let active = snapshotter.prepare(&lease, Some(&base)).unwrap();
        fs::write(active.mountpoint().join("run"), "output").unwrap();
        fs::remove_file(active.mountpoint().join("f0")).unwrap();
        snapshotter
            .commit(active, CommitOptions::default())
            .unwrap();
        if step % 3 == 2 {
            store
                .remove_image(&format!("churn:{seed}-{}", step - 1))
                .unwrap();
            store.prune(&PruneOptions::default()).unwrap();
        }
    }
}

#[test]
fn two_processes_ingest_the_same_blob() {
    if current_role().is_some() {
        return;
    }
    let root = TestRoot::new();
    drop(Store::open(root.path()).unwrap());
    let mut first = RoleChild::spawn("role_same_blob", "same-blob", root.path(), &[]);
    let mut second = RoleChild::spawn("role_same_blob", "same-blob", root.path(), &[]);
    assert!(first.wait_success());
    assert!(second.wait_success());
    let store = Store::open(root.path()).unwrap();
    let bytes = pattern_bytes(BLOB_SIZE, 21);
    let digest = Digest::of_bytes(&bytes);
    assert!(store.content().exists(&digest));
    assert_eq!(fs::read(store.content().blob_path(&digest)).unwrap(), bytes);
    assert_eq!(
        fs::read_dir(root.path().join("content/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn role_same_blob() {
    let Some((role, root)) = current_role() else {
        return;
    };
    assert_eq!(role, "same-blob");
    let store = Store::open(&root).unwrap();
    let lease = store.lease("same").unwrap();
    let bytes = pattern_bytes(BLOB_SIZE, 21);
    let mut writer = store
        .content()
        .writer(&lease, Some((Digest::of_bytes(&bytes), bytes.len() as u64)))
        .unwrap();
    let offset = writer.offset() as usize;
    for chunk in bytes[offset..].chunks(256 << 10) {
        writer.write_all(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.commit().unwrap();
}
