//! Inline cache (`--cache-to type=inline`): the cache config embedded in the image config
//! under the field [`INLINE_CACHE_FIELD`] (BuildKit uses `moby.buildkit.cache.v0`), its
//! layers being the image's own layers, so pushing the image pushes its cache.

use kiln_snapshotter::{Lease, Store};
use kiln_types::{canonical_json, Descriptor};

use super::config::CacheConfig;
use crate::error::{ExportError, Result};
use crate::image::BuiltImage;

/// The image config field holding an inline cache config.
pub const INLINE_CACHE_FIELD: &str = "kiln.cache.v1";

/// Stores a copy of `built` whose config carries `cache` (config and manifest rewritten:
/// new digests). Layers stay as they are.
pub fn embed_inline_cache(
    store: &Store,
    lease: &Lease,
    built: &BuiltImage,
    cache: &CacheConfig,
) -> Result<BuiltImage> {
    let mut config = built.config.clone();
    let value = serde_json::to_value(cache).map_err(|e| ExportError::json("cache config", e))?;
    config.extra.insert(INLINE_CACHE_FIELD.to_string(), value);
    let config_bytes = canonical_json(&config).map_err(|e| ExportError::json("image config", e))?;
    let (config_digest, config_size) = store.content().put_bytes(lease, &config_bytes, None)?;
    let config_descriptor = Descriptor::new(
        built.config_descriptor.media_type.clone(),
        config_digest,
        config_size,
    );
    let mut manifest = built.manifest.clone();
    manifest.config = config_descriptor.clone();
    let manifest_bytes =
        canonical_json(&manifest).map_err(|e| ExportError::json("image manifest", e))?;
    let (manifest_digest, manifest_size) =
        store.content().put_bytes(lease, &manifest_bytes, None)?;
    Ok(BuiltImage {
        manifest_descriptor: Descriptor::new(
            built.manifest_descriptor.media_type.clone(),
            manifest_digest,
            manifest_size,
        ),
        manifest,
        config_descriptor,
        config,
        new_layers: built.new_layers.clone(),
    })
}

/// The inline cache of an image config (its bytes), if it has one.
pub fn inline_cache_of(config_bytes: &[u8]) -> Result<Option<CacheConfig>> {
    let mut value: serde_json::Value =
        serde_json::from_slice(config_bytes).map_err(|e| ExportError::json("image config", e))?;
    let Some(inline) = value
        .as_object_mut()
        .and_then(|object| object.remove(INLINE_CACHE_FIELD))
    else {
        return Ok(None);
    };
    let config: CacheConfig =
        serde_json::from_value(inline).map_err(|e| ExportError::json("inline cache", e))?;
    config.validate()?;
    Ok(Some(config))
}
