//! The exporter's error type: one enum, with the facts of each failure as fields.

use std::path::PathBuf;

use kiln_snapshotter::archive::ArchiveError;
use kiln_snapshotter::StoreError;
use kiln_types::Digest;

/// Everything that can go wrong while exporting layers and images or reading and writing
/// image archives.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// The store refused an operation.
    #[error("store")]
    Store(#[from] StoreError),
    /// Writing or applying a layer tar failed.
    #[error("layer")]
    Archive(#[from] ArchiveError),
    /// Compressing a layer or writing an archive failed.
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
    /// A file of the input archive or layout cannot be read.
    #[error("cannot read {path}")]
    ReadInput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The snapshot is not committed (its files may still change).
    #[error("snapshot {id} is not committed")]
    SnapshotNotCommitted { id: String },
    /// The caller's base layers and diff ids do not pair up.
    #[error("base image has {layers} layers but {diff_ids} diff ids")]
    BaseMismatch { layers: usize, diff_ids: usize },
    /// A base layer blob is not in the content store.
    #[error("base image layer {digest} is not in the content store")]
    BaseLayerMissing { digest: Digest },
    /// A layer's uncompressed bytes do not hash to the diffID the image lists for it.
    #[error("layer {layer} has diffID {found}, the image lists {expected}")]
    DiffIdMismatch {
        layer: Digest,
        expected: Digest,
        found: Digest,
    },
    /// JSON could not be written or read.
    #[error("{document} is not valid JSON: {message}")]
    Json { document: String, message: String },
    /// An archive is neither a docker-archive nor an OCI image layout.
    #[error("{path} is not a docker-archive or an OCI image layout: {reason}")]
    UnknownArchive { path: PathBuf, reason: String },
    /// A document of the archive is missing, too large or malformed.
    #[error("invalid archive: {reason}")]
    InvalidArchive { reason: String },
    /// A path named inside an archive is unusable (absolute, `..`, too long).
    #[error("unsafe path {path:?} in archive: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A file of an archive does not hash to the digest it is named by.
    #[error("{path} in the archive has digest {found}, expected {expected}")]
    DigestMismatch {
        path: String,
        expected: Digest,
        found: Digest,
    },
    /// A document in the archive names a blob the archive does not hold.
    #[error("{path:?} named by {document} is not in the archive")]
    MissingFile { path: String, document: String },
    /// A document has a media type kiln cannot import or export.
    #[error("unsupported media type {media_type:?} for {digest}")]
    UnsupportedMediaType { media_type: String, digest: Digest },
    /// A stored image cannot be written into an archive.
    #[error("image {name} cannot be exported: {reason}")]
    UnexportableImage { name: String, reason: String },
    /// A build cache document is malformed or names what it cannot.
    #[error("invalid build cache: {reason}")]
    InvalidCache { reason: String },
    /// A registry refused or failed a request.
    #[error("{action}")]
    Registry {
        action: String,
        #[source]
        source: kiln_registry::RegistryError,
    },
}

impl ExportError {
    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        ExportError::Io {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn json(document: impl Into<String>, error: serde_json::Error) -> Self {
        ExportError::Json {
            document: document.into(),
            message: error.to_string(),
        }
    }

    #[allow(dead_code)]
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        ExportError::InvalidArchive {
            reason: reason.into(),
        }
    }
}

/// The exporter's result type.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;
