//! Which blob a committed snapshot was exported to, per export variant (compression, level,
//! SOURCE_DATE_EPOCH, media type style), so a layer is compressed once and its blob reused.
//!
//! A record does not keep its blob alive: a pruned blob makes the record useless, and the
//! exporter checks that the blob is still stored (after protecting it with its lease) before
//! reusing it. Records go with their snapshot when `prune` removes it.

use kiln_types::Digest;

use crate::error::{Result, StoreError};
use crate::fsutil::now_unix;
use crate::ids::SnapshotId;
use crate::metadata::{Records, Table};
use crate::snapshot::{SnapshotKind, SnapshotRecord};
use crate::Store;

/// Longest variant name accepted by [`Store::put_layer_blob`].
pub const MAX_LAYER_VARIANT_LENGTH: usize = 200;

/// A snapshot's layer as exported once: the compressed blob and the uncompressed tar's facts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlobRecord {
    /// The layer descriptor's media type.
    pub media_type: String,
    /// The (compressed) blob in the content store.
    pub digest: Digest,
    pub size: u64,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    #[serde(default)]
    pub created_unix: u64,
    /// sha256 states saved every [`crate::archive::MIDSTATE_INTERVAL`] bytes of the
    /// uncompressed tar, so a similar layer's diffID can resume past the prefix they share
    /// (kept for uncompressed blobs, which are that tar).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub midstates: Vec<kiln_types::Sha256Midstate>,
}

/// The table key of a snapshot's variant; the `/` cannot occur in a snapshot id.
fn layer_blob_key(snapshot: &SnapshotId, variant: &str) -> String {
    format!("{snapshot}/{variant}")
}

fn validate_variant(variant: &str) -> Result<()> {
    let valid = !variant.is_empty()
        && variant.len() <= MAX_LAYER_VARIANT_LENGTH
        && variant.bytes().all(|byte| byte.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidLayerVariant {
            variant: variant.to_string(),
        })
    }
}

impl Store {
    /// The blob `snapshot` was exported to as `variant` (a caller's name for compression,
    /// level, epoch and media type style), if one was recorded. The blob may have been pruned
    /// since: check [`crate::ContentStore::exists`] after protecting it with a lease.
    pub fn layer_blob(
        &self,
        snapshot: &SnapshotId,
        variant: &str,
    ) -> Result<Option<LayerBlobRecord>> {
        validate_variant(variant)?;
        let key = layer_blob_key(snapshot, variant);
        self.inner
            .metadata
            .read(|txn| txn.get(Table::LayerBlobs, &key))
    }

    /// Records that committed snapshot `snapshot` exported as `variant` is the blob in
    /// `record` (replacing an earlier record). The blob must be stored.
    pub fn put_layer_blob(
        &self,
        snapshot: &SnapshotId,
        variant: &str,
        record: &LayerBlobRecord,
    ) -> Result<()> {
        validate_variant(variant)?;
        if !self.content().exists(&record.digest) {
            return Err(StoreError::BlobNotFound {
                digest: record.digest.clone(),
            });
        }
        let key = layer_blob_key(snapshot, variant);
        let mut stored = record.clone();
        if stored.created_unix == 0 {
            stored.created_unix = now_unix();
        }
        self.inner.metadata.write_volatile(|txn| {
            match txn.get::<SnapshotRecord>(Table::Snapshots, snapshot.as_str())? {
                Some(found) if found.kind == SnapshotKind::Committed => {}
                Some(_) => {
                    return Err(StoreError::SnapshotNotCommitted {
                        id: snapshot.to_string(),
                    })
                }
                None => {
                    return Err(StoreError::SnapshotNotFound {
                        id: snapshot.to_string(),
                    })
                }
            }
            txn.put(Table::LayerBlobs, &key, &stored)
        })
    }

    /// The newest layer record of `variant` whose blob is stored and which has saved hash
    /// states, among the other committed snapshots with the same parent as `snapshot`: the
    /// earlier result of the same step, most likely, for
    /// [`crate::archive::write_layer_from_upper_resuming`] to compare with. A wrong guess
    /// costs only the comparison; nothing is taken from it that was not compared.
    pub fn sibling_layer_blob(
        &self,
        snapshot: &SnapshotId,
        variant: &str,
    ) -> Result<Option<(SnapshotId, LayerBlobRecord)>> {
        validate_variant(variant)?;
        let suffix = format!("/{variant}");
        let found = self.inner.metadata.read(|txn| {
            let Some(this) = txn.get::<SnapshotRecord>(Table::Snapshots, snapshot.as_str())? else {
                return Ok(None);
            };
            let mut best: Option<(SnapshotId, LayerBlobRecord)> = None;
            for (key, record) in txn.list::<LayerBlobRecord>(Table::LayerBlobs)? {
                if record.midstates.is_empty() || !key.ends_with(&suffix) {
                    continue;
                }
                let Some(id) = layer_blob_snapshot(&key) else {
                    continue;
                };
                if id == *snapshot {
                    continue;
                }
                let Some(sibling) = txn.get::<SnapshotRecord>(Table::Snapshots, id.as_str())?
                else {
                    continue;
                };
                if sibling.kind != SnapshotKind::Committed || sibling.parent != this.parent {
                    continue;
                }
                let newer = best
                    .as_ref()
                    .is_none_or(|(_, current)| record.created_unix >= current.created_unix);
                if newer {
                    best = Some((id, record));
                }
            }
            Ok(best)
        })?;
        Ok(found.filter(|(_, record)| self.content().exists(&record.digest)))
    }

    /// Every recorded variant of `snapshot`, by variant name.
    pub fn layer_blobs(&self, snapshot: &SnapshotId) -> Result<Vec<(String, LayerBlobRecord)>> {
        let prefix = format!("{snapshot}/");
        let records = self
            .inner
            .metadata
            .read(|txn| txn.list::<LayerBlobRecord>(Table::LayerBlobs))?;
        Ok(records
            .into_iter()
            .filter_map(|(key, record)| {
                key.strip_prefix(&prefix)
                    .map(|variant| (variant.to_string(), record))
            })
            .collect())
    }
}

/// The snapshot id a `layer_blobs` key belongs to.
pub(crate) fn layer_blob_snapshot(key: &str) -> Option<SnapshotId> {
    key.split_once('/')
        .and_then(|(snapshot, _)| SnapshotId::parse(snapshot).ok())
}
