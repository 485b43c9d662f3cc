//! The image operations' error type: one enum, with the facts of each failure as fields.

use kiln_registry::{ReferenceError, RegistryError};
use kiln_snapshotter::archive::ArchiveError;
use kiln_snapshotter::StoreError;
use kiln_types::Digest;

/// Everything an image operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A reference does not parse.
    #[error("invalid image reference {text:?}")]
    Reference {
        text: String,
        #[source]
        source: ReferenceError,
    },
    /// A store operation failed (`action` says which).
    #[error("{action}")]
    Store {
        action: String,
        #[source]
        source: StoreError,
    },
    /// Talking to the registry failed (`action` says what for).
    #[error("{action}")]
    Registry {
        action: String,
        #[source]
        source: RegistryError,
    },
    /// Applying a layer failed (bad tar, diffID mismatch, ...).
    #[error("unpacking layer {digest}")]
    Unpack {
        digest: Digest,
        #[source]
        source: ArchiveError,
    },
    /// A layer's media type is not one kiln can unpack.
    #[error("layer {digest} has unsupported media type {media_type:?}")]
    UnsupportedLayer { digest: Digest, media_type: String },
    /// The manifest and its config disagree on the number of layers.
    #[error("manifest {manifest} lists {layers} layers but its config has {diff_ids} diff ids")]
    LayerCountMismatch {
        manifest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    /// A config blob does not parse.
    #[error("image config {digest} does not parse: {message}")]
    BadConfig { digest: Digest, message: String },
    /// No local image by that name or id.
    #[error("no such image: {reference}")]
    NotFound { reference: String },
    /// An image id prefix that fits more than one image.
    #[error("image id prefix {reference:?} matches {count} images")]
    Ambiguous { reference: String, count: usize },
    /// An operation refused because of the state of the store.
    #[error("cannot remove {reference}: {message}")]
    Conflict { reference: String, message: String },
    /// A `--change` instruction that cannot be applied.
    #[error("invalid change {change:?}: {message}")]
    Change { change: String, message: String },
    /// Reading an imported tarball, or another local file operation, failed.
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// A worker task died (panicked or was cancelled).
    #[error("background task failed: {message}")]
    Task { message: String },
}

impl ImageError {
    pub(crate) fn store(action: impl Into<String>) -> impl FnOnce(StoreError) -> ImageError {
        let action = action.into();
        move |source| ImageError::Store { action, source }
    }

    pub(crate) fn registry(action: impl Into<String>) -> impl FnOnce(RegistryError) -> ImageError {
        let action = action.into();
        move |source| ImageError::Registry { action, source }
    }

    pub(crate) fn io(action: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let action = action.into();
        move |source| ImageError::Io { action, source }
    }

    pub(crate) fn task(error: tokio::task::JoinError) -> ImageError {
        ImageError::Task {
            message: error.to_string(),
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;
