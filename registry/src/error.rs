//! The registry client's error type.

use kiln_types::Digest;

use crate::reference::ReferenceError;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error(transparent)]
    Reference(#[from] ReferenceError),

    #[error("request to {url} failed")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },

    #[error("{method} {url}: {status}: {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },

    #[error("{registry}: authentication failed: {message}")]
    Unauthorized { registry: String, message: String },

    #[error("{registry}: token request to {realm} failed: {message}")]
    Token {
        registry: String,
        realm: String,
        message: String,
    },

    #[error("{reference}: not found: {message}")]
    NotFound { reference: String, message: String },

    #[error("{reference}: manifest is {size} bytes, over the {limit} byte limit")]
    ManifestTooLarge {
        reference: String,
        size: u64,
        limit: u64,
    },

    #[error("{reference}: schema1 manifests are not supported; push the image again with a current client")]
    Schema1 { reference: String },

    #[error("{reference}: manifest mediaType {media_type:?} disagrees with Content-Type {content_type:?}")]
    MediaTypeMismatch {
        reference: String,
        content_type: String,
        media_type: String,
    },

    #[error("{reference}: unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType {
        reference: String,
        media_type: String,
    },

    #[error("{reference}: invalid manifest")]
    InvalidManifest {
        reference: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("digest mismatch: expected {expected}, got {found}")]
    DigestMismatch { expected: Digest, found: Digest },

    #[error("size mismatch for {digest}: expected {expected} bytes, got {found}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        found: u64,
    },

    #[error("{reference}: no manifest for platform {wanted} (available: {})", available.join(", "))]
    PlatformNotFound {
        reference: String,
        wanted: String,
        available: Vec<String>,
    },

    #[error("{reference}: image index nested deeper than {depth} levels")]
    IndexTooDeep { reference: String, depth: usize },

    #[error("{url}: more than {limit} redirects")]
    TooManyRedirects { url: String, limit: usize },

    #[error("refusing redirect from {from} to {to}: HTTPS to plain HTTP")]
    InsecureRedirect { from: String, to: String },

    #[error("{url}: invalid response: {message}")]
    InvalidResponse { url: String, message: String },

    #[error("credentials file {path}: {message}")]
    Credentials { path: String, message: String },

    #[error("reading or writing blob data")]
    Io(#[from] std::io::Error),

    #[error("invalid client option: {message}")]
    InvalidOption { message: String },
}

impl RegistryError {
    /// Whether retrying the same request may succeed (network faults and overload answers).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { source, .. } => {
                source.is_timeout()
                    || source.is_connect()
                    || source.is_request()
                    || source.is_body()
                    || source.is_decode()
            }
            RegistryError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..=599).contains(status)
            }
            _ => false,
        }
    }
}
