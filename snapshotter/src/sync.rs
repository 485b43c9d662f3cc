//! Making committed snapshots durable without making a build wait for the disk.
//!
//! The overlays of build steps are mounted `volatile`, and unpacks write without syncing, so
//! committing a snapshot costs no flush: a non-volatile overlay's unmount syncs the whole
//! upper filesystem, which for a 0.5 GB COPY held the build ~0.5 s. Instead, the commit
//! records the snapshot in [`Table::UnsyncedSnapshots`] with the current boot id, in the
//! same transaction that commits it, and asks a background thread for a `syncfs` of the
//! store's filesystem (after gathering further commits for [`GATHER`]); once that returned,
//! the entries listed before it began are removed. The sync so runs beside the next steps
//! and the layer export. A process that ends first leaves its entries to a later sync of
//! the same boot; its exit never waits for a `syncfs` either, which a child process makes
//! ([`syncfs_in_child`]).
//!
//! A record is only ever durable with its entry (same transaction), so after a machine crash
//! every snapshot whose files may be torn still has an entry of another boot: recovery
//! ([`crate::Store::recover`], run at every open) removes those snapshots, their descendants
//! and the cache records naming them, and the next build runs those steps again. A kiln that
//! was only killed loses nothing: the page cache survives it, and a later sync of the same
//! boot covers its entries.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::error::{Result, StoreError};
use crate::metadata::{Records, Table};
use crate::StoreInner;

/// Requests and completions of the background sync of one store handle.
#[derive(Debug, Default)]
pub(crate) struct SnapshotSyncer {
    state: Mutex<SyncState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Bumped by every request.
    requested: u64,
    /// The request number the last finished sync covered.
    completed: u64,
    /// A sync thread is running.
    running: bool,
    /// Someone waits for the sync: no gathering delay.
    urgent: bool,
}

/// How long the sync thread gathers commits before a `syncfs`: a build committing a step
/// every few milliseconds gets one sync for many of them, not one each (a `syncfs` also
/// flushes the disk's cache and commits the journal). A process that exits within this
/// time leaves its entries to a later sync of the same boot (or, after a crash, to recovery).
/// Two seconds, so that a short build never syncs while it still works: the `syncfs` of a
/// 0.5 GB COPY competed with the export writing that layer's blob, and the process's exit
/// waited for it (big-context's one-file rebuild: 1.40-1.59 s with 250 ms, 1.32-1.38 s with
/// the sync left to later). Nothing waits for these syncs; only a machine crash before one
/// costs anything, and then only rebuilding the steps whose entries were still there.
const GATHER: std::time::Duration = std::time::Duration::from_secs(2);

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once.
pub(crate) fn current_boot() -> &'static str {
    static BOOT: OnceLock<String> = OnceLock::new();
    BOOT.get_or_init(crate::process::boot_id)
}

impl StoreInner {
    /// Asks for a sync covering every snapshot committed so far; returns at once. One
    /// background thread serves all requests, one `syncfs` at a time.
    pub(crate) fn request_snapshot_sync(self: &Arc<Self>) -> u64 {
        let syncer = &self.syncer;
        let mut state = syncer
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.requested += 1;
        let target = state.requested;
        if !state.running {
            let inner = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("kiln-sync".into())
                .spawn(move || inner.sync_loop());
            // Without a thread the entries stay: a later sync, or recovery after a crash,
            // deals with them.
            state.running = spawned.is_ok();
        }
        target
    }

    fn sync_loop(&self) {
        let syncer = &self.syncer;
        loop {
            let target = {
                let mut state = syncer
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if !state.urgent {
                    state = syncer
                        .changed
                        .wait_timeout_while(state, GATHER, |state| !state.urgent)
                        .map(|(state, _)| state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner().0);
                }
                if state.completed >= state.requested {
                    state.running = false;
                    syncer.changed.notify_all();
                    return;
                }
                state.requested
            };
            // A failed sync leaves the entries: the snapshots stay usable in this boot, and
            // are dropped by recovery after a crash.
            let _ = self.sync_snapshots_now();
            let mut state = syncer
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.completed = state.completed.max(target);
            if state.completed >= state.requested {
                state.urgent = false;
            }
            syncer.changed.notify_all();
        }
    }

    /// Waits until a sync that started after this call finished (see
    /// [`crate::Store::sync_snapshots`]).
    pub(crate) fn wait_snapshot_sync(self: &Arc<Self>) {
        let target = self.request_snapshot_sync();
        let syncer = &self.syncer;
        let mut state = syncer
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.urgent = true;
        syncer.changed.notify_all();
        while state.completed < target && state.running {
            state = syncer
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// `syncfs` of the store's filesystem, then forgets this boot's entries listed before
    /// it began. Nothing when there are none.
    fn sync_snapshots_now(&self) -> Result<()> {
        let boot = current_boot();
        let pending: Vec<(String, String)> = self
            .metadata
            .read(|txn| txn.list(Table::UnsyncedSnapshots))?;
        let covered: Vec<String> = pending
            .into_iter()
            .filter(|(_, entry_boot)| entry_boot == boot)
            .map(|(id, _)| id)
            .collect();
        if covered.is_empty() {
            return Ok(());
        }
        let snapshots = &self.layout.snapshots;
        syncfs_in_child(snapshots).map_err(|error| StoreError::io("syncfs", snapshots, error))?;
        self.metadata.write_volatile(|txn| {
            for id in &covered {
                txn.remove(Table::UnsyncedSnapshots, id)?;
            }
            Ok(())
        })
    }
}

/// `syncfs` of the filesystem holding `path`, made by a child process (coreutils' `sync
/// --file-system`) that this thread waits for. A process's exit waits for every syscall its
/// own threads are in, and `syncfs` flushes the whole filesystem, other programs' dirty data
/// included: a build that ended while one ran waited for it, seconds after another engine
/// wrote gigabytes. A child's sync does not hold the exit; its entries are then left to a
/// later sync of the same boot. Without `sync`, the thread makes the call itself.
fn syncfs_in_child(path: &std::path::Path) -> std::io::Result<()> {
    use std::process::{Command, Stdio};
    let child = Command::new("sync")
        .arg("--file-system")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(mut child) => {
            let status = child.wait()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "sync --file-system: {status}"
                )))
            }
        }
        Err(_) => {
            let directory = File::open(path)?;
            rustix::fs::syncfs(&directory).map_err(std::io::Error::from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CacheRecord, PreparedUnpack, SnapshotId, Store};

    fn unpack(
        store: &Store,
        lease: &crate::Lease,
        key: &str,
        parent: Option<&SnapshotId>,
    ) -> SnapshotId {
        match store
            .snapshotter()
            .prepare_unpack(lease, key, parent)
            .expect("prepare")
        {
            PreparedUnpack::Existing(id) => id,
            PreparedUnpack::New(directory) => {
                std::fs::write(directory.path().join("file"), key).expect("write");
                directory.commit(None, None).expect("commit")
            }
        }
    }

    fn unsynced(store: &Store) -> Vec<(String, String)> {
        store
            .inner
            .metadata
            .read(|txn| txn.list(Table::UnsyncedSnapshots))
            .expect("list")
    }

    #[test]
    fn a_commit_is_unsynced_until_a_sync_covers_it() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(root.path()).expect("open");
        let lease = store.lease("test").expect("lease");
        let id = unpack(&store, &lease, "layer-a", None);
        store.sync_snapshots();
        assert!(unsynced(&store).is_empty(), "{:?}", unsynced(&store));
        // synced, then "rebooted": nothing is lost
        let reopened = Store::open(root.path()).expect("reopen");
        assert_eq!(
            reopened.snapshotter().lookup("layer-a").expect("lookup"),
            Some(id)
        );
    }

    #[test]
    fn recovery_after_a_crash_removes_torn_snapshots_their_children_and_cache_records() {
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(root.path()).expect("open");
        let lease = store.lease("test").expect("lease");
        let kept = unpack(&store, &lease, "synced", None);
        store.sync_snapshots();
        let parent = unpack(&store, &lease, "torn-parent", Some(&kept));
        let child = unpack(&store, &lease, "torn-child", Some(&parent));
        store
            .put_cache_record(
                "step",
                &CacheRecord {
                    snapshots: vec![child.clone()],
                    blobs: Vec::new(),
                    cache_mounts: Vec::new(),
                    data: serde_json::Value::Null,
                    created_unix: 0,
                },
            )
            .expect("cache record");
        // Let the background syncs finish, then pretend the parent's never ran and the
        // machine went down (its entry is of another boot); the child was synced, but it
        // is stacked on the torn parent.
        store.sync_snapshots();
        store
            .inner
            .metadata
            .write(|txn| txn.put(Table::UnsyncedSnapshots, parent.as_str(), "an-earlier-boot"))
            .expect("entry");
        let parent_entry = parent;
        drop(lease);
        drop(store);
        let reopened = Store::open(root.path()).expect("reopen");
        let snapshotter = reopened.snapshotter();
        assert_eq!(snapshotter.lookup("torn-parent").expect("lookup"), None);
        assert_eq!(snapshotter.lookup("torn-child").expect("lookup"), None);
        assert_eq!(
            snapshotter.lookup("synced").expect("lookup"),
            Some(kept.clone())
        );
        assert!(snapshotter.info(&parent_entry).is_err());
        assert_eq!(reopened.cache_record("step").expect("cache record"), None);
        assert!(unsynced(&reopened).is_empty());
        assert!(!root
            .path()
            .join("snapshots")
            .join(parent_entry.as_str())
            .exists());
        // the store is usable: the same layer unpacks again
        let lease = reopened.lease("again").expect("lease");
        let again = unpack(&reopened, &lease, "torn-parent", Some(&kept));
        assert_ne!(again, parent_entry);
    }
}
