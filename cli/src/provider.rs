//! The build's image provider: base images from the local store, pulled from their registry
//! when missing (or always re-resolved with `--pull`).

use kiln_image::{Progress, PullOptions};
use kiln_registry::RegistryClient;
use kiln_snapshotter::{Lease, SnapshotId, Store};
use kiln_solver::WorkerError;
use kiln_types::{ImageSpec, Platform};
use kiln_worker::images::{BoxFuture, ImageProvider, ResolvedImage};

/// Store first, registry behind it.
pub struct RegistryImageProvider {
    pub store: Store,
    pub client: RegistryClient,
}

impl RegistryImageProvider {
    /// The image under `reference` in the store, if it is there for `platform`.
    fn local(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Option<kiln_snapshotter::ResolvedImage> {
        let name = kiln_image::normalize_name(reference).ok()?;
        let record = self.store.image(&name).ok()??;
        let resolved = self.store.resolve_layers(&record.target, platform).ok()?;
        let config = &resolved.config;
        let image_platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
            os_version: None,
        };
        (config.os.is_empty() || platform.matches(&image_platform)).then_some(resolved)
    }
}

impl ImageProvider for RegistryImageProvider {
    fn resolve<'a>(
        &'a self,
        reference: &'a str,
        platform: &'a Platform,
        pull: bool,
    ) -> BoxFuture<'a, Result<ResolvedImage, WorkerError>> {
        Box::pin(async move {
            if !pull {
                if let Some(local) = self.local(reference, platform) {
                    return Ok(ResolvedImage {
                        reference: reference.to_string(),
                        manifest_digest: local.manifest_descriptor.digest,
                    });
                }
            }
            let parsed = kiln_image::parse_reference(reference)?;
            let resolved = self.client.resolve(&parsed, Some(platform)).await?;
            Ok(ResolvedImage {
                reference: reference.to_string(),
                manifest_digest: resolved.manifest.digest.clone(),
            })
        })
    }

    fn materialize<'a>(
        &'a self,
        store: &'a Store,
        lease: &'a Lease,
        image: &'a ResolvedImage,
        platform: &'a Platform,
        progress: &'a (dyn Fn(&str) + Send + Sync),
    ) -> BoxFuture<'a, Result<Option<SnapshotId>, WorkerError>> {
        Box::pin(async move {
            if let Some(local) = self.local(&image.reference, platform) {
                if local.manifest_descriptor.digest == image.manifest_digest {
                    if local.layers.is_empty() {
                        return Ok(None);
                    }
                    if let Some(top) = local.top_snapshot().cloned() {
                        for layer in &local.layers {
                            if let Some(snapshot) = &layer.snapshot {
                                lease.protect_snapshot(snapshot)?;
                            }
                        }
                        return Ok(Some(top));
                    }
                }
            }
            // Pull by digest so the layers are exactly the resolved manifest's, and tag the
            // name the Dockerfile used, as `docker build` leaves pulled bases behind.
            let parsed = kiln_image::parse_reference(&image.reference)?;
            progress(&format!("pulling {parsed}"));
            let options = PullOptions::default().with_platform(Some(platform.clone()));
            let pulled =
                kiln_image::pull(store, &self.client, &parsed, &options, &Progress::none()).await?;
            if pulled.manifest.digest != image.manifest_digest {
                return Err(format!(
                    "{}: the registry's manifest changed during the build ({} then {})",
                    image.reference, image.manifest_digest, pulled.manifest.digest
                )
                .into());
            }
            for snapshot in &pulled.snapshots {
                lease.protect_snapshot(snapshot)?;
            }
            Ok(pulled.top_snapshot().cloned())
        })
    }

    fn config<'a>(
        &'a self,
        image: &'a ResolvedImage,
        platform: &'a Platform,
    ) -> BoxFuture<'a, Result<ImageSpec, WorkerError>> {
        Box::pin(async move {
            match self.local(&image.reference, platform) {
                Some(local) => Ok(local.config),
                None => Err(format!("{}: not in the store", image.reference).into()),
            }
        })
    }
}
