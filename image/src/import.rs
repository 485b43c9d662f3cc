//! `import`: a one-layer image from a root filesystem tarball (Docker's `import`), so a base
//! image can be made on a machine without a registry.
//!
//! The tarball (uncompressed, gzip or zstd: told by its first bytes) is read once: its tar
//! stream is hashed (the diffID), gzip-compressed and written into the content store. The
//! layer is then unpacked from the stored blob into a snapshot keyed by its chain id (the
//! diffID, for a single layer), which is only known once the whole stream was read.

use std::io::{Cursor, Read, Write};

use kiln_registry::Reference;
use kiln_snapshotter::archive::{
    apply_layer, decompressing_reader, detect_compression, ApplyOptions, Compression,
    CompressionOptions, LayerWriter, WhiteoutMode,
};
use kiln_snapshotter::{PreparedUnpack, SnapshotId, Store};
use kiln_types::{
    canonical_json, media_type, Descriptor, Digest, History, ImageManifest, ImageSpec, Platform,
    RootFs,
};

use crate::changes::apply_changes;
use crate::error::{ImageError, Result};
use crate::reference::store_name;

/// How to import.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Dockerfile instructions applied to the config (`CMD ["sh"]`, `ENV A=b`, ...).
    pub changes: Vec<String>,
    /// The platform written into the config (default: this machine's).
    pub platform: Option<Platform>,
    /// The history comment's source: `Imported from <source>` (default `-`, as Docker
    /// writes for a tarball read from standard input).
    pub source: Option<String>,
}

impl ImportOptions {
    pub fn with_changes(mut self, changes: Vec<String>) -> Self {
        self.changes = changes;
        self
    }

    pub fn with_platform(mut self, platform: Option<Platform>) -> Self {
        self.platform = platform;
        self
    }
}

/// An imported image.
#[derive(Debug, Clone)]
pub struct ImportedImage {
    /// The name it was tagged under.
    pub name: String,
    pub manifest: Descriptor,
    pub config_digest: Digest,
    pub config: ImageSpec,
    /// The gzip layer blob.
    pub layer: Descriptor,
    pub diff_id: Digest,
    pub snapshot: SnapshotId,
}

/// Imports the root filesystem tarball read from `reader` as a one-layer image tagged
/// `reference` (normalized, see [`store_name`]).
pub fn import(
    store: &Store,
    reader: impl Read,
    reference: &Reference,
    options: &ImportOptions,
) -> Result<ImportedImage> {
    let lease = store
        .lease(&format!("import {reference}"))
        .map_err(ImageError::store("taking a lease for the import"))?;
    let content = store.content();

    // Tell the compression from the first bytes, then put them back in front.
    let mut reader = reader;
    let mut magic = Vec::with_capacity(8);
    (&mut reader)
        .take(8)
        .read_to_end(&mut magic)
        .map_err(ImageError::io("reading the tarball"))?;
    let compression = detect_compression(&magic);
    let input = Cursor::new(magic).chain(reader);
    let mut tar = decompressing_reader(input, compression)
        .map_err(ImageError::io("opening the tarball's decompressor"))?;

    // One pass: tar -> diffID -> gzip -> blob digest -> content store.
    let blob_writer = content
        .writer(&lease, None)
        .map_err(ImageError::store("opening a writer for the layer"))?;
    let mut layer_writer = LayerWriter::new(blob_writer, CompressionOptions::gzip())
        .map_err(ImageError::io("starting the layer compressor"))?;
    std::io::copy(&mut tar, &mut layer_writer).map_err(ImageError::io("reading the tarball"))?;
    let (compressed, mut blob_writer) = layer_writer
        .finish()
        .map_err(ImageError::io("compressing the layer"))?;
    blob_writer
        .flush()
        .map_err(ImageError::io("writing the layer"))?;
    let (layer_digest, layer_size) = blob_writer
        .commit()
        .map_err(ImageError::store("storing the layer"))?;
    let layer = Descriptor::new(media_type::OCI_LAYER_GZIP, layer_digest.clone(), layer_size);
    let diff_id = compressed.diff_id.clone();

    // Unpack from the stored blob into the snapshot keyed by the chain id (= diffID).
    let snapshot = match store
        .snapshotter()
        .prepare_unpack(&lease, diff_id.as_str(), None)
        .map_err(ImageError::store("preparing the layer snapshot"))?
    {
        PreparedUnpack::Existing(id) => id,
        PreparedUnpack::New(directory) => {
            let blob = content
                .open(&layer_digest)
                .map_err(ImageError::store("opening the stored layer"))?;
            let mut apply_options = ApplyOptions::new(WhiteoutMode::Overlay);
            apply_options.expected_diff_id = Some(diff_id.clone());
            let applied = apply_layer(blob, Compression::Gzip, directory.path(), &apply_options)
                .map_err(|source| ImageError::Unpack {
                    digest: layer_digest.clone(),
                    source,
                })?;
            directory
                .commit(Some(applied.diff_id), Some(applied.uncompressed_size))
                .map_err(ImageError::store("committing the layer snapshot"))?
        }
    };

    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let created = rfc3339_now();
    let mut config = ImageSpec {
        created: Some(created.clone()),
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        rootfs: RootFs::layers(vec![diff_id.clone()]),
        history: vec![History {
            created: Some(created),
            comment: Some(format!(
                "Imported from {}",
                options.source.as_deref().unwrap_or("-")
            )),
            ..History::default()
        }],
        ..ImageSpec::default()
    };
    apply_changes(&mut config, &options.changes)?;
    let config_bytes = canonical_json(&config).map_err(|error| ImageError::BadConfig {
        digest: Digest::of_bytes(b""),
        message: error.to_string(),
    })?;
    let (config_digest, config_size) = content
        .put_bytes(&lease, &config_bytes, None)
        .map_err(ImageError::store("storing the image config"))?;
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.to_string()),
        config: Descriptor::new(media_type::OCI_CONFIG, config_digest.clone(), config_size),
        layers: vec![layer.clone()],
        annotations: None,
        extra: Default::default(),
    };
    let manifest_bytes = canonical_json(&manifest).map_err(|error| ImageError::BadConfig {
        digest: config_digest.clone(),
        message: error.to_string(),
    })?;
    let (manifest_digest, manifest_size) = content
        .put_bytes(&lease, &manifest_bytes, None)
        .map_err(ImageError::store("storing the image manifest"))?;
    let manifest_descriptor =
        Descriptor::new(media_type::OCI_MANIFEST, manifest_digest, manifest_size);
    let name = store_name(reference);
    store
        .put_image(&name, &manifest_descriptor)
        .map_err(ImageError::store(format!("tagging {name}")))?;
    drop(lease);
    Ok(ImportedImage {
        name,
        manifest: manifest_descriptor,
        config_digest,
        config,
        layer,
        diff_id,
        snapshot,
    })
}

/// The current UTC time as RFC 3339 with seconds (`2024-05-01T12:00:00Z`).
pub fn rfc3339_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    rfc3339(seconds)
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC.
pub fn rfc3339(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let rest = unix_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
