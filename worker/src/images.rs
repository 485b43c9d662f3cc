//! Image sources: a base image's reference resolved to a manifest digest (the op's cache key),
//! then its layers made available as snapshots (pulled into the store when missing).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use kiln_frontend::dag::ImageSource;
use kiln_snapshotter::{Lease, SnapshotId, Store};
use kiln_solver::{ExecContext, WorkerError};
use kiln_types::{Digest, ImageSpec, Platform};

/// A reference resolved for one platform.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference the manifest was found under (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// The single-platform manifest's digest: the image source's cache key.
    pub manifest_digest: Digest,
}

/// A boxed future, for the provider trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where images come from: the store, and a registry behind it. Implemented by the image
/// crate (pull); a store-only provider serves tests and offline builds.
pub trait ImageProvider: Send + Sync {
    /// Resolves `reference` for `platform`; with `pull`, asks the registry even when the store
    /// has the tag.
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
        pull: bool,
    ) -> BoxFuture<'a, Result<ResolvedImage, WorkerError>>;

    /// Makes every layer of a resolved image a snapshot in the store (pulling what is
    /// missing) and returns the top one (`None` for an image without layers). `progress`
    /// receives a line of text now and then.
    fn materialize<'a>(
        &'a self,
        store: &'a Store,
        lease: &'a Lease,
        image: &'a ResolvedImage,
        platform: &'a Platform,
        progress: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, WorkerError>>;

    /// The image config of a resolved image (for the frontend: ENV, ONBUILD...).
    fn config<'a>(
        &'a self,
        image: &'a ResolvedImage,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ImageSpec, WorkerError>>;
}

/// The image sources of one build: a provider, the `--pull` policy and the resolutions made
/// so far (each reference is resolved once per build).
pub struct ImageSources {
    provider: Arc<dyn ImageProvider>,
    pull: bool,
    resolved: Mutex<HashMap<(String, String), ResolvedImage>>,
}

impl ImageSources {
    pub fn new(provider: Arc<dyn ImageProvider>, pull: bool) -> Self {
        ImageSources {
            provider,
            pull,
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// The provider, for the frontend's config lookups.
    pub fn provider(&self) -> &Arc<dyn ImageProvider> {
        &self.provider
    }

    /// Resolves an image source (once per build).
    pub async fn resolve(&self, source: &ImageSource) -> Result<ResolvedImage, WorkerError> {
        let key = (source.reference.clone(), source.platform.to_string());
        if let Some(found) = self.lock().get(&key) {
            return Ok(found.clone());
        }
        let resolved = self
            .provider
            .resolve(&source.reference, &source.platform, self.pull)
            .await?;
        self.lock().insert(key, resolved.clone());
        Ok(resolved)
    }

    /// Every resolution made so far: (reference, platform, manifest digest).
    pub fn resolutions(&self) -> Vec<(String, String, Digest)> {
        self.lock()
            .iter()
            .map(|((reference, platform), image)| {
                (
                    reference.clone(),
                    platform.clone(),
                    image.manifest_digest.clone(),
                )
            })
            .collect()
    }

    /// The image's top snapshot, pulled if needed.
    pub async fn materialize(
        &self,
        store: &Store,
        lease: &Lease,
        source: &ImageSource,
        context: &ExecContext,
    ) -> Result<Option<SnapshotId>, WorkerError> {
        let resolved = self.resolve(source).await?;
        let log = |line: &str| {
            context.log(
                kiln_solver::LogStream::Stdout,
                format!("{line}\n").as_bytes(),
            )
        };
        self.provider
            .materialize(store, lease, &resolved, &source.platform, &log)
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ResolvedImage>> {
        self.resolved
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Images from the store only: no registry (offline builds, tests).
pub struct StoreImageProvider {
    pub store: Store,
}

impl StoreImageProvider {
    fn lookup(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<kiln_snapshotter::ResolvedImage, WorkerError> {
        let record = self.store.resolve_image(reference).map_err(|error| {
            format!("{reference}: {error} (not in the local store and no registry to pull from)")
        })?;
        Ok(self.store.resolve_layers(&record.target, platform)?)
    }
}

impl ImageProvider for StoreImageProvider {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
        _pull: bool,
    ) -> BoxFuture<'a, Result<ResolvedImage, WorkerError>> {
        Box::pin(async move {
            let image = self.lookup(reference, platform)?;
            Ok(ResolvedImage {
                reference: reference.to_string(),
                manifest_digest: image.manifest_descriptor.digest,
            })
        })
    }

    fn materialize<'a>(
        &'a self,
        store: &'a Store,
        lease: &'a Lease,
        image: &'a ResolvedImage,
        platform: &'a Platform,
        _progress: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, WorkerError>> {
        Box::pin(async move {
            let resolved = self.lookup(&image.reference, platform)?;
            if resolved.layers.is_empty() {
                return Ok(None);
            }
            let top = resolved.top_snapshot().cloned().ok_or_else(|| {
                format!("{}: layers are not unpacked in the store", image.reference)
            })?;
            for layer in &resolved.layers {
                if let Some(snapshot) = &layer.snapshot {
                    lease.protect_snapshot(snapshot)?;
                }
            }
            let _ = store;
            Ok(Some(top))
        })
    }

    fn config<'a>(
        &'a self,
        image: &'a ResolvedImage,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ImageSpec, WorkerError>> {
        Box::pin(async move { Ok(self.lookup(&image.reference, platform)?.config) })
    }
}
