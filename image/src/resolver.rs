//! [`StoreResolver`]: the frontend's `ImageResolver` over the local store, then a registry.

use std::future::Future;

use kiln_frontend::resolver::{ImageResolver, ResolveError};
use kiln_registry::{RegistryClient, RegistryError};
use kiln_snapshotter::{Store, MAX_DOCUMENT_SIZE};
use kiln_types::{ImageSpec, Platform};
use tokio::runtime::{Handle, RuntimeFlavor};

use crate::reference::{parse_reference, store_name};

/// Looks a base image's config up in the local store first (so `kiln import x.tar busybox`
/// then `FROM busybox` works with no registry), then, if it has a client, in the registry
/// (manifest and config only: the layers are pulled when the build needs them).
///
/// The trait is synchronous; the registry lookup runs on the caller's multi-threaded tokio
/// runtime when there is one (`block_in_place`), else on a runtime of its own.
#[derive(Debug, Clone)]
pub struct StoreResolver {
    store: Store,
    client: Option<RegistryClient>,
}

impl StoreResolver {
    /// A resolver over `store`, falling back to `client`'s registries when given.
    pub fn new(store: Store, client: Option<RegistryClient>) -> Self {
        StoreResolver { store, client }
    }

    fn local(&self, name: &str, platform: &Platform) -> Result<Option<ImageSpec>, ResolveError> {
        let failed = |message: String| ResolveError::Failed {
            reference: name.to_string(),
            message,
        };
        let Some(record) = self
            .store
            .image(name)
            .map_err(|error| failed(error.to_string()))?
        else {
            return Ok(None);
        };
        let resolved = self
            .store
            .resolve_layers(&record.target, platform)
            .map_err(|error| failed(error.to_string()))?;
        let config = resolved.config;
        let image_platform = Platform {
            os: config.os.clone(),
            architecture: config.architecture.clone(),
            variant: config.variant.clone(),
            ..Platform::host()
        };
        // An image of another platform under this name is not the one asked for.
        if !config.os.is_empty() && !platform.matches(&image_platform) {
            return Ok(None);
        }
        Ok(Some(config))
    }

    async fn remote(
        client: RegistryClient,
        reference: kiln_registry::Reference,
        platform: Platform,
    ) -> Result<ImageSpec, RegistryError> {
        let resolved = client.resolve(&reference, Some(&platform)).await?;
        let bytes = client
            .fetch_blob_bytes(
                &resolved.reference,
                &resolved.manifest.manifest.config,
                MAX_DOCUMENT_SIZE,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|error| RegistryError::InvalidResponse {
            url: format!(
                "{}@{}",
                reference.name(),
                resolved.manifest.manifest.config.digest
            ),
            message: format!("image config does not parse: {error}"),
        })
    }
}

impl ImageResolver for StoreResolver {
    fn resolve_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ImageSpec>, ResolveError> {
        let parsed = parse_reference(reference).map_err(|error| ResolveError::Failed {
            reference: reference.to_string(),
            message: error.to_string(),
        })?;
        if let Some(config) = self.local(&store_name(&parsed), platform)? {
            return Ok(Some(config));
        }
        let Some(client) = self.client.clone() else {
            return Err(ResolveError::NotFound {
                reference: reference.to_string(),
            });
        };
        let result = block_on(Self::remote(client, parsed, platform.clone())).map_err(|error| {
            ResolveError::Failed {
                reference: reference.to_string(),
                message: format!("cannot start an async runtime: {error}"),
            }
        })?;
        match result {
            Ok(config) => Ok(Some(config)),
            Err(RegistryError::NotFound { .. }) => Err(ResolveError::NotFound {
                reference: reference.to_string(),
            }),
            Err(error) => Err(ResolveError::Failed {
                reference: reference.to_string(),
                message: error.to_string(),
            }),
        }
    }
}

/// Runs a future to completion from synchronous code, whatever runtime (if any) the caller
/// is in.
fn block_on<F>(future: F) -> std::io::Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    if let Ok(handle) = Handle::try_current() {
        if handle.runtime_flavor() == RuntimeFlavor::MultiThread {
            return Ok(tokio::task::block_in_place(|| handle.block_on(future)));
        }
    }
    // Not in a runtime, or in a current-thread one that this thread must not block: a
    // runtime of our own on a thread of our own.
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|runtime| runtime.block_on(future))
        });
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}
