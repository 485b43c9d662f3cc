//! Images from layers: new layers exported from snapshots on top of a base image's layers
//! (whose blobs are reused as they are), the config's `rootfs` and history completed, config
//! and manifest written as canonical JSON into the content store, and names tagged.

use kiln_snapshotter::{Lease, SnapshotId, Store};
use kiln_types::media_type::{self, Compression};
use kiln_types::{canonical_json, Descriptor, Digest, History, ImageManifest, ImageSpec, RootFs};

use crate::error::{ExportError, Result};
use crate::layer::{ExportedLayer, LayerExporter, LayerOptions, DOCKER_LAYER_TAR};
use crate::time::{format_rfc3339, parse_rfc3339};

/// The layers of the image a build starts from, as its manifest and config list them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BaseImage {
    /// Layer descriptors, bottom first; their blobs must be in the content store.
    pub layers: Vec<Descriptor>,
    /// The config's `rootfs.diff_ids`, one per layer.
    pub diff_ids: Vec<Digest>,
}

/// What [`build_image`] stored.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    /// The manifest blob: what a tag points at.
    pub manifest_descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config_descriptor: Descriptor,
    /// The config as stored (rootfs, history and times filled in).
    pub config: ImageSpec,
    /// One entry per snapshot given, in order (empty ones included, marked `empty`).
    pub new_layers: Vec<ExportedLayer>,
}

impl BuiltImage {
    /// The config digest (the image id `docker images` shows).
    pub fn config_digest(&self) -> &Digest {
        &self.config_descriptor.digest
    }
}

/// Exports `layers` (committed snapshots, bottom to top, each holding only its own changes)
/// on top of `base`, and stores the config and manifest. `config` is the image config and
/// history prepared by the caller (base history first, then one entry per build step);
/// `rootfs` is filled here. Empty layers are left out and their history entries marked
/// `empty_layer`. With an epoch (`options.source_date_epoch` or `config_epoch`), `created`
/// and every later history time become the epoch; with `source_date_epoch` file times in new
/// layers are clamped too, so two builds give the same digests. Base layers are used as
/// they are (recompress them first with [`LayerExporter::convert_layer`] if wanted).
/// Docker media types unless `options.oci_media_types` (or zstd layers, which only OCI
/// types describe). Everything stored is added to `lease`; nothing is tagged.
pub fn build_image(
    store: &Store,
    lease: &Lease,
    layers: &[SnapshotId],
    base: Option<&BaseImage>,
    config: ImageSpec,
    options: &LayerOptions,
) -> Result<BuiltImage> {
    let empty_base = BaseImage::default();
    let base = base.unwrap_or(&empty_base);
    if base.layers.len() != base.diff_ids.len() {
        return Err(ExportError::BaseMismatch {
            layers: base.layers.len(),
            diff_ids: base.diff_ids.len(),
        });
    }
    for layer in &base.layers {
        lease.protect_blob(&layer.digest)?;
        if !store.content().exists(&layer.digest) {
            return Err(ExportError::BaseLayerMissing {
                digest: layer.digest.clone(),
            });
        }
    }

    let exporter = LayerExporter::new(store);
    // The layers and the blobs they were exported to before, protected in one write (each
    // is protected again below, which is then free): a cached rebuild of many steps wrote
    // the lease record once per layer and once per blob.
    let variant = options.variant();
    let mut known_blobs = Vec::new();
    for snapshot in layers {
        if let Some(found) = store.layer_blob(snapshot, &variant)? {
            known_blobs.push(found.digest);
        }
    }
    lease.protect_many(layers, &known_blobs)?;
    let mut new_layers = Vec::with_capacity(layers.len());
    for snapshot in layers {
        new_layers.push(exporter.layer_for_snapshot(lease, snapshot, options)?);
    }

    let any_zstd = options.compression == Compression::Zstd
        || base.layers.iter().any(|layer| {
            media_type::layer_compression(&layer.media_type) == Some(Compression::Zstd)
        });
    let oci = options.oci_media_types || any_zstd;

    let mut layer_descriptors: Vec<Descriptor> = base
        .layers
        .iter()
        .map(|layer| convert_layer_media_type(layer, oci))
        .collect();
    let mut diff_ids = base.diff_ids.clone();
    for layer in new_layers.iter().filter(|layer| !layer.empty) {
        let mut descriptor = layer.descriptor.clone();
        descriptor.media_type = crate::layer::layer_media_type(options.compression, oci).into();
        layer_descriptors.push(descriptor);
        diff_ids.push(layer.diff_id.clone());
    }

    let mut config = config;
    config.rootfs = RootFs::layers(diff_ids);
    config.history = normalize_history(
        std::mem::take(&mut config.history),
        &new_layers,
        config.rootfs.diff_ids.len(),
    );
    if let Some(epoch) = options.image_epoch() {
        clamp_times(&mut config, epoch);
    }

    let (manifest_type, config_type) = if oci {
        (media_type::OCI_MANIFEST, media_type::OCI_CONFIG)
    } else {
        (media_type::DOCKER_MANIFEST, media_type::DOCKER_CONFIG)
    };
    let config_bytes = canonical_json(&config).map_err(|e| ExportError::json("image config", e))?;
    let (config_digest, config_size) = store.content().put_bytes(lease, &config_bytes, None)?;
    let config_descriptor = Descriptor::new(config_type, config_digest, config_size);
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest_type.to_string()),
        config: config_descriptor.clone(),
        layers: layer_descriptors,
        annotations: None,
        extra: Default::default(),
    };
    let manifest_bytes =
        canonical_json(&manifest).map_err(|e| ExportError::json("image manifest", e))?;
    let (manifest_digest, manifest_size) =
        store.content().put_bytes(lease, &manifest_bytes, None)?;
    Ok(BuiltImage {
        manifest_descriptor: Descriptor::new(manifest_type, manifest_digest, manifest_size),
        manifest,
        config_descriptor,
        config,
        new_layers,
    })
}

/// Points every name at `descriptor` (a manifest or index in the content store). Names are
/// stored as given: normalize them first (`docker.io/library/app:latest`).
pub fn tag(store: &Store, names: &[String], descriptor: &Descriptor) -> Result<()> {
    for name in names {
        store.put_image(name, descriptor)?;
    }
    Ok(())
}

/// A base layer's media type in the style of the image being written (the blob is the
/// same; only the name of its type differs between Docker and OCI).
fn convert_layer_media_type(layer: &Descriptor, oci: bool) -> Descriptor {
    let converted = match (layer.media_type.as_str(), oci) {
        (media_type::DOCKER_LAYER_GZIP, true) => media_type::OCI_LAYER_GZIP,
        (DOCKER_LAYER_TAR, true) => media_type::OCI_LAYER_TAR,
        (media_type::DOCKER_LAYER_FOREIGN_GZIP, true) => {
            media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP
        }
        (media_type::OCI_LAYER_GZIP, false) => media_type::DOCKER_LAYER_GZIP,
        (media_type::OCI_LAYER_TAR, false) => DOCKER_LAYER_TAR,
        (media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP, false) => {
            media_type::DOCKER_LAYER_FOREIGN_GZIP
        }
        (other, _) => other,
    };
    let mut descriptor = layer.clone();
    descriptor.media_type = converted.to_string();
    descriptor
}

/// Makes the history agree with the layers: the last history entries that are not
/// `empty_layer` belong to the new layers, in order; an entry whose layer turned out empty is
/// marked `empty_layer`; new layers without an entry get one; and if the base layers have
/// fewer entries than layers, placeholders are put first (as BuildKit does), so that the
/// non-empty entries are exactly one per layer.
fn normalize_history(
    mut history: Vec<History>,
    new_layers: &[ExportedLayer],
    total_layers: usize,
) -> Vec<History> {
    let non_empty: Vec<usize> = history
        .iter()
        .enumerate()
        .filter(|(_, entry)| !entry.empty_layer)
        .map(|(index, _)| index)
        .collect();
    let matched = non_empty.len().min(new_layers.len());
    let unmatched_layers = new_layers.len() - matched;
    let entries = &non_empty[non_empty.len() - matched..];
    for (entry_index, layer) in entries.iter().zip(&new_layers[unmatched_layers..]) {
        if layer.empty {
            history[*entry_index].empty_layer = true;
        }
    }
    let missing: Vec<History> = new_layers[..unmatched_layers]
        .iter()
        .map(|layer| History {
            created_by: Some("kiln: layer without history".to_string()),
            empty_layer: layer.empty,
            ..History::default()
        })
        .collect();
    let insert_at = entries.first().copied().unwrap_or(history.len());
    history.splice(insert_at..insert_at, missing);
    let described = history.iter().filter(|entry| !entry.empty_layer).count();
    if described < total_layers {
        let placeholders = (0..total_layers - described).map(|_| History::default());
        history.splice(0..0, placeholders);
    }
    history
}

/// SOURCE_DATE_EPOCH: the image's `created` is the epoch, and history times after it (or
/// unreadable) become the epoch.
fn clamp_times(config: &mut ImageSpec, epoch: i64) {
    let epoch_text = format_rfc3339(epoch);
    config.created = Some(epoch_text.clone());
    for entry in &mut config.history {
        if let Some(created) = &entry.created {
            let after_epoch = parse_rfc3339(created).is_none_or(|time| time > epoch);
            if after_epoch {
                entry.created = Some(epoch_text.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(empty: bool) -> ExportedLayer {
        ExportedLayer {
            descriptor: Descriptor::new(media_type::OCI_LAYER_GZIP, Digest::of_bytes(b"l"), 1),
            diff_id: Digest::of_bytes(b"d"),
            uncompressed_size: 1,
            empty,
            reused: false,
        }
    }

    fn entry(name: &str, empty_layer: bool) -> History {
        History {
            created_by: Some(name.to_string()),
            empty_layer,
            ..History::default()
        }
    }

    #[test]
    fn empty_layers_are_marked_in_history() {
        let history = vec![
            entry("base", false),
            entry("ENV", true),
            entry("RUN a", false),
            entry("RUN b", false),
        ];
        let result = normalize_history(history, &[layer(true), layer(false)], 2);
        let flags: Vec<bool> = result.iter().map(|entry| entry.empty_layer).collect();
        assert_eq!(flags, [false, true, true, false]);
    }

    #[test]
    fn missing_history_is_filled() {
        let result = normalize_history(vec![entry("RUN", false)], &[layer(false), layer(false)], 3);
        let names: Vec<Option<&str>> = result.iter().map(|e| e.created_by.as_deref()).collect();
        assert_eq!(
            names,
            [None, Some("kiln: layer without history"), Some("RUN")]
        );
    }

    #[test]
    fn epoch_clamps_later_times_only() {
        let mut config = ImageSpec {
            created: Some("2030-01-01T00:00:00Z".into()),
            history: vec![
                History {
                    created: Some("2001-01-01T00:00:00Z".into()),
                    ..History::default()
                },
                History {
                    created: Some("2030-01-01T00:00:00Z".into()),
                    ..History::default()
                },
            ],
            ..ImageSpec::default()
        };
        clamp_times(&mut config, 1_577_836_800);
        assert_eq!(config.created.as_deref(), Some("2020-01-01T00:00:00Z"));
        assert_eq!(
            config.history[0].created.as_deref(),
            Some("2001-01-01T00:00:00Z")
        );
        assert_eq!(
            config.history[1].created.as_deref(),
            Some("2020-01-01T00:00:00Z")
        );
    }
}
