//! How the frontend learns a base image's config (ENV, WORKDIR, USER, ONBUILD ...): the
//! `ImageResolver` trait, implemented by the store (pull) and, for tests, by an in-memory map.

use std::collections::HashMap;

use kiln_types::{ImageSpec, Platform};

/// Why a base image's config could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The registry or store said the image does not exist.
    #[error("image {reference} not found")]
    NotFound { reference: String },
    /// Any other failure (network, auth, bad config), as text.
    #[error("resolving {reference}: {message}")]
    Failed { reference: String, message: String },
}

/// Gives the config of a base image for a platform.
pub trait ImageResolver {
    /// The image config of `reference` (fully qualified, `docker.io/library/alpine:3.20`) for
    /// `platform`; `Ok(None)` when it is not known (offline), in which case the frontend
    /// proceeds with an empty config, as for an image with no ENV, WORKDIR, USER or ONBUILD.
    fn resolve_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<ImageSpec>, ResolveError>;
}

/// A resolver that knows nothing: every image is "unknown" (used by `--print-dag` offline).
#[derive(Debug, Clone, Copy, Default)]
pub struct OfflineResolver;

impl ImageResolver for OfflineResolver {
    fn resolve_config(&self, _: &str, _: &Platform) -> Result<Option<ImageSpec>, ResolveError> {
        Ok(None)
    }
}

/// An in-memory resolver: configs by fully qualified reference; others are unknown, or
/// "not found" when `strict`.
#[derive(Debug, Clone, Default)]
pub struct MapResolver {
    pub configs: HashMap<String, ImageSpec>,
    pub strict: bool,
}

impl MapResolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a config for a reference (normalized with [`crate::convert::normalize_reference`]
    /// when it parses, so `alpine` and `docker.io/library/alpine:latest` are the same).
    pub fn with(mut self, reference: &str, config: ImageSpec) -> Self {
        let key = crate::convert::normalize_reference(reference)
            .unwrap_or_else(|_| reference.to_string());
        self.configs.insert(key, config);
        self
    }
}

impl ImageResolver for MapResolver {
    fn resolve_config(
        &self,
        reference: &str,
        _: &Platform,
    ) -> Result<Option<ImageSpec>, ResolveError> {
        match self.configs.get(reference) {
            Some(config) => Ok(Some(config.clone())),
            None if self.strict => Err(ResolveError::NotFound {
                reference: reference.to_string(),
            }),
            None => Ok(None),
        }
    }
}
