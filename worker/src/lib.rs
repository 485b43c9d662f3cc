//! The build worker: runs the frontend's ops (image and context sources, RUN in the sandbox,
//! file ops, merges) over the store's snapshots, for the generic solver.
//!
//! `graph` turns the frontend's `Definition` into the solver's `Graph`; `build::BuildWorker`
//! implements `kiln_solver::Worker`; `exec` runs RUN steps in the sandbox; `fileops` applies
//! COPY/ADD/WORKDIR file actions; `checksum` gives the content checksums that COPY's cache keys
//! use; `images` resolves and materializes base images; `remote_cache` holds records imported
//! with `--cache-from`, materialized when the solver loads them.

pub mod build;
pub mod checksum;
mod exec;
pub mod fileops;
pub mod graph;
mod http;
pub mod images;
pub mod remote_cache;
pub mod value;

pub use build::{BuildError, BuildSettings, BuildWorker};
pub use exec::{cache_mount_store_id, BUILD_HOSTNAME};
pub use images::{ImageProvider, ImageSources, ResolvedImage, StoreImageProvider};
pub use remote_cache::{
    checksum_selector, CacheBlobSource, RemoteCache, RemoteCacheMount, RemoteLayer, RemoteRecord,
};
pub use value::Value;
