//! Snapshots: directories under `snapshots/<id>/` that are either committed (immutable, a
//! valid overlay lower) or active (being unpacked into, or mounted as an overlay with a fresh
//! upper). Committed snapshots are found by key, usually the OCI chain id of a layer stack.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_types::Digest;

use crate::error::{Result, StoreError};
use crate::fsutil::{create_dir_all, now_unix};
use crate::ids::SnapshotId;
use crate::lease::{add_to_lease, Lease};
use crate::metadata::{Records, Table};
use crate::mount::{mount_overlay, unmount, OverlaySpec, MAX_OVERLAY_LAYERS};
use crate::StoreInner;

/// What state a snapshot is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SnapshotKind {
    /// Being written (an unpack, or a mounted overlay's upper); lives only while leased.
    Active,
    /// A read-only overlay of a committed snapshot; lives only while leased.
    View,
    /// Immutable; `fs/` is a valid overlay lower.
    Committed,
}

/// The stored form of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotRecord {
    pub id: SnapshotId,
    pub kind: SnapshotKind,
    /// The snapshot this one is stacked on (for a view: the snapshot viewed).
    pub parent: Option<SnapshotId>,
    /// The key it is found by once committed: a chain id (`sha256:...`) or a caller's key.
    #[serde(default)]
    pub key: Option<String>,
    /// The digest of the uncompressed layer tar this snapshot is the result of, if known.
    #[serde(default)]
    pub diff_id: Option<Digest>,
    /// Bytes of the layer, if known.
    #[serde(default)]
    pub size: Option<u64>,
    pub created_unix: u64,
}

/// Options for turning an active snapshot into a committed one.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Key to find the snapshot by (a chain id or a cache key). If a committed snapshot
    /// already has this key, that one is kept and returned and the new one is discarded.
    pub key: Option<String>,
    pub diff_id: Option<Digest>,
    pub size: Option<u64>,
}

/// The snapshots of one store. Cheap to clone.
#[derive(Clone)]
pub struct Snapshotter {
    pub(crate) inner: Arc<StoreInner>,
}

impl std::fmt::Debug for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshotter")
            .field("root", &self.inner.layout.root)
            .finish()
    }
}

/// The result of [`Snapshotter::prepare_unpack`].
#[derive(Debug)]
pub enum PreparedUnpack {
    /// A committed snapshot with this key exists already (now added to the lease).
    Existing(SnapshotId),
    /// Unpack into this directory, then commit it.
    New(UnpackDir),
}

impl Snapshotter {
    /// The directory of a snapshot's files (`snapshots/<id>/fs`): the unpacked layer, or the
    /// overlay upper with its whiteouts (char 0/0) and opaque xattrs as overlayfs wrote them.
    pub fn fs_dir(&self, id: &SnapshotId) -> PathBuf {
        self.inner.layout.snapshot_dir(id).join("fs")
    }

    /// A snapshot's record.
    pub fn info(&self, id: &SnapshotId) -> Result<SnapshotRecord> {
        self.inner
            .metadata
            .read(|txn| txn.get(Table::Snapshots, id.as_str()))?
            .ok_or_else(|| StoreError::SnapshotNotFound { id: id.to_string() })
    }

    /// Every snapshot record.
    pub fn list(&self) -> Result<Vec<SnapshotRecord>> {
        let records = self
            .inner
            .metadata
            .read(|txn| txn.list::<SnapshotRecord>(Table::Snapshots))?;
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }

    /// The committed snapshot with this key (e.g. a chain id), if any.
    pub fn lookup(&self, key: &str) -> Result<Option<SnapshotId>> {
        self.inner.metadata.read(|txn| {
            let Some(id) = txn.get::<SnapshotId>(Table::SnapshotKeys, key)? else {
                return Ok(None);
            };
            let record = txn.get::<SnapshotRecord>(Table::Snapshots, id.as_str())?;
            Ok(record
                .filter(|record| record.kind == SnapshotKind::Committed)
                .map(|record| record.id))
        })
    }

    /// Makes a committed snapshot findable under another key too (a built layer under its
    /// image's chain id, so `resolve_layers` finds it). A key that already names a committed
    /// snapshot is left as it is; returns the snapshot the key names afterwards.
    pub fn add_key(&self, id: &SnapshotId, key: &str) -> Result<SnapshotId> {
        self.inner.metadata.write_volatile(|txn| {
            if let Some(existing) = committed_by_key(txn, key)? {
                return Ok(existing);
            }
            let record: SnapshotRecord = txn
                .get(Table::Snapshots, id.as_str())?
                .ok_or_else(|| StoreError::SnapshotNotFound { id: id.to_string() })?;
            if record.kind != SnapshotKind::Committed {
                return Err(StoreError::SnapshotNotCommitted { id: id.to_string() });
            }
            txn.put(Table::SnapshotKeys, key, id)?;
            Ok(id.clone())
        })
    }

    /// A committed snapshot and all its ancestors, topmost first: the overlay lower order.
    pub fn chain(&self, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
        self.inner.metadata.read(|txn| committed_chain(txn, id))
    }

    /// The `fs` directories of [`chain`](Self::chain), topmost first.
    pub fn lower_dirs(&self, id: &SnapshotId) -> Result<Vec<PathBuf>> {
        Ok(self.chain(id)?.iter().map(|id| self.fs_dir(id)).collect())
    }

    /// Makes an empty directory to unpack the layer with key `key` (its chain id) into, on
    /// top of `parent`. If the key is committed already, nothing is to be done.
    pub fn prepare_unpack(
        &self,
        lease: &Lease,
        key: &str,
        parent: Option<&SnapshotId>,
    ) -> Result<PreparedUnpack> {
        let existing = self.inner.metadata.write_volatile(|txn| {
            if let Some(id) = committed_by_key(txn, key)? {
                add_to_lease(txn, &lease.id, |record| {
                    record.snapshots.insert(id.clone());
                })?;
                return Ok(Some(id));
            }
            Ok(None)
        })?;
        if let Some(id) = existing {
            return Ok(PreparedUnpack::Existing(id));
        }
        let (id, _) = self.create_record(lease, SnapshotKind::Active, parent)?;
        let guard = RemoveOnDrop {
            snapshotter: self.clone(),
            id: id.clone(),
            armed: true,
        };
        create_dir_all(&self.fs_dir(&id))?;
        Ok(PreparedUnpack::New(UnpackDir {
            key: key.to_string(),
            parent: parent.cloned(),
            path: self.fs_dir(&id),
            guard,
        }))
    }

    /// Makes an active snapshot on top of `parent` (or of nothing) and mounts it: an overlay
    /// with the parent's chain as lowers and a fresh upper and work dir, at
    /// [`ActiveSnapshot::mountpoint`]. Everything is undone if the snapshot is dropped
    /// without [`commit`](Self::commit).
    ///
    /// The overlay is `volatile`: nothing inside syncs to disk and its unmount does not wait
    /// for the disk; [`commit`](Self::commit) records the snapshot as not yet synced and a
    /// background `syncfs` follows (see [`crate::Store::sync_snapshots`]).
    pub fn prepare(&self, lease: &Lease, parent: Option<&SnapshotId>) -> Result<ActiveSnapshot> {
        self.prepare_with(lease, parent, false)
    }

    /// [`prepare`](Self::prepare) for a snapshot that will be removed, never committed (a
    /// `kiln run --rm` container). Committing it is refused.
    pub fn prepare_throwaway(
        &self,
        lease: &Lease,
        parent: Option<&SnapshotId>,
    ) -> Result<ActiveSnapshot> {
        self.prepare_with(lease, parent, true)
    }

    fn prepare_with(
        &self,
        lease: &Lease,
        parent: Option<&SnapshotId>,
        throwaway: bool,
    ) -> Result<ActiveSnapshot> {
        let (id, chain) = self.create_record(lease, SnapshotKind::Active, parent)?;
        let mut active = ActiveSnapshot {
            guard: RemoveOnDrop {
                snapshotter: self.clone(),
                id: id.clone(),
                armed: true,
            },
            parent: parent.cloned(),
            lowers: chain.iter().map(|id| self.fs_dir(id)).collect(),
            directory: self.inner.layout.snapshot_dir(&id),
            throwaway,
        };
        let empty = active.directory.join("empty");
        for directory in [active.upper_dir(), active.work_dir(), active.mountpoint()] {
            create_dir_all(&directory)?;
        }
        let mut lowers = active.lowers.clone();
        if lowers.is_empty() {
            create_dir_all(&empty)?;
            lowers.push(empty);
        }
        let upper = active.upper_dir();
        let work = active.work_dir();
        mount_overlay(
            &active.mountpoint(),
            &OverlaySpec {
                lowers: &lowers,
                upper_and_work: Some((&upper, &work)),
                base: &self.inner.layout.snapshots,
                volatile: true,
            },
            self.inner.options.mount_method,
        )?;
        active.lowers = lowers;
        Ok(active)
    }

    /// Turns an active snapshot into a committed one: unmounts it and keeps its upper as
    /// the new snapshot's `fs`. Returns the committed id: the new one, or the one that
    /// already had `options.key`.
    pub fn commit(&self, active: ActiveSnapshot, options: CommitOptions) -> Result<SnapshotId> {
        if active.throwaway {
            // made to be thrown away: it must not become a layer
            return Err(StoreError::SnapshotNotCommitted {
                id: active.id().to_string(),
            });
        }
        // Strict unmount: a busy mount means a process still writes into the upper.
        unmount(&active.mountpoint(), false)?;
        for directory in [
            active.work_dir(),
            active.mountpoint(),
            active.directory.join("empty"),
        ] {
            crate::fsutil::remove_path(&directory)?;
        }
        self.commit_record(active.guard, options)
    }

    /// Unmounts and deletes an active snapshot.
    pub fn remove(&self, active: ActiveSnapshot) -> Result<()> {
        let mut active = active;
        active.guard.armed = false;
        self.destroy(&active.guard.id)
    }

    /// Mounts a committed snapshot read-only, for reading its full tree (a COPY source, an
    /// export). Unmounted and deleted when the view is dropped.
    pub fn view(&self, lease: &Lease, id: &SnapshotId) -> Result<SnapshotView> {
        let (view_id, _) = self.create_record(lease, SnapshotKind::View, Some(id))?;
        let guard = RemoveOnDrop {
            snapshotter: self.clone(),
            id: view_id.clone(),
            armed: true,
        };
        let directory = self.inner.layout.snapshot_dir(&view_id);
        let mountpoint = directory.join("merged");
        create_dir_all(&mountpoint)?;
        let mut lowers = self.lower_dirs(id)?;
        if lowers.len() == 1 {
            // overlayfs wants two lowers when there is no upper.
            let empty = directory.join("empty");
            create_dir_all(&empty)?;
            lowers.push(empty);
        }
        mount_overlay(
            &mountpoint,
            &OverlaySpec {
                lowers: &lowers,
                upper_and_work: None,
                base: &self.inner.layout.snapshots,
                volatile: false,
            },
            self.inner.options.mount_method,
        )?;
        Ok(SnapshotView {
            guard,
            snapshot: id.clone(),
            mountpoint,
        })
    }

    /// Records a new active snapshot (and leases it) before any directory exists, so that a
    /// snapshot directory without a record is always garbage. Returns its id and the chain
    /// of its parent.
    fn create_record(
        &self,
        lease: &Lease,
        kind: SnapshotKind,
        parent: Option<&SnapshotId>,
    ) -> Result<(SnapshotId, Vec<SnapshotId>)> {
        self.inner.metadata.write_volatile(|txn| {
            let chain = match parent {
                Some(parent) => committed_chain(txn, parent)?,
                None => Vec::new(),
            };
            if chain.len() >= MAX_OVERLAY_LAYERS {
                return Err(StoreError::ChainTooDeep {
                    layers: chain.len() + 1,
                    limit: MAX_OVERLAY_LAYERS,
                });
            }
            let id = loop {
                let candidate = SnapshotId::random();
                if txn
                    .get::<SnapshotRecord>(Table::Snapshots, candidate.as_str())?
                    .is_none()
                    && !self.inner.layout.snapshot_dir(&candidate).exists()
                {
                    break candidate;
                }
            };
            let record = SnapshotRecord {
                id: id.clone(),
                kind,
                parent: parent.cloned(),
                key: None,
                diff_id: None,
                size: None,
                created_unix: now_unix(),
            };
            txn.put(Table::Snapshots, id.as_str(), &record)?;
            add_to_lease(txn, &lease.id, |lease_record| {
                lease_record.snapshots.insert(id.clone());
            })?;
            Ok((id, chain))
        })
    }

    fn commit_record(&self, mut guard: RemoveOnDrop, options: CommitOptions) -> Result<SnapshotId> {
        let id = guard.id.clone();
        let winner = self.inner.metadata.write_volatile(|txn| {
            let mut record: SnapshotRecord = txn
                .get(Table::Snapshots, id.as_str())?
                .ok_or_else(|| StoreError::SnapshotNotFound { id: id.to_string() })?;
            if let Some(key) = &options.key {
                if let Some(existing) = committed_by_key(txn, key)? {
                    // Someone committed the same key first: use theirs.
                    let lease_ids: Vec<(String, crate::lease::LeaseRecord)> =
                        txn.list(Table::Leases)?;
                    for (lease_id, lease_record) in lease_ids {
                        if lease_record.snapshots.contains(&id) {
                            add_to_lease(txn, &lease_id, |record| {
                                record.snapshots.remove(&id);
                                record.snapshots.insert(existing.clone());
                            })?;
                        }
                    }
                    txn.remove(Table::Snapshots, id.as_str())?;
                    return Ok(existing);
                }
                txn.put(Table::SnapshotKeys, key, &id)?;
            }
            record.kind = SnapshotKind::Committed;
            record.key = options.key.clone();
            record.diff_id = options.diff_id.clone();
            record.size = options.size;
            txn.put(Table::Snapshots, id.as_str(), &record)?;
            // Its files were written without a sync (a volatile overlay, an unpack): the
            // record is never durable without this entry, which the sync below removes.
            txn.put(
                Table::UnsyncedSnapshots,
                id.as_str(),
                crate::sync::current_boot(),
            )?;
            Ok(id.clone())
        })?;
        guard.armed = false;
        if winner == id {
            self.inner.request_snapshot_sync();
        }
        if winner != id {
            self.inner.trash(&self.inner.layout.snapshot_dir(&id))?;
        }
        Ok(winner)
    }

    /// Unmounts, forgets and deletes a non-committed snapshot.
    fn destroy(&self, id: &SnapshotId) -> Result<()> {
        let directory = self.inner.layout.snapshot_dir(id);
        unmount(&directory.join("merged"), true)?;
        self.inner.metadata.write_volatile(|txn| {
            let record = txn.get::<SnapshotRecord>(Table::Snapshots, id.as_str())?;
            if record.is_some_and(|record| record.kind != SnapshotKind::Committed) {
                txn.remove(Table::Snapshots, id.as_str())?;
            }
            Ok(())
        })?;
        self.inner.trash(&directory)
    }
}

/// The committed snapshot with `key`, if any.
fn committed_by_key(txn: &impl Records, key: &str) -> Result<Option<SnapshotId>> {
    let Some(id) = txn.get::<SnapshotId>(Table::SnapshotKeys, key)? else {
        return Ok(None);
    };
    let record = txn.get::<SnapshotRecord>(Table::Snapshots, id.as_str())?;
    Ok(record
        .filter(|record| record.kind == SnapshotKind::Committed)
        .map(|record| record.id))
}

/// `id` and its ancestors, topmost first; all must be committed.
pub(crate) fn committed_chain(txn: &impl Records, id: &SnapshotId) -> Result<Vec<SnapshotId>> {
    let mut chain = Vec::new();
    let mut next = Some(id.clone());
    while let Some(current) = next {
        if chain.len() > MAX_OVERLAY_LAYERS {
            return Err(StoreError::ChainTooDeep {
                layers: chain.len(),
                limit: MAX_OVERLAY_LAYERS,
            });
        }
        let record: SnapshotRecord =
            txn.get(Table::Snapshots, current.as_str())?
                .ok_or_else(|| StoreError::SnapshotNotFound {
                    id: current.to_string(),
                })?;
        if record.kind != SnapshotKind::Committed {
            return Err(StoreError::SnapshotNotCommitted {
                id: current.to_string(),
            });
        }
        next = record.parent.clone();
        chain.push(current);
    }
    Ok(chain)
}

/// Deletes a non-committed snapshot when dropped, unless disarmed.
struct RemoveOnDrop {
    snapshotter: Snapshotter,
    id: SnapshotId,
    armed: bool,
}

impl std::fmt::Debug for RemoveOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoveOnDrop")
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if self.armed {
            // On failure the leftovers belong to a lease that dies with this process, and
            // the next prune removes them.
            let _ = self.snapshotter.destroy(&self.id);
        }
    }
}

/// A directory to unpack one layer into (see [`Snapshotter::prepare_unpack`]). Deleted if
/// dropped without [`commit`](UnpackDir::commit).
#[derive(Debug)]
pub struct UnpackDir {
    key: String,
    parent: Option<SnapshotId>,
    path: PathBuf,
    guard: RemoveOnDrop,
}

impl UnpackDir {
    /// The snapshot id this unpack will have.
    pub fn id(&self) -> &SnapshotId {
        &self.guard.id
    }

    /// The directory to extract the layer into.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The key (chain id) it will be committed under.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn parent(&self) -> Option<&SnapshotId> {
        self.parent.as_ref()
    }

    /// Commits the unpacked directory under its key. If another unpack of the same key
    /// committed first, that snapshot is returned and this directory deleted.
    pub fn commit(self, diff_id: Option<Digest>, size: Option<u64>) -> Result<SnapshotId> {
        let snapshotter = self.guard.snapshotter.clone();
        let options = CommitOptions {
            key: Some(self.key.clone()),
            diff_id,
            size,
        };
        snapshotter.commit_record(self.guard, options)
    }
}

/// A mounted, writable snapshot (see [`Snapshotter::prepare`]). Dropping it unmounts it and
/// deletes it.
#[derive(Debug)]
pub struct ActiveSnapshot {
    guard: RemoveOnDrop,
    parent: Option<SnapshotId>,
    /// Absolute lower dirs as mounted, topmost first.
    lowers: Vec<PathBuf>,
    directory: PathBuf,
    /// Made by [`Snapshotter::prepare_throwaway`]: volatile, never committed.
    throwaway: bool,
}

impl ActiveSnapshot {
    pub fn id(&self) -> &SnapshotId {
        &self.guard.id
    }

    pub fn parent(&self) -> Option<&SnapshotId> {
        self.parent.as_ref()
    }

    /// Where the overlay is mounted: the root filesystem to run in.
    pub fn mountpoint(&self) -> PathBuf {
        self.directory.join("merged")
    }

    /// The overlay upper: what the diff walks (whiteouts are char 0/0 devices, opaque dirs
    /// carry `trusted.overlay.opaque=y`).
    pub fn upper_dir(&self) -> PathBuf {
        self.directory.join("fs")
    }

    pub fn work_dir(&self) -> PathBuf {
        self.directory.join("work")
    }

    /// The lower directories as mounted, topmost first (for a sandbox that mounts the
    /// overlay itself in its own namespace).
    pub fn lower_dirs(&self) -> &[PathBuf] {
        &self.lowers
    }
}

/// A read-only mount of a committed snapshot; unmounted and deleted on drop.
#[derive(Debug)]
pub struct SnapshotView {
    guard: RemoveOnDrop,
    snapshot: SnapshotId,
    mountpoint: PathBuf,
}

impl SnapshotView {
    /// The snapshot viewed.
    pub fn snapshot(&self) -> &SnapshotId {
        &self.snapshot
    }

    /// The view's own id (its directory under `snapshots/`).
    pub fn id(&self) -> &SnapshotId {
        &self.guard.id
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}
