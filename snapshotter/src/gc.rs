//! Garbage collection and crash recovery: what no image, cache record or live lease
//! references goes; leftovers of dead processes (ingest files, active snapshots, mounts,
//! stale leases) are cleaned.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use kiln_types::{media_type, Digest, ImageIndex, ImageManifest};
use rustix::fs::{flock, FlockOperation};

use crate::content::same_file;
use crate::error::{Result, StoreError};
use crate::ids::{random_hex, SnapshotId};
use crate::images::{chain_ids, CacheMountRecord, CacheRecord, ImageRecord, MAX_DOCUMENT_SIZE};
use crate::lease::LeaseRecord;
use crate::metadata::{Records, Table, WriteTxn};
use crate::mount::{mount_points_under, unmount};
use crate::snapshot::{SnapshotKind, SnapshotRecord};
use crate::{Store, StoreInner};

/// What [`Store::prune`] removes besides unreferenced blobs and snapshots.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PruneOptions {
    /// Remove cache mount directories no live lease or cache record names (default true,
    /// as `docker builder prune` does).
    pub cache_mounts: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions { cache_mounts: true }
    }
}

/// What a prune or a recovery removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs_removed: usize,
    pub snapshots_removed: usize,
    pub cache_mounts_removed: usize,
    pub ingest_files_removed: usize,
    pub stale_leases_removed: usize,
    pub mounts_removed: usize,
    /// Committed snapshots whose files were not known to be on disk when the machine went
    /// down (an entry of another boot in the unsynced table), with their descendants.
    pub torn_snapshots_removed: usize,
    /// Bytes on disk freed (blobs, snapshot and cache mount directories, ingest files).
    pub bytes_freed: u64,
}

impl Store {
    /// Removes every blob, snapshot and cache mount that no image, no cache record and no
    /// live lease (of any process) references, and the leftovers of dead processes.
    pub fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        collect(&self.inner, Some(options))
    }

    /// Crash recovery, run by [`Store::open`]: forgets leases of dead processes, unmounts and
    /// deletes their active snapshots and views, and empties the trash. Keeps resumable
    /// ingest files and everything committed.
    pub fn recover(&self) -> Result<PruneReport> {
        collect(&self.inner, None)
    }
}

/// What the locked phase decided; the slow deletions happen after the lock is released.
struct Decision {
    report: PruneReport,
    directories_to_trash: Vec<PathBuf>,
}

fn collect(inner: &StoreInner, prune: Option<&PruneOptions>) -> Result<PruneReport> {
    let decision = inner.metadata.write(|txn| decide(inner, txn, prune))?;
    let mut report = decision.report;
    for directory in decision.directories_to_trash {
        report.bytes_freed += crate::fsutil::disk_usage(&directory);
        inner.trash(&directory)?;
    }
    inner.empty_trash()?;
    if prune.is_some() {
        let (files, bytes) = remove_stale_ingest(&inner.layout.ingest)?;
        report.ingest_files_removed = files;
        report.bytes_freed += bytes;
    }
    Ok(report)
}

fn decide(
    inner: &StoreInner,
    txn: &mut WriteTxn<'_>,
    prune: Option<&PruneOptions>,
) -> Result<Decision> {
    let layout = &inner.layout;
    let mut report = PruneReport::default();
    let mut directories_to_trash = Vec::new();

    // Leases: the live ones are roots; the dead ones go.
    let mut kept_blobs: BTreeSet<Digest> = BTreeSet::new();
    let mut kept_snapshots: BTreeSet<SnapshotId> = BTreeSet::new();
    let mut kept_cache_mounts: BTreeSet<String> = BTreeSet::new();
    for (lease_id, lease) in txn.list::<LeaseRecord>(Table::Leases)? {
        if lease.is_live() {
            kept_blobs.extend(lease.blobs);
            kept_snapshots.extend(lease.snapshots);
            kept_cache_mounts.extend(lease.cache_mounts);
        } else {
            txn.remove(Table::Leases, &lease_id)?;
            report.stale_leases_removed += 1;
        }
    }

    let snapshots: BTreeMap<SnapshotId, SnapshotRecord> = txn
        .list::<SnapshotRecord>(Table::Snapshots)?
        .into_iter()
        .map(|(_, record)| (record.id.clone(), record))
        .collect();
    let keys: Vec<(String, SnapshotId)> = txn.list(Table::SnapshotKeys)?;

    if prune.is_some() {
        // Images keep their manifests, configs, layers and unpacked snapshots.
        let mut chain_keys: BTreeSet<String> = BTreeSet::new();
        for (_, image) in txn.list::<ImageRecord>(Table::Images)? {
            mark_document(
                inner,
                &image.target.media_type,
                &image.target.digest,
                0,
                &mut kept_blobs,
                &mut chain_keys,
            );
        }
        for (key, id) in &keys {
            if chain_keys.contains(key) {
                kept_snapshots.insert(id.clone());
            }
        }
        for (_, record) in txn.list::<CacheRecord>(Table::CacheRecords)? {
            kept_blobs.extend(record.blobs);
            kept_snapshots.extend(record.snapshots);
            kept_cache_mounts.extend(record.cache_mounts);
        }
    } else {
        // Recovery touches only what is not committed.
        kept_snapshots.extend(
            snapshots
                .values()
                .filter(|record| record.kind == SnapshotKind::Committed)
                .map(|record| record.id.clone()),
        );
    }

    // A kept snapshot keeps its ancestors.
    let mut pending: Vec<SnapshotId> = kept_snapshots.iter().cloned().collect();
    while let Some(id) = pending.pop() {
        if let Some(parent) = snapshots.get(&id).and_then(|record| record.parent.clone()) {
            if kept_snapshots.insert(parent.clone()) {
                pending.push(parent);
            }
        }
    }

    // Snapshots that may be torn by a machine crash go, whatever keeps them.
    let torn = torn_snapshots(txn, &snapshots)?;
    if !torn.is_empty() {
        kept_snapshots.retain(|id| !torn.contains(id));
        report.torn_snapshots_removed = torn.len();
        for (key, record) in txn.list::<CacheRecord>(Table::CacheRecords)? {
            if record.snapshots.iter().any(|id| torn.contains(id)) {
                txn.remove(Table::CacheRecords, &key)?;
            }
        }
    }

    // Leaked mounts under snapshots/ of snapshots that are not kept.
    for mount_point in mount_points_under(&layout.snapshots) {
        let owner = mount_point
            .strip_prefix(&layout.snapshots)
            .ok()
            .and_then(|relative| relative.components().next())
            .and_then(|first| first.as_os_str().to_str())
            .and_then(|name| SnapshotId::parse(name).ok());
        let keep = owner.is_some_and(|id| kept_snapshots.contains(&id));
        if !keep {
            unmount(&mount_point, true)?;
            report.mounts_removed += 1;
        }
    }

    // Snapshot records and their key entries.
    for (id, record) in &snapshots {
        if !kept_snapshots.contains(id) {
            txn.remove(Table::Snapshots, id.as_str())?;
            directories_to_trash.push(layout.snapshot_dir(id));
            if record.kind == SnapshotKind::Committed || prune.is_some() {
                report.snapshots_removed += 1;
            }
        }
    }
    for (key, id) in &keys {
        let target_kept = snapshots.contains_key(id) && kept_snapshots.contains(id);
        if !target_kept {
            txn.remove(Table::SnapshotKeys, key)?;
        }
    }
    // Layer blob records go with their snapshot (the blobs themselves are kept or not by
    // images, cache records and leases).
    for (key, _) in txn.list::<serde_json::Value>(Table::LayerBlobs)? {
        let kept = crate::layer_blobs::layer_blob_snapshot(&key)
            .is_some_and(|id| snapshots.contains_key(&id) && kept_snapshots.contains(&id));
        if !kept {
            txn.remove(Table::LayerBlobs, &key)?;
        }
    }
    // Directories without a record (records are always written before directories).
    for name in list_names(&layout.snapshots)? {
        let has_record = SnapshotId::parse(&name)
            .ok()
            .is_some_and(|id| snapshots.contains_key(&id) && kept_snapshots.contains(&id));
        let path = layout.snapshots.join(&name);
        if !has_record && !directories_to_trash.contains(&path) {
            directories_to_trash.push(path);
        }
    }

    let Some(options) = prune else {
        return Ok(Decision {
            report,
            directories_to_trash,
        });
    };

    // Blobs: unlinked under the lock, so a writer committing the same digest right now
    // either sees it gone (and renames its own) or finds it protected.
    for name in list_names(&layout.blobs)? {
        let keep = Digest::parse(&format!("sha256:{name}"))
            .ok()
            .is_some_and(|digest| kept_blobs.contains(&digest));
        if !keep {
            let path = layout.blobs.join(&name);
            let size = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += size;
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(StoreError::io("remove", &path, error)),
            }
        }
    }

    if options.cache_mounts {
        for (id, _) in txn.list::<CacheMountRecord>(Table::CacheMounts)? {
            if !kept_cache_mounts.contains(&id) {
                txn.remove(Table::CacheMounts, &id)?;
            }
        }
        for name in list_names(&layout.cache_mounts)? {
            if !kept_cache_mounts.contains(&name) {
                directories_to_trash.push(layout.cache_mounts.join(&name));
                report.cache_mounts_removed += 1;
            }
        }
    }

    Ok(Decision {
        report,
        directories_to_trash,
    })
}

/// The snapshots listed as unsynced by another boot (their files may not have reached the
/// disk before the machine went down) and every snapshot stacked on one of them. Entries of
/// other boots, and of snapshots that no longer exist, are removed from the table.
fn torn_snapshots(
    txn: &mut WriteTxn<'_>,
    snapshots: &BTreeMap<SnapshotId, SnapshotRecord>,
) -> Result<BTreeSet<SnapshotId>> {
    let boot = crate::sync::current_boot();
    let mut torn = BTreeSet::new();
    for (key, entry_boot) in txn.list::<String>(Table::UnsyncedSnapshots)? {
        let id = SnapshotId::parse(&key).ok();
        let exists = id.as_ref().is_some_and(|id| snapshots.contains_key(id));
        if entry_boot != boot || !exists {
            txn.remove(Table::UnsyncedSnapshots, &key)?;
        }
        if let (Some(id), true) = (id, exists && entry_boot != boot) {
            torn.insert(id);
        }
    }
    if torn.is_empty() {
        return Ok(torn);
    }
    // Descendants, whatever their own state: their lowers are the torn ones.
    loop {
        let before = torn.len();
        for (id, record) in snapshots {
            if record
                .parent
                .as_ref()
                .is_some_and(|parent| torn.contains(parent))
            {
                torn.insert(id.clone());
            }
        }
        if torn.len() == before {
            return Ok(torn);
        }
    }
}

/// Adds a manifest or index and everything under it to the kept sets. Unreadable documents
/// keep only themselves.
fn mark_document(
    inner: &StoreInner,
    media_type: &str,
    digest: &Digest,
    depth: usize,
    kept_blobs: &mut BTreeSet<Digest>,
    chain_keys: &mut BTreeSet<String>,
) {
    kept_blobs.insert(digest.clone());
    if depth > 4 {
        return;
    }
    let Ok(bytes) = inner.read_blob(digest, MAX_DOCUMENT_SIZE) else {
        return;
    };
    if media_type::is_index(media_type) {
        if let Ok(index) = serde_json::from_slice::<ImageIndex>(&bytes) {
            for child in &index.manifests {
                mark_document(
                    inner,
                    &child.media_type,
                    &child.digest,
                    depth + 1,
                    kept_blobs,
                    chain_keys,
                );
            }
        }
        return;
    }
    let Ok(manifest) = serde_json::from_slice::<ImageManifest>(&bytes) else {
        return;
    };
    kept_blobs.insert(manifest.config.digest.clone());
    for layer in &manifest.layers {
        kept_blobs.insert(layer.digest.clone());
    }
    let Ok(config_bytes) = inner.read_blob(&manifest.config.digest, MAX_DOCUMENT_SIZE) else {
        return;
    };
    // Only rootfs.diff_ids matter here; read them leniently.
    let diff_ids: Vec<Digest> = serde_json::from_slice::<serde_json::Value>(&config_bytes)
        .ok()
        .and_then(|config| config.get("rootfs")?.get("diff_ids").cloned())
        .and_then(|value| serde_json::from_value(value).ok())
        .unwrap_or_default();
    for chain_id in chain_ids(&diff_ids) {
        chain_keys.insert(chain_id.to_string());
    }
}

fn list_names(directory: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::io("list", directory, error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("list", directory, e))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Removes ingest files no writer holds (a writer keeps its file locked).
fn remove_stale_ingest(ingest: &Path) -> Result<(usize, u64)> {
    let mut removed = 0;
    let mut bytes = 0;
    for name in list_names(ingest)? {
        let path = ingest.join(&name);
        let Ok(file) = OpenOptions::new().read(true).open(&path) else {
            continue;
        };
        if flock(&file, FlockOperation::NonBlockingLockExclusive).is_err() {
            continue;
        }
        if same_file(&file, &path) {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if fs::remove_file(&path).is_ok() {
                removed += 1;
                bytes += size;
            }
        }
    }
    Ok((removed, bytes))
}

impl StoreInner {
    /// Moves a directory into `trash/` (one rename, so the name is gone at once) and then
    /// deletes it. Any mount inside is detached first, so the deletion never reaches into
    /// a mounted filesystem.
    pub(crate) fn trash(&self, path: &Path) -> Result<()> {
        if fs::symlink_metadata(path).is_err() {
            return Ok(());
        }
        for mount_point in mount_points_under(path) {
            unmount(&mount_point, true)?;
        }
        let destination = self.layout.trash.join(random_hex(8));
        match fs::rename(path, &destination) {
            Ok(()) => crate::fsutil::remove_path(&destination),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(StoreError::io("move to trash", path, error)),
        }
    }

    /// Deletes what crashed deletions left in `trash/`. Each entry is first claimed with a
    /// rename, so two processes never delete the same tree at once.
    pub(crate) fn empty_trash(&self) -> Result<()> {
        for name in list_names(&self.layout.trash)? {
            let path = self.layout.trash.join(&name);
            for mount_point in mount_points_under(&path) {
                unmount(&mount_point, true)?;
            }
            let claimed = self.layout.trash.join(format!("claimed-{}", random_hex(8)));
            if fs::rename(&path, &claimed).is_ok() {
                crate::fsutil::remove_path(&claimed)?;
            }
        }
        Ok(())
    }

    pub(crate) fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.layout.blob_path(digest);
        let size = fs::metadata(&path)
            .map_err(|e| StoreError::io("inspect", &path, e))?
            .len();
        if size > limit {
            return Err(StoreError::BlobTooLarge {
                digest: digest.clone(),
                size,
                limit,
            });
        }
        fs::read(&path).map_err(|e| StoreError::io("read", &path, e))
    }
}
