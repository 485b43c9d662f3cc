//! Layer tars: apply a (compressed) layer into a snapshot directory, and write a layer tar from
//! an overlayfs upper directory or a plain directory tree.
//!
//! Apply ([`apply_layer`]) streams: compressed bytes -> decompressor -> sha256 (the diffID) ->
//! tar reader -> filesystem, never holding a layer in memory. Every path is resolved inside the
//! destination with `openat2(RESOLVE_IN_ROOT)`, and the final component of an entry is never
//! followed, so a hostile tar cannot write, chmod or chown anything outside the destination
//! (HOSTILE-INPUTS.md section B).
//!
//! Diff ([`write_layer_from_upper`], [`write_tree`]) walks a directory in sorted order, parents
//! before children, and writes ustar headers with PAX records where needed (long names, large
//! values, xattrs as `SCHILY.xattr.*`). [`LayerWriter`] and [`write_compressed_layer`] stream tar
//! -> sha256 (diffID) -> gzip/zstd -> sha256 (blob digest) -> sink in one pass.

mod apply;
mod compression;
mod diff;
mod path;
mod resume;
mod root;
mod tar_reader;
mod tar_writer;

use std::io;

pub use apply::{apply_layer, AppliedLayer, ApplyOptions, WhiteoutMode};
pub use compression::{
    decompressing_reader, detect_compression, write_compressed_layer, CompressedLayer,
    CompressionOptions, DecompressingReader, LayerSource, LayerWriter,
};
pub use diff::{write_layer_from_upper, write_tree, DiffOptions, DiffStats};
pub use kiln_types::media_type::Compression;
pub use resume::{
    write_layer_from_upper_resuming, LayerReference, ResumedLayer, MIDSTATE_INTERVAL,
};

/// The prefix of an OCI/AUFS whiteout file name (`.wh.NAME` deletes `NAME`).
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of the OCI opaque-directory marker (`DIR/.wh..wh..opq`).
pub const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat an upper directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The opaque xattr of overlayfs mounted with `userxattr` (rootless).
pub const OVERLAY_USER_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// Why applying or writing a layer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// Reading or decompressing the layer stream failed, or the tar stream is malformed.
    #[error("reading the layer stream")]
    Read(#[source] io::Error),
    /// An entry's name or link target would leave the destination, or is otherwise unusable.
    #[error("unsafe path {path:?} in layer: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    /// A whiteout entry whose name does not name anything (`.wh..`, `.wh...`, `.wh.`).
    #[error("invalid whiteout {path:?}")]
    InvalidWhiteout { path: String },
    /// A header field that cannot be applied (owner out of range, bad mode, ...).
    #[error("invalid tar entry {path:?}: {reason}")]
    InvalidEntry { path: String, reason: String },
    /// A tar entry type this unpacker does not create (volume headers, multi-volume parts).
    #[error("unsupported tar entry type {entry_type:?} at {path:?}")]
    UnsupportedEntryType { path: String, entry_type: char },
    /// A filesystem operation on the destination (apply) or the source tree (diff) failed.
    #[error("{operation} {path:?}")]
    Filesystem {
        operation: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// The uncompressed stream is larger than [`ApplyOptions::max_uncompressed_size`].
    #[error("layer is larger than the limit of {limit} uncompressed bytes")]
    TooLarge { limit: u64 },
    /// The sha256 of the uncompressed stream is not the expected diffID.
    #[error("layer diffID mismatch: expected {expected}, found {found}")]
    DiffIdMismatch {
        expected: kiln_types::Digest,
        found: kiln_types::Digest,
    },
    /// Writing the tar stream (or its compressed form) to the sink failed.
    #[error("writing the layer tar")]
    Write(#[source] io::Error),
    /// An upper directory uses an overlayfs feature a layer tar cannot express
    /// (`redirect_dir`, `metacopy`): mount overlays with `redirect_dir=off,metacopy=off`.
    #[error("overlay upper {path:?} carries xattr {xattr}, which a layer tar cannot express")]
    UnsupportedOverlayFeature { path: String, xattr: String },
    /// A file changed size while it was being written into the tar.
    #[error("file {path:?} changed while it was being read (expected {expected} bytes)")]
    FileChanged { path: String, expected: u64 },
}

/// Shows raw path bytes for messages (lossy: messages only, never used as a path).
pub(crate) fn display_path(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
