//! Pushing a stored image to a registry: every blob HEAD-checked first and skipped when the
//! registry has it, mounted from another repository of the same registry when a stored image
//! of that repository holds it, uploaded otherwise (the client picks a monolithic PUT for small
//! blobs and PATCH chunks for large ones); layers in parallel (bounded), then configs, then
//! the manifests (an index's children by digest), the top one last under the tag.
//!
//! Nothing is remembered between runs: a push that died half-way is simply run again, and
//! what reached the registry the first time is found by the HEAD checks.
//!
//! # Where a blob came from
//! The store does not record the repository each blob was pulled from. Instead every stored
//! image named on the same registry (in another repository) is looked at: a blob one of them
//! holds is mounted from its repository. A built image whose base was pulled from the target
//! registry thus mounts the base layers. A failed mount falls back to an upload.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use kiln_registry::{BlobPushOutcome, BlobSource, Reference, RegistryClient};
use kiln_snapshotter::Store;
use kiln_types::{media_type, Descriptor, Digest, Platform};

use crate::archive::resolve_for_archive;
use crate::error::{ExportError, Result};
use crate::layer::{LayerExporter, LayerOptions};

/// Layers uploaded at once by default (`docker push` uses 5).
pub const DEFAULT_CONCURRENT_UPLOADS: usize = 5;

/// What a push reports as it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushEvent {
    /// A blob is being checked or sent.
    Preparing { digest: Digest, size: u64 },
    /// A blob is done.
    BlobDone {
        digest: Digest,
        size: u64,
        outcome: BlobPushOutcome,
        /// The repository it was mounted from, for a mount.
        mounted_from: Option<String>,
    },
    /// A manifest was stored under `reference`.
    ManifestPushed { reference: String, digest: Digest },
}

/// A callback receiving [`PushEvent`]s, from any thread.
pub type PushProgress = Arc<dyn Fn(PushEvent) + Send + Sync>;

/// How to push.
#[derive(Clone)]
pub struct PushOptions {
    /// Layers uploaded at once (at least 1).
    pub max_concurrent_uploads: usize,
    /// The platform pushed from a multi-platform image whose other platforms are not stored.
    pub platform: Platform,
    /// Look for other stored images of the same registry to mount blobs from.
    pub mount_from_other_repositories: bool,
    pub progress: Option<PushProgress>,
    /// Compress the layers a stored single-platform image keeps uncompressed (kiln's store
    /// keeps built layers uncompressed, as Docker's does) this way before pushing, as
    /// `docker push` does; `None` pushes the stored manifest as it is.
    pub compress_uncompressed: Option<LayerOptions>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            max_concurrent_uploads: DEFAULT_CONCURRENT_UPLOADS,
            platform: Platform::host(),
            mount_from_other_repositories: true,
            progress: None,
            compress_uncompressed: Some(LayerOptions::default()),
        }
    }
}

impl std::fmt::Debug for PushOptions {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PushOptions")
            .field("max_concurrent_uploads", &self.max_concurrent_uploads)
            .field("platform", &self.platform)
            .field(
                "mount_from_other_repositories",
                &self.mount_from_other_repositories,
            )
            .finish_non_exhaustive()
    }
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The reference the top manifest was stored under.
    pub reference: Reference,
    /// The pushed manifest (or index): its digest, size and media type.
    pub descriptor: Descriptor,
    /// Every blob (layers and configs) and what happened to it.
    pub blobs: Vec<(Digest, BlobPushOutcome)>,
}

impl PushReport {
    /// How many blobs had this outcome.
    pub fn count(&self, outcome: BlobPushOutcome) -> usize {
        self.blobs
            .iter()
            .filter(|(_, found)| *found == outcome)
            .count()
    }
}

/// Pushes the stored image `target` (a manifest or an index; `name` is used in errors) to
/// `reference`, which must name a tag or a digest.
pub async fn push_image(
    store: &Store,
    client: &RegistryClient,
    name: &str,
    target: &Descriptor,
    reference: &Reference,
    options: &PushOptions,
) -> Result<PushReport> {
    let compressed;
    let target = match &options.compress_uncompressed {
        Some(layer_options) => {
            let (store, target, platform, layer_options) = (
                store.clone(),
                target.clone(),
                options.platform.clone(),
                *layer_options,
            );
            compressed = tokio::task::spawn_blocking(move || {
                compress_uncompressed_layers(&store, &target, &platform, &layer_options)
            })
            .await
            .map_err(|error| ExportError::UnexportableImage {
                name: name.to_string(),
                reason: format!("compressing layers: {error}"),
            })??;
            &compressed
        }
        None => target,
    };
    let resolved = resolve_for_archive(store, name, target, &options.platform, true)?;
    let (documents, blobs): (Vec<Descriptor>, Vec<Descriptor>) =
        resolved.blobs.iter().cloned().partition(|descriptor| {
            media_type::is_manifest(&descriptor.media_type)
                || media_type::is_index(&descriptor.media_type)
        });
    let configs: Vec<Descriptor> = blobs
        .iter()
        .filter(|descriptor| is_config(descriptor))
        .cloned()
        .collect();
    let layers: Vec<Descriptor> = blobs
        .iter()
        .filter(|descriptor| !is_config(descriptor))
        .cloned()
        .collect();
    let mount_sources = if options.mount_from_other_repositories {
        mount_sources(store, reference, &options.platform)
    } else {
        HashMap::new()
    };
    let mount_sources = Arc::new(mount_sources);

    let mut report_blobs = Vec::new();
    report_blobs
        .extend(push_blobs(store, client, reference, layers, &mount_sources, options).await?);
    report_blobs
        .extend(push_blobs(store, client, reference, configs, &mount_sources, options).await?);

    // Child manifests of an index go first, by digest; the top one last, under the tag.
    for document in documents.iter().filter(|d| d.digest != resolved.top.digest) {
        let bytes = read_blob(store, document)?;
        let by_digest = Reference::from_parts(
            reference.registry(),
            reference.repository(),
            None,
            Some(&document.digest),
        )
        .map_err(|error| ExportError::UnexportableImage {
            name: name.to_string(),
            reason: error.to_string(),
        })?;
        client
            .push_manifest(&by_digest, &document.media_type, bytes)
            .await
            .map_err(|source| ExportError::Registry {
                action: format!("pushing manifest {}", document.digest),
                source,
            })?;
        emit(
            options,
            PushEvent::ManifestPushed {
                reference: by_digest.to_string(),
                digest: document.digest.clone(),
            },
        );
    }
    let top = &resolved.top;
    let bytes = read_blob(store, top)?;
    let digest = client
        .push_manifest(reference, &top.media_type, bytes)
        .await
        .map_err(|source| ExportError::Registry {
            action: format!("pushing manifest {} to {reference}", top.digest),
            source,
        })?;
    emit(
        options,
        PushEvent::ManifestPushed {
            reference: reference.to_string(),
            digest,
        },
    );
    Ok(PushReport {
        reference: reference.clone(),
        descriptor: Descriptor::new(top.media_type.clone(), top.digest.clone(), top.size),
        blobs: report_blobs,
    })
}

/// `target` itself, or, when it is a single-platform manifest with uncompressed layers, a
/// manifest (stored now) whose uncompressed layers are compressed as `layer_options` say;
/// each conversion is recorded against the layer's snapshot when it is unpacked, so the next
/// push reuses it. The config (and so the image id) is the same.
pub fn compress_uncompressed_layers(
    store: &Store,
    target: &Descriptor,
    platform: &Platform,
    layer_options: &LayerOptions,
) -> Result<Descriptor> {
    if !media_type::is_manifest(&target.media_type) {
        return Ok(target.clone());
    }
    let resolved = store.resolve_layers(target, platform)?;
    let uncompressed = |descriptor: &Descriptor| {
        media_type::layer_compression(&descriptor.media_type)
            == Some(media_type::Compression::Uncompressed)
    };
    if !resolved
        .layers
        .iter()
        .any(|layer| uncompressed(&layer.descriptor))
    {
        return Ok(target.clone());
    }
    let lease = store.lease("push: compressing layers")?;
    let exporter = LayerExporter::new(store);
    let mut manifest = resolved.manifest.clone();
    // OCI manifests get OCI layer types, Docker's Docker's
    let mut options = *layer_options;
    options.oci_media_types = options.oci_media_types
        || target.media_type == media_type::OCI_MANIFEST
        || options.compression == media_type::Compression::Zstd;
    for (position, layer) in resolved.layers.iter().enumerate() {
        if !uncompressed(&layer.descriptor) {
            continue;
        }
        let converted = exporter.convert_layer(
            &lease,
            &layer.descriptor,
            &layer.diff_id,
            layer.snapshot.as_ref(),
            &options,
        )?;
        if let Some(entry) = manifest.layers.get_mut(position) {
            *entry = converted;
        }
    }
    let bytes =
        kiln_types::canonical_json(&manifest).map_err(|error| ExportError::UnexportableImage {
            name: target.digest.to_string(),
            reason: format!("encoding the manifest: {error}"),
        })?;
    let (digest, size) = store.content().put_bytes(&lease, &bytes, None)?;
    Ok(Descriptor::new(target.media_type.clone(), digest, size))
}

fn is_config(descriptor: &Descriptor) -> bool {
    descriptor.media_type == media_type::OCI_CONFIG
        || descriptor.media_type == media_type::DOCKER_CONFIG
        || descriptor.media_type.ends_with("config.v1+json")
        || descriptor.media_type.ends_with("container.image.v1+json")
}

fn emit(options: &PushOptions, event: PushEvent) {
    if let Some(progress) = &options.progress {
        progress(event);
    }
}

fn read_blob(store: &Store, descriptor: &Descriptor) -> Result<Bytes> {
    let bytes = store
        .content()
        .read_bytes(&descriptor.digest, kiln_snapshotter::MAX_DOCUMENT_SIZE)?;
    Ok(Bytes::from(bytes))
}

/// Blob digest -> a repository of the same registry that a stored image says holds it.
fn mount_sources(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
) -> HashMap<Digest, Reference> {
    let mut sources = HashMap::new();
    let Ok(images) = store.images() else {
        return sources;
    };
    for image in images {
        let Ok(parsed) = Reference::parse(&image.name) else {
            continue;
        };
        if parsed.registry() != reference.registry()
            || parsed.repository() == reference.repository()
        {
            continue;
        }
        let Ok(resolved) = store.resolve_layers(&image.target, platform) else {
            continue;
        };
        let blobs = resolved
            .manifest
            .layers
            .iter()
            .chain(std::iter::once(&resolved.manifest.config));
        for layer in blobs {
            sources
                .entry(layer.digest.clone())
                .or_insert_with(|| parsed.clone());
        }
    }
    sources
}

/// Pushes `blobs` with at most `max_concurrent_uploads` tasks at once.
async fn push_blobs(
    store: &Store,
    client: &RegistryClient,
    reference: &Reference,
    blobs: Vec<Descriptor>,
    mount_sources: &Arc<HashMap<Digest, Reference>>,
    options: &PushOptions,
) -> Result<Vec<(Digest, BlobPushOutcome)>> {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(
        options.max_concurrent_uploads.max(1),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (position, descriptor) in blobs.into_iter().enumerate() {
        let size = store.content().size(&descriptor.digest)?;
        if size != descriptor.size {
            return Err(ExportError::UnexportableImage {
                name: descriptor.digest.to_string(),
                reason: format!(
                    "the stored blob has {size} bytes, its descriptor says {}",
                    descriptor.size
                ),
            });
        }
        let path = store.content().blob_path(&descriptor.digest);
        let client = client.clone();
        let reference = reference.clone();
        let semaphore = semaphore.clone();
        let mount_sources = mount_sources.clone();
        let options = options.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            emit(
                &options,
                PushEvent::Preparing {
                    digest: descriptor.digest.clone(),
                    size: descriptor.size,
                },
            );
            let mount_from = mount_sources.get(&descriptor.digest);
            let outcome = client
                .push_blob_mounting(&reference, &descriptor, BlobSource::File(path), mount_from)
                .await
                .map_err(|source| ExportError::Registry {
                    action: format!("pushing blob {} to {reference}", descriptor.digest),
                    source,
                })?;
            emit(
                &options,
                PushEvent::BlobDone {
                    digest: descriptor.digest.clone(),
                    size: descriptor.size,
                    outcome,
                    mounted_from: mount_from
                        .filter(|_| outcome == BlobPushOutcome::Mounted)
                        .map(|from| from.name()),
                },
            );
            Ok::<_, ExportError>((position, descriptor.digest, outcome))
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(result)) => done.push(result),
            Ok(Err(error)) => {
                tasks.abort_all();
                return Err(error);
            }
            Err(join_error) => {
                tasks.abort_all();
                return Err(ExportError::io(
                    "a push task failed",
                    std::io::Error::other(join_error.to_string()),
                ));
            }
        }
    }
    done.sort_by_key(|(position, _, _)| *position);
    Ok(done
        .into_iter()
        .map(|(_, digest, outcome)| (digest, outcome))
        .collect())
}
