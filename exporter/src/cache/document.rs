//! The cache manifest: an OCI image manifest whose config is the cache config and whose
//! layers are every blob the config needs, so a registry keeps the blobs alive and a
//! directory of blobs is a valid OCI image layout.

use kiln_types::media_type::OCI_MANIFEST;
use kiln_types::{canonical_json, Descriptor, Digest, ImageManifest};

use super::config::{CacheConfig, CACHE_CONFIG_MEDIA_TYPE};
use crate::error::{ExportError, Result};

/// A cache config and the manifest over it, as bytes ready to store or push.
#[derive(Debug, Clone)]
pub struct CacheDocuments {
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub manifest: Descriptor,
    pub manifest_bytes: Vec<u8>,
    /// The blobs the manifest lists (layers and cache mounts).
    pub blobs: Vec<Descriptor>,
}

/// Serializes `config` (canonical JSON) and the manifest listing its blobs.
pub fn cache_documents(config: &CacheConfig) -> Result<CacheDocuments> {
    let config_bytes = canonical_json(config).map_err(|e| ExportError::json("cache config", e))?;
    let config_descriptor = Descriptor::new(
        CACHE_CONFIG_MEDIA_TYPE,
        Digest::of_bytes(&config_bytes),
        config_bytes.len() as u64,
    );
    let blobs = config.blobs();
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_string()),
        config: config_descriptor.clone(),
        layers: blobs.clone(),
        annotations: None,
        extra: Default::default(),
    };
    let manifest_bytes =
        canonical_json(&manifest).map_err(|e| ExportError::json("cache manifest", e))?;
    let manifest_descriptor = Descriptor::new(
        OCI_MANIFEST,
        Digest::of_bytes(&manifest_bytes),
        manifest_bytes.len() as u64,
    );
    Ok(CacheDocuments {
        config: config_descriptor,
        config_bytes,
        manifest: manifest_descriptor,
        manifest_bytes,
        blobs,
    })
}

/// The config descriptor of a cache manifest, or an error saying what the manifest is.
pub fn cache_config_descriptor(manifest_bytes: &[u8]) -> Result<Descriptor> {
    let manifest: ImageManifest = serde_json::from_slice(manifest_bytes)
        .map_err(|e| ExportError::json("cache manifest", e))?;
    if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
        return Err(ExportError::InvalidCache {
            reason: format!(
                "the manifest's config is {:?}, not a kiln cache config",
                manifest.config.media_type
            ),
        });
    }
    Ok(manifest.config)
}
