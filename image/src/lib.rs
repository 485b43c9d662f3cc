//! Image-level operations on the store: pull from a registry, import a rootfs tarball,
//! inspect, list, tag, untag and prune, and the frontend's `ImageResolver` over the store.
//!
//! This crate joins the store (`kiln-snapshotter`: content, snapshots, leases, layer
//! apply) and the registry client (`kiln-registry`). It holds no state of its own: every
//! function takes the [`Store`](kiln_snapshotter::Store) to work on.
//!
//! - [`pull()`]: see the `pull` module for how downloads stream into the unpacker.
//! - [`import()`]: Docker's `import`: a one-layer image from a rootfs tar, with `--change`s.
//! - [`list_images`], [`inspect`], [`tag`], [`remove_image`], [`prune`]: the local store.
//! - [`StoreResolver`]: base image configs for the frontend, store first, then registry.
//!
//! Names are normalized as Docker does before they are stored or looked up
//! ([`normalize_name`]): `busybox` is `docker.io/library/busybox:latest`. An image's id is
//! the digest of its config, as Docker's ([`image_id`]); the digest of the manifest its name
//! points at is its digest.

mod changes;
mod error;
mod import;
mod local;
mod progress;
mod pull;
mod reference;
mod resolver;

pub use changes::{apply_changes, CHANGE_INSTRUCTIONS};
pub use error::{ImageError, Result};
pub use import::{import, rfc3339, rfc3339_now, ImportOptions, ImportedImage};
pub use local::{
    inspect, list_images, parse_rfc3339, prune, remove_image, tag, ImageSummary, Removed,
};
pub use progress::{LayerState, Progress, PullEvent};
pub use pull::{pull, PullOptions, PulledImage, DEFAULT_CONCURRENT_DOWNLOADS};
pub use reference::{
    familiar_name, find_image, image_id, normalize_name, parse_reference, split_store_name,
    store_name,
};
pub use resolver::StoreResolver;
