//! Registry client: OCI distribution API v2 pull and push, auth, retries.
//!
//! # Why not `oci-client`
//!
//! `oci-client` 0.18 would give pull and push for free, but three of its choices collide with
//! what kiln needs, so this crate speaks the distribution API itself on `reqwest` (rustls,
//! ring):
//! - its token requests carry one repository's scope only, while a cross-repository mount
//!   needs one token for `pull` on the source and `push` on the target (and a 401 from the
//!   mount must fall back to a plain upload);
//! - it pushes large blobs in fixed 4 MiB chunks, where kiln wants the chunk size (and the
//!   monolithic limit) to be an option;
//! - downloads cannot resume from an offset into a caller's sink with the hash state of
//!   the bytes the caller already holds, and redirects are left to reqwest, which cannot
//!   promise that `Authorization` never reaches another host.
//!
//! # Shape
//! - [`Reference`]: Docker's reference grammar and normalization.
//! - [`RegistryClient`]: cheap to clone (an `Arc` inside); one per process, cloned into
//!   parallel download tasks so they share connections and tokens.
//!   - pull: [`RegistryClient::resolve`] (tag or digest -> one platform's manifest),
//!     [`RegistryClient::fetch_manifest`], [`RegistryClient::head_manifest`],
//!     [`RegistryClient::pull_blob`] / [`RegistryClient::pull_blob_to_writer`] /
//!     [`RegistryClient::blob_stream`] (verified, resumable from a [`BlobProgress`]),
//!     [`RegistryClient::fetch_blob_bytes`] for configs;
//!   - push: [`RegistryClient::push_blob`], [`RegistryClient::push_blob_mounting`],
//!     [`RegistryClient::push_manifest`];
//!   - credentials: [`RegistryClient::login`], [`RegistryClient::logout`],
//!     [`CredentialStore`].
//!
//! The transport retries 408/429/5xx and connection faults with backoff (bounded by
//! [`ClientOptions::max_attempts`], honouring `Retry-After`), follows at most
//! [`MAX_REDIRECTS`] redirects by hand and never sends `Authorization` to another origin,
//! answers one 401 per request (a second one fails with the registry's message), and uses
//! plain HTTP only for loopback and registries listed as insecure.

pub mod auth;
pub mod blob;
pub mod client;
pub mod credentials;
pub mod error;
pub mod manifest;
pub mod push;
pub mod reference;

pub use auth::Scope;
pub use blob::{BlobProgress, BlobReceipt};
pub use client::{ClientOptions, RegistryClient, MANIFEST_SIZE_LIMIT, MAX_REDIRECTS};
pub use credentials::{Credential, CredentialStore};
pub use error::RegistryError;
pub use manifest::{
    select_platform, FetchedImageManifest, FetchedIndex, FetchedManifest, ManifestHead,
    ResolvedImage, MANIFEST_ACCEPT,
};
pub use push::{BlobPushOutcome, BlobSource};
pub use reference::{Reference, ReferenceError};
