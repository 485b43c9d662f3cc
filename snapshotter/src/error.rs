//! The store's error type: one enum, with the facts of each failure as fields.

use std::path::PathBuf;

use kiln_types::Digest;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Written content does not hash to the digest it was announced with.
    #[error("content digest mismatch: expected {expected}, found {found}")]
    DigestMismatch { expected: Digest, found: Digest },
    /// Written content does not have the size it was announced with.
    #[error("content size mismatch for {digest}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        found: u64,
    },
    /// A blob is not in the content store.
    #[error("blob {digest} not found in the content store")]
    BlobNotFound { digest: Digest },
    /// A blob is larger than the caller allows reading into memory.
    #[error("blob {digest} is {size} bytes, more than the {limit} bytes allowed here")]
    BlobTooLarge {
        digest: Digest,
        size: u64,
        limit: u64,
    },
    /// The metadata database cannot be opened: it is corrupt or of an unknown format.
    /// Blobs and snapshots on disk are left untouched.
    #[error("metadata database {path} cannot be opened ({message}); blobs and snapshots are kept, move it and its -wal and -shm files away to start a fresh database")]
    MetadataUnreadable { path: PathBuf, message: String },
    /// Another process kept the metadata database locked for too long.
    #[error("metadata database {path} stayed locked by another kiln process for {waited_seconds} seconds")]
    MetadataBusy { path: PathBuf, waited_seconds: u64 },
    /// A database operation failed inside a transaction.
    #[error("metadata database {path}: {message}")]
    Metadata { path: PathBuf, message: String },
    /// A record in the database does not decode.
    #[error("metadata record {table}/{key} does not decode: {message}")]
    RecordCorrupt {
        table: &'static str,
        key: String,
        message: String,
    },
    /// A snapshot id is not 12 lowercase hex characters.
    #[error("invalid snapshot id {id:?}: expected 12 lowercase hex characters")]
    InvalidSnapshotId { id: String },
    /// A cache mount id is not usable as a directory name.
    #[error("invalid cache mount id {id:?}: expected 1 to 128 characters of [a-zA-Z0-9_.-], not starting with a dot")]
    InvalidCacheMountId { id: String },
    /// A layer blob variant name is empty, too long or not printable ASCII.
    #[error(
        "invalid layer blob variant {variant:?}: expected 1 to 200 printable ASCII characters"
    )]
    InvalidLayerVariant { variant: String },
    /// No snapshot with this id.
    #[error("snapshot {id} not found")]
    SnapshotNotFound { id: String },
    /// A snapshot is used as a parent or a view while it is still active.
    #[error("snapshot {id} is not committed")]
    SnapshotNotCommitted { id: String },
    /// No image with this name.
    #[error("image {name} not found")]
    ImageNotFound { name: String },
    /// An image reference names neither a tag nor an image id.
    #[error("image reference {reference:?} matches {count} images")]
    AmbiguousImage { reference: String, count: usize },
    /// A manifest, index or config blob does not parse.
    #[error("{kind} {digest} does not parse: {message}")]
    BadDocument {
        kind: &'static str,
        digest: Digest,
        message: String,
    },
    /// An image is of a media type the store cannot walk.
    #[error("unsupported media type {media_type} for {digest}")]
    UnsupportedMediaType { media_type: String, digest: Digest },
    /// An index has no manifest for the wanted platform.
    #[error("image index {digest} has no manifest for platform {platform}")]
    PlatformNotFound { digest: Digest, platform: String },
    /// A manifest and its config disagree on the number of layers.
    #[error("manifest {digest} has {layers} layers but its config lists {diff_ids} diff ids")]
    LayerCountMismatch {
        digest: Digest,
        layers: usize,
        diff_ids: usize,
    },
    /// A snapshot chain is deeper than overlayfs can stack.
    #[error("snapshot chain of {layers} layers is deeper than the overlayfs limit of {limit}")]
    ChainTooDeep { layers: usize, limit: usize },
    /// Mounting an overlay failed.
    #[error("cannot mount overlay at {target} ({layers} lower layers): {message}")]
    Mount {
        target: PathBuf,
        layers: usize,
        message: String,
        #[source]
        source: std::io::Error,
    },
    /// The legacy mount options do not fit in one page even with relative paths.
    #[error("overlay mount options for {layers} layers take {length} bytes, more than the {limit} bytes the kernel accepts")]
    MountOptionsTooLong {
        layers: usize,
        length: usize,
        limit: usize,
    },
    /// Unmounting failed.
    #[error("cannot unmount {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
