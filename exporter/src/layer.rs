//! Layers from snapshots: a committed snapshot's directory (an overlay upper with its
//! whiteouts and opaque xattrs, or an unpacked layer) -> layer tar -> sha256 (diffID) ->
//! compressor -> content store (which hashes the blob), in one streaming pass.
//!
//! Each export is recorded in the store ([`kiln_snapshotter::Store::put_layer_blob`]) under a
//! variant name made of the compression, level and SOURCE_DATE_EPOCH, so the same snapshot is
//! never compressed twice the same way while its blob is stored.

use std::fs;

use std::io;

use kiln_snapshotter::archive::{
    decompressing_reader, write_layer_from_upper, write_layer_from_upper_resuming, DiffOptions,
    LayerReference,
};
use kiln_snapshotter::{LayerBlobRecord, Lease, SnapshotId, SnapshotKind, Store};
use kiln_types::media_type::{self, Compression};
use kiln_types::{Descriptor, Digest, Sha256Writer};

use crate::compress::{default_threads, effective_level, LayerCompressor};
use crate::error::{ExportError, Result};

/// The docker media type of an uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// How to turn a snapshot into a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// gzip 0-9 (default 6), zstd 1-22 (default 3); ignored when uncompressed.
    pub level: Option<i32>,
    /// SOURCE_DATE_EPOCH: file times in new layers newer than this are clamped to it
    /// (BuildKit's `rewrite-timestamp=true`), and so are the image's times.
    pub source_date_epoch: Option<i64>,
    /// SOURCE_DATE_EPOCH for the image config's `created` and history times only, file
    /// times left as they are (BuildKit without `rewrite-timestamp`). `source_date_epoch`
    /// implies it.
    pub config_epoch: Option<i64>,
    /// OCI layer media types instead of Docker's (zstd layers always get OCI's).
    pub oci_media_types: bool,
}

impl Default for LayerOptions {
    /// gzip at level 6, Docker media types, as `docker build` does.
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            source_date_epoch: None,
            config_epoch: None,
            oci_media_types: false,
        }
    }
}

impl LayerOptions {
    /// The name the store records this export under: what changes the blob's bytes
    /// (compression, effective level, epoch), not the media type style.
    pub fn variant(&self) -> String {
        let compression = compression_name(self.compression);
        let level = match effective_level(self.compression, self.level) {
            Some(level) => format!("-{level}"),
            None => String::new(),
        };
        let epoch = match self.source_date_epoch {
            Some(epoch) => format!("-epoch{epoch}"),
            None => String::new(),
        };
        format!("{compression}{level}{epoch}")
    }

    /// The layer media type for this compression and style.
    pub fn media_type(&self) -> &'static str {
        layer_media_type(self.compression, self.oci_media_types)
    }

    /// The epoch the image config's times are clamped to.
    pub fn image_epoch(&self) -> Option<i64> {
        self.source_date_epoch.or(self.config_epoch)
    }

    /// The variant a recompressed existing layer is recorded under: compression and level
    /// only (its file times are the layer's own).
    fn conversion_variant(&self) -> String {
        LayerOptions {
            source_date_epoch: None,
            ..*self
        }
        .variant()
    }
}

fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::Uncompressed => "uncompressed",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// The layer media type for a compression: Docker's unless `oci` (zstd has no Docker type
/// that Docker itself reads, so it is always OCI's, as BuildKit does).
pub fn layer_media_type(compression: Compression, oci: bool) -> &'static str {
    match (compression, oci) {
        (Compression::Gzip, false) => media_type::DOCKER_LAYER_GZIP,
        (Compression::Gzip, true) => media_type::OCI_LAYER_GZIP,
        (Compression::Uncompressed, false) => DOCKER_LAYER_TAR,
        (Compression::Uncompressed, true) => media_type::OCI_LAYER_TAR,
        (Compression::Zstd, _) => media_type::OCI_LAYER_ZSTD,
    }
}

/// A layer in the content store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedLayer {
    /// The (compressed) blob: media type, digest, size.
    pub descriptor: Descriptor,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// The snapshot holds no change at all (its tar has no entries): an image builder skips
    /// it and marks its history entry `empty_layer`, as BuildKit does.
    pub empty: bool,
    /// The blob was found from an earlier export of the same variant, not compressed now.
    pub reused: bool,
}

/// Turns committed snapshots into layer blobs.
#[derive(Debug, Clone)]
pub struct LayerExporter {
    store: Store,
    threads: usize,
}

impl LayerExporter {
    /// An exporter compressing on every core.
    pub fn new(store: &Store) -> Self {
        LayerExporter {
            store: store.clone(),
            threads: default_threads(),
        }
    }

    /// Uses `threads` compression threads (at least one). The bytes written do not depend
    /// on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Whether a snapshot's directory holds no change (no entry at all).
    pub fn is_empty(&self, snapshot: &SnapshotId) -> Result<bool> {
        let directory = self.store.snapshotter().fs_dir(snapshot);
        let mut entries = fs::read_dir(&directory).map_err(|source| ExportError::ReadInput {
            path: directory.clone(),
            source,
        })?;
        Ok(entries.next().is_none())
    }

    /// The layer blob of committed snapshot `snapshot` (its own changes only, not its
    /// parents'), compressed as `options` says: reused from an earlier export of the same
    /// variant if its blob is still stored, else written now in one streaming pass. The
    /// snapshot and the blob are added to `lease`.
    pub fn layer_for_snapshot(
        &self,
        lease: &Lease,
        snapshot: &SnapshotId,
        options: &LayerOptions,
    ) -> Result<ExportedLayer> {
        let record = self.store.snapshotter().info(snapshot)?;
        if record.kind != SnapshotKind::Committed {
            return Err(ExportError::SnapshotNotCommitted {
                id: snapshot.to_string(),
            });
        }
        lease.protect_snapshot(snapshot)?;
        let empty = self.is_empty(snapshot)?;
        let variant = options.variant();
        let media_type = options.media_type();
        if let Some(found) = self.store.layer_blob(snapshot, &variant)? {
            // Protect first, then look: a prune cannot remove it in between.
            lease.protect_blob(&found.digest)?;
            if self.store.content().exists(&found.digest) {
                return Ok(ExportedLayer {
                    descriptor: Descriptor::new(media_type, found.digest, found.size),
                    diff_id: found.diff_id,
                    uncompressed_size: found.uncompressed_size,
                    empty,
                    reused: true,
                });
            }
        }
        let directory = self.store.snapshotter().fs_dir(snapshot);
        let uncompressed = effective_level(options.compression, options.level).is_none();
        let diff_options = DiffOptions {
            source_date_epoch: options.source_date_epoch,
        };
        let mut blob = self.store.content().writer(lease, None)?;
        let (digest, size, stats, midstates) = if uncompressed {
            // the blob is the tar itself: its digest is the diffID, hashed once, resumed
            // past the prefix it shares with the same step's earlier layer when there is one
            blob = blob.without_hashing();
            let reference = self.layer_reference(lease, snapshot, &variant)?;
            let resumed =
                write_layer_from_upper_resuming(&directory, &mut blob, &diff_options, reference)?;
            let (digest, size) = blob.commit_with_digest(resumed.stats.diff_id.clone())?;
            (digest, size, resumed.stats, resumed.midstates)
        } else {
            let mut compressor =
                LayerCompressor::new(blob, options.compression, options.level, self.threads)
                    .map_err(|error| ExportError::io("starting the layer compressor", error))?;
            let stats = write_layer_from_upper(&directory, &mut compressor, &diff_options)?;
            let blob = compressor
                .finish()
                .map_err(|error| ExportError::io("compressing the layer", error))?;
            let (digest, size) = blob.commit()?;
            (digest, size, stats, Vec::new())
        };
        let exported = LayerBlobRecord {
            media_type: media_type.to_string(),
            digest: digest.clone(),
            size,
            diff_id: stats.diff_id.clone(),
            uncompressed_size: stats.size,
            created_unix: 0,
            midstates,
        };
        self.store.put_layer_blob(snapshot, &variant, &exported)?;
        Ok(ExportedLayer {
            descriptor: Descriptor::new(media_type, digest, size),
            diff_id: stats.diff_id,
            uncompressed_size: stats.size,
            empty: empty || stats.entries == 0,
            reused: false,
        })
    }

    /// The uncompressed layer of another snapshot with the same parent (the same step's
    /// earlier result, most likely) to compare `snapshot`'s tar with, protected by `lease`;
    /// `None` when there is none or it cannot be read.
    fn layer_reference(
        &self,
        lease: &Lease,
        snapshot: &SnapshotId,
        variant: &str,
    ) -> Result<Option<LayerReference>> {
        let Some((_, record)) = self.store.sibling_layer_blob(snapshot, variant)? else {
            return Ok(None);
        };
        lease.protect_blob(&record.digest)?;
        let Ok(tar) = self.store.content().open(&record.digest) else {
            return Ok(None);
        };
        Ok(Some(LayerReference {
            tar,
            size: record.uncompressed_size,
            diff_id: record.diff_id,
            midstates: record.midstates,
        }))
    }

    /// An existing layer blob (a base image's, say) recompressed as `options` says, for
    /// BuildKit's `force-compression`: decompressed, its diffID checked on the way, and
    /// compressed again in one streaming pass, so the diffID is unchanged. A layer already
    /// in that compression (at any level), or of a type kiln cannot convert (foreign
    /// layers), is returned as it is. With `snapshot` (the layer's unpacked snapshot) the
    /// result is recorded like an export of that snapshot and reused next time. The blob
    /// is added to `lease`.
    pub fn convert_layer(
        &self,
        lease: &Lease,
        layer: &Descriptor,
        diff_id: &Digest,
        snapshot: Option<&SnapshotId>,
        options: &LayerOptions,
    ) -> Result<Descriptor> {
        let foreign = matches!(
            layer.media_type.as_str(),
            media_type::DOCKER_LAYER_FOREIGN_GZIP | media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP
        );
        let Some(compression) = media_type::layer_compression(&layer.media_type) else {
            return Ok(layer.clone());
        };
        if foreign || compression == options.compression {
            return Ok(layer.clone());
        }
        let media_type = options.media_type();
        let variant = options.conversion_variant();
        if let Some(snapshot) = snapshot {
            if let Some(found) = self.store.layer_blob(snapshot, &variant)? {
                lease.protect_blob(&found.digest)?;
                if found.diff_id == *diff_id && self.store.content().exists(&found.digest) {
                    return Ok(Descriptor::new(media_type, found.digest, found.size));
                }
            }
        }
        lease.protect_blob(&layer.digest)?;
        let source = self.store.content().open(&layer.digest)?;
        let mut reader =
            decompressing_reader(io::BufReader::with_capacity(1 << 20, source), compression)
                .map_err(|error| {
                    ExportError::io(format!("decompressing layer {}", layer.digest), error)
                })?;
        let blob = self.store.content().writer(lease, None)?;
        let compressor =
            LayerCompressor::new(blob, options.compression, options.level, self.threads)
                .map_err(|error| ExportError::io("starting the layer compressor", error))?;
        let mut hashing = Sha256Writer::new(compressor);
        io::copy(&mut reader, &mut hashing).map_err(|error| {
            ExportError::io(format!("recompressing layer {}", layer.digest), error)
        })?;
        let (found_diff_id, uncompressed_size, compressor) = hashing.finish();
        if found_diff_id != *diff_id {
            return Err(ExportError::DiffIdMismatch {
                layer: layer.digest.clone(),
                expected: diff_id.clone(),
                found: found_diff_id,
            });
        }
        let blob = compressor
            .finish()
            .map_err(|error| ExportError::io("compressing the layer", error))?;
        let (digest, size) = blob.commit()?;
        if let Some(snapshot) = snapshot {
            let record = LayerBlobRecord {
                media_type: media_type.to_string(),
                digest: digest.clone(),
                size,
                diff_id: diff_id.clone(),
                uncompressed_size,
                created_unix: 0,
                midstates: Vec::new(),
            };
            self.store.put_layer_blob(snapshot, &variant, &record)?;
        }
        Ok(Descriptor::new(media_type, digest, size))
    }
}
