//! Leases: records that keep blobs, snapshots and cache mounts alive while an operation of a
//! running process uses them. A lease whose process has died is stale and protects nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use kiln_types::Digest;

use crate::error::Result;
use crate::ids::{random_hex, validate_cache_mount_id, SnapshotId};
use crate::metadata::{Records, Table, WriteTxn};
use crate::process::ProcessIdentity;
use crate::StoreInner;

/// The stored form of a lease.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LeaseRecord {
    /// The process holding the lease.
    pub owner: ProcessIdentity,
    pub created_unix: u64,
    /// What the lease is for, for `kiln` diagnostics.
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub blobs: BTreeSet<Digest>,
    #[serde(default)]
    pub snapshots: BTreeSet<SnapshotId>,
    #[serde(default)]
    pub cache_mounts: BTreeSet<String>,
}

impl LeaseRecord {
    /// Whether the lease still protects what it names.
    pub fn is_live(&self) -> bool {
        self.owner.is_alive()
    }
}

/// A lease held by this process. Everything added to it survives `prune` (in any process)
/// until the lease is dropped or this process dies. Share it between tasks with an `Arc`.
pub struct Lease {
    pub(crate) inner: Arc<StoreInner>,
    pub(crate) id: String,
    /// What this process has already added to the record (`b:`, `s:`, `c:` + id): adding it
    /// again is a no-op, so it writes nothing. A cached rebuild protects the same snapshots
    /// and blobs many times; each write rewrote the whole record.
    added: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Lease {
    pub(crate) fn create(inner: Arc<StoreInner>, description: &str) -> Result<Lease> {
        let id = random_hex(8);
        let record = LeaseRecord {
            owner: ProcessIdentity::current(),
            created_unix: crate::fsutil::now_unix(),
            description: description.to_string(),
            blobs: BTreeSet::new(),
            snapshots: BTreeSet::new(),
            cache_mounts: BTreeSet::new(),
        };
        inner
            .metadata
            .write_volatile(|txn| txn.put(Table::Leases, &id, &record))?;
        Ok(Lease {
            inner,
            id,
            added: std::sync::Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// The lease's id (its key in the `leases` table).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Protects a blob (present or about to be written).
    pub fn protect_blob(&self, digest: &Digest) -> Result<()> {
        self.protect_many(&[], std::slice::from_ref(digest))
    }

    /// Protects a snapshot and, through it, its parents.
    pub fn protect_snapshot(&self, id: &SnapshotId) -> Result<()> {
        self.protect_many(std::slice::from_ref(id), &[])
    }

    /// Protects a cache mount directory.
    pub fn protect_cache_mount(&self, id: &str) -> Result<()> {
        validate_cache_mount_id(id)?;
        self.add_once(vec![format!("c:{id}")], |record| {
            record.cache_mounts.insert(id.to_string());
        })
    }

    /// [`protect_snapshot`](Self::protect_snapshot) and [`protect_blob`](Self::protect_blob)
    /// for many at once, in one write: an image's layers are protected together rather than
    /// rewriting the record once per layer and blob.
    pub fn protect_many(&self, snapshots: &[SnapshotId], blobs: &[Digest]) -> Result<()> {
        let items = snapshots
            .iter()
            .map(|id| format!("s:{id}"))
            .chain(blobs.iter().map(|digest| format!("b:{digest}")))
            .collect();
        self.add_once(items, |record| {
            record.snapshots.extend(snapshots.iter().cloned());
            record.blobs.extend(blobs.iter().cloned());
        })
    }

    /// Adds items to the record unless this process already has added them all (the record
    /// only grows while the lease lives, so what was committed once stays). `change` adds
    /// every item; those added before are already there.
    fn add_once(&self, items: Vec<String>, change: impl FnOnce(&mut LeaseRecord)) -> Result<()> {
        let lock = || {
            self.added
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        let new: Vec<String> = {
            let added = lock();
            items
                .into_iter()
                .filter(|item| !added.contains(item))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        self.inner
            .metadata
            .write_volatile(|txn| add_to_lease(txn, &self.id, change))?;
        lock().extend(new);
        Ok(())
    }

    /// Releases the lease now, reporting a failure (drop releases too, silently).
    pub fn release(self) -> Result<()> {
        let result = self.remove_record();
        std::mem::forget(self);
        result
    }

    fn remove_record(&self) -> Result<()> {
        self.inner
            .metadata
            .write_volatile(|txn| txn.remove(Table::Leases, &self.id).map(|_| ()))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // A failure leaves a record that turns stale when this process exits.
        let _ = self.remove_record();
    }
}

/// Changes a lease record inside a transaction. A record that vanished (a prune that judged
/// this process dead, which cannot happen while it runs, or a hand edit) is recreated.
pub(crate) fn add_to_lease(
    txn: &mut WriteTxn<'_>,
    lease_id: &str,
    change: impl FnOnce(&mut LeaseRecord),
) -> Result<()> {
    let mut record = txn
        .get::<LeaseRecord>(Table::Leases, lease_id)?
        .unwrap_or_else(|| LeaseRecord {
            owner: ProcessIdentity::current(),
            created_unix: crate::fsutil::now_unix(),
            description: String::new(),
            blobs: BTreeSet::new(),
            snapshots: BTreeSet::new(),
            cache_mounts: BTreeSet::new(),
        });
    change(&mut record);
    txn.put(Table::Leases, lease_id, &record)
}
