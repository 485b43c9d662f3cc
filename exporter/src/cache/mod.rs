//! Build cache export and import (`--cache-to`, `--cache-from`): which cache keys have which
//! results, each result a chain of layer blobs, written where another machine can read it.
//!
//! - [`config`]: the cache config document ([`CacheConfig`]: layers as a tree of blob +
//!   diffID entries, records key -> top layer per output, content checksums, cache mounts)
//!   and [`CacheConfigBuilder`].
//! - [`document`]: the cache manifest, an OCI image manifest over the config and every blob.
//! - [`local`]: an OCI image layout directory, tagged in `index.json`.
//! - [`registry`]: pushed to a repository (blobs mounted across repositories when possible).
//! - [`inline`]: embedded in the image config, its layers being the image's.
//! - [`mounts`]: cache mount directories as tar blobs.
//!
//! Importing only reads documents; the worker's remote cache downloads a record's layers when
//! the solver asks for that record, so a cached build fetches only what its target needs.

pub mod config;
pub mod document;
pub mod inline;
pub mod local;
pub mod mounts;
pub mod registry;

pub use config::{
    CacheChecksum, CacheConfig, CacheConfigBuilder, CacheLayer, CacheMountEntry, CacheOutput,
    CacheRecordEntry, ChainLayer, CACHE_CONFIG_MEDIA_TYPE, CACHE_CONFIG_VERSION,
};
pub use document::{cache_documents, CacheDocuments};
pub use inline::{embed_inline_cache, inline_cache_of, INLINE_CACHE_FIELD};
pub use local::{export_local, import_local, local_blob_path, DEFAULT_CACHE_TAG};
pub use mounts::export_cache_mount;
pub use registry::{export_registry, import_registry, RegistryExportReport};
