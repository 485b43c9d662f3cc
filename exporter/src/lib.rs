//! Exporters: layers from snapshots, images (config + manifest) in the store, and image
//! archives (docker-archive, OCI image layout) written and read.
//!
//! # Layers
//! [`LayerExporter::layer_for_snapshot`] streams a committed snapshot's directory through the
//! snapshotter's layer diff (whiteouts, opaque dirs, xattrs, hardlinks, SOURCE_DATE_EPOCH)
//! into a compressor and the content store in one pass: never a whole layer in memory.
//! gzip runs on every core ([`ParallelGzipWriter`], pigz-style blocks primed with the
//! previous 32 KiB, one gzip member) and zstd in multi-threaded mode; both give the same bytes
//! whatever the thread count, so layer digests are reproducible. Each export is recorded per
//! variant (compression, level, epoch) in the store, and reused while its blob is stored.
//!
//! # Images
//! [`build_image`] exports the new layers, reuses a base image's blobs as they are, fills
//! `rootfs.diff_ids` and the history (empty layers skipped and marked `empty_layer`, as
//! BuildKit does), and stores config and manifest as canonical JSON (sorted keys). Docker
//! media types by default, like `docker build`; OCI's on request or for zstd.
//!
//! # Archives
//! [`archive::docker_archive`] writes what `docker load` reads (Docker 25's layout: an OCI
//! layout plus `manifest.json`, which Docker 20.10 loads as well), [`archive::oci_layout`]
//! an OCI image layout as a tar or a directory, and [`archive::load`] reads either back,
//! streaming, with every digest and diffID checked and no path used outside the archive.

pub mod archive;
pub mod cache;
mod compress;
mod error;
mod gzip;
mod image;
mod layer;
pub mod push;
pub mod time;

pub use archive::docker_archive::write_docker_archive;
pub use archive::load::{
    load_archive, load_archive_stream, ArchiveFormat, LoadOptions, LoadReport, LoadedImage,
};
pub use archive::oci_layout::{write_oci_archive, write_oci_directory};
pub use archive::{familiar_name, ArchiveImage};
pub use compress::{
    default_threads, effective_level, LayerCompressor, DEFAULT_GZIP_LEVEL, DEFAULT_ZSTD_LEVEL,
};
pub use error::{ExportError, Result};
pub use gzip::{ParallelGzipWriter, GZIP_BLOCK_SIZE};
pub use image::{build_image, tag, BaseImage, BuiltImage};
pub use kiln_types::media_type::Compression;
pub use layer::{layer_media_type, ExportedLayer, LayerExporter, LayerOptions, DOCKER_LAYER_TAR};
pub use push::{
    push_image, PushEvent, PushOptions, PushProgress, PushReport, DEFAULT_CONCURRENT_UPLOADS,
};
