//! `RUN --mount=type=cache` directories as blobs: the directory's tree written as a gzip
//! tar (the layer diff's format, so modes, owners, xattrs and hardlinks survive) into the
//! content store, to be unpacked into a fresh machine's cache mount directory.

use std::path::Path;

use kiln_snapshotter::archive::{write_layer_from_upper, DiffOptions};
use kiln_snapshotter::{Lease, Store};
use kiln_types::media_type::{Compression, OCI_LAYER_GZIP};
use kiln_types::Descriptor;

use crate::compress::{default_threads, LayerCompressor};
use crate::error::{ExportError, Result};

/// Writes the tree under `directory` as a gzip tar blob into the content store (added to
/// `lease`) and returns its descriptor.
pub fn export_cache_mount(store: &Store, lease: &Lease, directory: &Path) -> Result<Descriptor> {
    let blob = store.content().writer(lease, None)?;
    let mut compressor = LayerCompressor::new(blob, Compression::Gzip, None, default_threads())
        .map_err(|error| ExportError::io("starting the cache mount compressor", error))?;
    write_layer_from_upper(directory, &mut compressor, &DiffOptions::default())?;
    let blob = compressor
        .finish()
        .map_err(|error| ExportError::io("compressing the cache mount", error))?;
    let (digest, size) = blob.commit()?;
    Ok(Descriptor::new(OCI_LAYER_GZIP, digest, size))
}
