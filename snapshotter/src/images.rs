//! Records the CLI and the solver keep in the store: image tags, cache records and cache
//! mounts; and walking a stored image down to its layers' snapshots.

use std::path::PathBuf;

use kiln_types::Sha256;
use kiln_types::{media_type, Descriptor, Digest, ImageIndex, ImageManifest, ImageSpec, Platform};

use crate::error::{Result, StoreError};
use crate::fsutil::{create_dir_all, now_unix};
use crate::ids::{validate_cache_mount_id, SnapshotId};
use crate::lease::{add_to_lease, Lease};
use crate::metadata::{Records, Table};
use crate::snapshot::{SnapshotKind, SnapshotRecord};
use crate::Store;

/// Largest manifest, index or config read into memory.
pub const MAX_DOCUMENT_SIZE: u64 = 8 << 20;

/// A tag: a name pointing at a manifest or index in the content store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageRecord {
    /// The full reference as the CLI normalized it (`docker.io/library/alpine:3.20`).
    pub name: String,
    /// The manifest or index the name points at (media type, digest, size).
    pub target: Descriptor,
    pub created_unix: u64,
}

/// A solver cache record. The references are explicit so that `prune` knows what the record
/// keeps alive; `data` is the solver's own document, stored as is.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheRecord {
    #[serde(default)]
    pub snapshots: Vec<SnapshotId>,
    #[serde(default)]
    pub blobs: Vec<Digest>,
    #[serde(default)]
    pub cache_mounts: Vec<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(default)]
    pub created_unix: u64,
}

/// A `RUN --mount=type=cache` directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CacheMountRecord {
    pub id: String,
    pub created_unix: u64,
    pub last_used_unix: u64,
}

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// The (usually compressed) layer blob as the manifest lists it.
    pub descriptor: Descriptor,
    /// Digest of the uncompressed tar, from the config's `rootfs.diff_ids`.
    pub diff_id: Digest,
    /// OCI chain id of this layer and all below it: the snapshot key.
    pub chain_id: Digest,
    /// The committed snapshot with this chain id, if the layer is unpacked.
    pub snapshot: Option<SnapshotId>,
}

/// A stored image resolved for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The single-platform manifest chosen (the target itself unless it is an index).
    pub manifest_descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageSpec,
    /// Bottom layer first.
    pub layers: Vec<LayerInfo>,
}

impl ResolvedImage {
    /// The snapshot of the top layer, if every layer is unpacked (`None` for an image with
    /// no layers too).
    pub fn top_snapshot(&self) -> Option<&SnapshotId> {
        if self.layers.iter().all(|layer| layer.snapshot.is_some()) {
            self.layers.last().and_then(|layer| layer.snapshot.as_ref())
        } else {
            None
        }
    }
}

/// OCI chain ids: `chain(0) = diff(0)`, `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(previous) => {
                let hash = Sha256::digest(format!("{previous} {diff_id}").as_bytes());
                Digest::from_sha256(hash)
            }
        };
        chain.push(next);
    }
    chain
}

impl Store {
    /// Points `name` at `target` (creating or moving the tag). The target blob must be
    /// stored.
    pub fn put_image(&self, name: &str, target: &Descriptor) -> Result<ImageRecord> {
        if !self.content().exists(&target.digest) {
            return Err(StoreError::BlobNotFound {
                digest: target.digest.clone(),
            });
        }
        // a rebuild that names the same image again writes (and syncs) nothing
        if let Some(existing) = self.image(name)? {
            if existing.target == *target {
                return Ok(existing);
            }
        }
        let record = ImageRecord {
            name: name.to_string(),
            target: target.clone(),
            created_unix: now_unix(),
        };
        self.inner
            .metadata
            .write(|txn| txn.put(Table::Images, name, &record))?;
        Ok(record)
    }

    /// The image tagged `name`, if any.
    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>> {
        self.inner.metadata.read(|txn| txn.get(Table::Images, name))
    }

    /// Every tagged image, sorted by name.
    pub fn images(&self) -> Result<Vec<ImageRecord>> {
        let records = self
            .inner
            .metadata
            .read(|txn| txn.list::<ImageRecord>(Table::Images))?;
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }

    /// Finds an image by exact name, by full digest of its target, or by a unique prefix
    /// (at least 4 hex characters) of that digest, as `docker rmi 3f2a` does.
    pub fn resolve_image(&self, reference: &str) -> Result<ImageRecord> {
        if let Some(record) = self.image(reference)? {
            return Ok(record);
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        let is_hex_prefix = hex.len() >= 4
            && hex.len() <= 64
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if is_hex_prefix {
            let matches: Vec<ImageRecord> = self
                .images()?
                .into_iter()
                .filter(|record| record.target.digest.hex().starts_with(hex))
                .collect();
            let distinct: std::collections::BTreeSet<&Digest> =
                matches.iter().map(|record| &record.target.digest).collect();
            match distinct.len() {
                0 => {}
                1 => return Ok(matches[0].clone()),
                count => {
                    return Err(StoreError::AmbiguousImage {
                        reference: reference.to_string(),
                        count,
                    })
                }
            }
        }
        Err(StoreError::ImageNotFound {
            name: reference.to_string(),
        })
    }

    /// Gives the image found by `source` (see [`resolve_image`](Self::resolve_image)) the
    /// extra name `new_name`.
    pub fn tag_image(&self, source: &str, new_name: &str) -> Result<ImageRecord> {
        let found = self.resolve_image(source)?;
        self.put_image(new_name, &found.target)
    }

    /// Removes the tag `name`; whether it existed. The content goes at the next prune.
    pub fn remove_image(&self, name: &str) -> Result<bool> {
        self.inner
            .metadata
            .write(|txn| txn.remove(Table::Images, name))
    }

    /// Reads a stored manifest (or index, choosing `platform`) and its config, and finds each
    /// layer's diff id, chain id and snapshot.
    pub fn resolve_layers(
        &self,
        target: &Descriptor,
        platform: &Platform,
    ) -> Result<ResolvedImage> {
        let manifest_descriptor = if media_type::is_index(&target.media_type) {
            let index: ImageIndex = self.read_document("image index", &target.digest)?;
            index
                .manifests
                .iter()
                .find(|entry| {
                    media_type::is_manifest(&entry.media_type)
                        && entry
                            .platform
                            .as_ref()
                            .is_some_and(|candidate| platform.matches(candidate))
                })
                .cloned()
                .ok_or_else(|| StoreError::PlatformNotFound {
                    digest: target.digest.clone(),
                    platform: format!("{}/{}", platform.os, platform.architecture),
                })?
        } else if media_type::is_manifest(&target.media_type) {
            target.clone()
        } else {
            return Err(StoreError::UnsupportedMediaType {
                media_type: target.media_type.clone(),
                digest: target.digest.clone(),
            });
        };
        let manifest: ImageManifest =
            self.read_document("image manifest", &manifest_descriptor.digest)?;
        let config: ImageSpec = self.read_document("image config", &manifest.config.digest)?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::LayerCountMismatch {
                digest: manifest_descriptor.digest.clone(),
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        let chains = chain_ids(diff_ids);
        let snapshots = self.inner.metadata.read(|txn| {
            let mut found = Vec::with_capacity(chains.len());
            for chain_id in &chains {
                let id = txn.get::<SnapshotId>(Table::SnapshotKeys, chain_id.as_str())?;
                let committed = match id {
                    Some(id) => txn
                        .get::<SnapshotRecord>(Table::Snapshots, id.as_str())?
                        .filter(|record| record.kind == SnapshotKind::Committed)
                        .map(|record| record.id),
                    None => None,
                };
                found.push(committed);
            }
            Ok(found)
        })?;
        let layers = manifest
            .layers
            .iter()
            .zip(diff_ids)
            .zip(chains)
            .zip(snapshots)
            .map(|(((descriptor, diff_id), chain_id), snapshot)| LayerInfo {
                descriptor: descriptor.clone(),
                diff_id: diff_id.clone(),
                chain_id,
                snapshot,
            })
            .collect();
        Ok(ResolvedImage {
            manifest_descriptor,
            manifest,
            config,
            layers,
        })
    }

    fn read_document<T: serde::de::DeserializeOwned>(
        &self,
        kind: &'static str,
        digest: &Digest,
    ) -> Result<T> {
        let bytes = self.content().read_bytes(digest, MAX_DOCUMENT_SIZE)?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::BadDocument {
            kind,
            digest: digest.clone(),
            message: e.to_string(),
        })
    }

    /// Stores a cache record. Every snapshot, blob and cache mount it names must exist (and
    /// so be protected by the caller's lease until now): the record then keeps them.
    pub fn put_cache_record(&self, key: &str, record: &CacheRecord) -> Result<()> {
        for digest in &record.blobs {
            if !self.content().exists(digest) {
                return Err(StoreError::BlobNotFound {
                    digest: digest.clone(),
                });
            }
        }
        for id in &record.cache_mounts {
            validate_cache_mount_id(id)?;
        }
        self.inner.metadata.write_volatile(|txn| {
            for id in &record.snapshots {
                let found = txn.get::<SnapshotRecord>(Table::Snapshots, id.as_str())?;
                match found {
                    Some(found) if found.kind == SnapshotKind::Committed => {}
                    Some(_) => return Err(StoreError::SnapshotNotCommitted { id: id.to_string() }),
                    None => return Err(StoreError::SnapshotNotFound { id: id.to_string() }),
                }
            }
            let mut stored = record.clone();
            if stored.created_unix == 0 {
                stored.created_unix = now_unix();
            }
            txn.put(Table::CacheRecords, key, &stored)
        })
    }

    /// The cache record under `key`, if any.
    pub fn cache_record(&self, key: &str) -> Result<Option<CacheRecord>> {
        self.inner
            .metadata
            .read(|txn| txn.get(Table::CacheRecords, key))
    }

    /// Every cache record with its key.
    pub fn cache_records(&self) -> Result<Vec<(String, CacheRecord)>> {
        self.inner
            .metadata
            .read(|txn| txn.list(Table::CacheRecords))
    }

    /// Removes a cache record; whether it existed.
    pub fn remove_cache_record(&self, key: &str) -> Result<bool> {
        self.inner
            .metadata
            .write(|txn| txn.remove(Table::CacheRecords, key))
    }

    /// The directory of cache mount `id` (created if new), protected by `lease` while the
    /// caller uses it. Sharing between concurrent users (shared/private/locked) is the
    /// caller's business.
    pub fn cache_mount(&self, lease: &Lease, id: &str) -> Result<PathBuf> {
        validate_cache_mount_id(id)?;
        let path = self.inner.layout.cache_mounts.join(id);
        self.inner.metadata.write_volatile(|txn| {
            let now = now_unix();
            let record = match txn.get::<CacheMountRecord>(Table::CacheMounts, id)? {
                Some(mut record) => {
                    record.last_used_unix = now;
                    record
                }
                None => CacheMountRecord {
                    id: id.to_string(),
                    created_unix: now,
                    last_used_unix: now,
                },
            };
            txn.put(Table::CacheMounts, id, &record)?;
            add_to_lease(txn, &lease.id, |lease_record| {
                lease_record.cache_mounts.insert(id.to_string());
            })?;
            // Created under the lock: prune removes cache mount dirs without a record.
            create_dir_all(&path)
        })?;
        Ok(path)
    }

    /// Every cache mount record.
    pub fn cache_mounts(&self) -> Result<Vec<CacheMountRecord>> {
        let records = self
            .inner
            .metadata
            .read(|txn| txn.list::<CacheMountRecord>(Table::CacheMounts))?;
        Ok(records.into_iter().map(|(_, record)| record).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let first = Digest::of_bytes(b"one");
        let second = Digest::of_bytes(b"two");
        let chains = chain_ids(&[first.clone(), second.clone()]);
        assert_eq!(chains[0], first);
        assert_eq!(
            chains[1],
            Digest::of_bytes(format!("{first} {second}").as_bytes())
        );
        assert!(chain_ids(&[]).is_empty());
    }
}
