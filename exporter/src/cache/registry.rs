//! A cache in a registry (`--cache-to type=registry,ref=REF`): the blobs pushed to REF's
//! repository (mounted from another repository of the same registry when one is known to
//! hold them, so base image layers are never uploaded again), then the cache config and the
//! cache manifest tagged REF. Reading accepts that, or an image whose config carries an
//! inline cache (`--cache-from REF` alone, as BuildKit).

use std::collections::HashMap;

use bytes::Bytes;
use kiln_registry::{BlobSource, FetchedManifest, Reference, RegistryClient, RegistryError};
use kiln_snapshotter::{Store, MAX_DOCUMENT_SIZE};
use kiln_types::media_type::OCI_MANIFEST;
use kiln_types::{Descriptor, Digest};

use super::config::{CacheConfig, CACHE_CONFIG_MEDIA_TYPE};
use super::document::cache_documents;
use super::inline::inline_cache_of;
use crate::error::{ExportError, Result};

fn registry_error(action: String) -> impl FnOnce(RegistryError) -> ExportError {
    move |source| ExportError::Registry { action, source }
}

/// What a registry export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryExportReport {
    /// The pushed cache manifest's digest.
    pub manifest: Option<Digest>,
    pub blobs_uploaded: usize,
    pub blobs_mounted: usize,
    pub blobs_present: usize,
}

/// Pushes `config`'s blobs (from the content store; a blob the store lacks must be in the
/// repository already), the config and the manifest to `reference`. `mount_from` names, per blob, a repository that may hold it already.
pub async fn export_registry(
    client: &RegistryClient,
    store: &Store,
    reference: &Reference,
    config: &CacheConfig,
    mount_from: &HashMap<Digest, Reference>,
) -> Result<RegistryExportReport> {
    let documents = cache_documents(config)?;
    let mut report = RegistryExportReport::default();
    for blob in &documents.blobs {
        let source = BlobSource::File(store.content().blob_path(&blob.digest));
        if !store.content().exists(&blob.digest) {
            // A record carried over from an imported cache: fine if the target has it.
            let present =
                client
                    .blob_exists(reference, &blob.digest)
                    .await
                    .map_err(registry_error(format!(
                        "checking blob {} in {reference}",
                        blob.digest
                    )))?;
            if present.is_some() {
                report.blobs_present += 1;
                continue;
            }
            return Err(ExportError::InvalidCache {
                reason: format!(
                    "blob {} of the cache is neither in the content store nor in {reference}",
                    blob.digest
                ),
            });
        }
        let outcome = client
            .push_blob_mounting(reference, blob, source, mount_from.get(&blob.digest))
            .await
            .map_err(registry_error(format!(
                "pushing cache blob {} to {reference}",
                blob.digest
            )))?;
        match outcome {
            kiln_registry::BlobPushOutcome::AlreadyPresent => report.blobs_present += 1,
            kiln_registry::BlobPushOutcome::Mounted => report.blobs_mounted += 1,
            kiln_registry::BlobPushOutcome::Uploaded => report.blobs_uploaded += 1,
        }
    }
    client
        .push_blob(
            reference,
            &documents.config,
            BlobSource::Bytes(Bytes::from(documents.config_bytes.clone())),
        )
        .await
        .map_err(registry_error(format!(
            "pushing the cache config to {reference}"
        )))?;
    let digest = client
        .push_manifest(
            reference,
            OCI_MANIFEST,
            Bytes::from(documents.manifest_bytes.clone()),
        )
        .await
        .map_err(registry_error(format!(
            "pushing the cache manifest to {reference}"
        )))?;
    report.manifest = Some(digest);
    Ok(report)
}

/// Reads the cache at `reference`: a cache manifest, or an image (or index: the host's
/// platform) with an inline cache. `None` when the reference does not exist or is an image
/// without inline cache.
pub async fn import_registry(
    client: &RegistryClient,
    reference: &Reference,
) -> Result<Option<CacheConfig>> {
    let fetched = match client.fetch_manifest(reference).await {
        Ok(fetched) => fetched,
        Err(RegistryError::NotFound { .. }) => return Ok(None),
        Err(error) => {
            return Err(ExportError::Registry {
                action: format!("reading the cache manifest {reference}"),
                source: error,
            })
        }
    };
    let (reference, manifest) = match fetched {
        FetchedManifest::Image(manifest) => (reference.clone(), manifest),
        FetchedManifest::Index(_) => {
            let resolved = client
                .resolve(reference, None)
                .await
                .map_err(registry_error(format!("resolving {reference}")))?;
            (resolved.reference.clone(), resolved.manifest)
        }
    };
    let config_descriptor = &manifest.manifest.config;
    let bytes = fetch_document(client, &reference, config_descriptor).await?;
    if config_descriptor.media_type == CACHE_CONFIG_MEDIA_TYPE {
        return CacheConfig::from_slice(&bytes).map(Some);
    }
    inline_cache_of(&bytes)
}

async fn fetch_document(
    client: &RegistryClient,
    reference: &Reference,
    descriptor: &Descriptor,
) -> Result<Vec<u8>> {
    client
        .fetch_blob_bytes(reference, descriptor, MAX_DOCUMENT_SIZE)
        .await
        .map(|bytes| bytes.to_vec())
        .map_err(registry_error(format!(
            "fetching {} from {reference}",
            descriptor.digest
        )))
}
