//! Shared image types: digests, descriptors, platforms, image config, manifests and indexes.
//!
//! Frontend, snapshotter, registry and exporter all speak these types, so none of them needs
//! to depend on another (DESIGN.md "crates and who may use whom").

pub mod digest;
pub mod image;
pub mod media_type;
pub mod platform;
pub mod sha256;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use image::{
    Descriptor, HealthConfig, History, ImageConfig, ImageIndex, ImageManifest, ImageSpec, RootFs,
};
pub use platform::{Platform, PlatformError};
pub use sha256::{CheckpointingSha256, PipelinedSha256Writer, Sha256, Sha256Midstate};

/// Serializes a value as canonical JSON: object keys sorted, no insignificant whitespace.
///
/// Used wherever a digest is taken of JSON (DAG ops, cache keys). serde_json's `Value` map is
/// ordered by key (no `preserve_order` feature), so a round trip through `Value` sorts keys.
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    serde_json::to_vec(&value)
}
