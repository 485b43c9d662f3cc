//! The docker-archive writer (`kiln save`, `kiln build -o type=docker`).
//!
//! The archive is what Docker 25 writes: an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/...`) plus the classic `manifest.json` (Config, RepoTags, Layers pointing into
//! `blobs/`) and `repositories`. Layers are the stored blobs as they are (compressed): Docker
//! 20.10's loader decompresses each layer file it reads, so it loads this too, and tools that
//! know the OCI layout (Docker 25+, containerd, skopeo) read `index.json`.

use std::collections::BTreeMap;
use std::io::Write;

use kiln_snapshotter::Store;
use kiln_types::{canonical_json, Descriptor, Platform};
use serde::Serialize;

use super::{
    blob_path, familiar_name, layout_index, resolve_for_archive, write_blob, ArchiveImage,
    ArchiveTar, OCI_LAYOUT_FILE,
};
use crate::error::{ExportError, Result};

/// One entry of `manifest.json`, with Docker's field names.
#[derive(Debug, Serialize)]
struct ManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes `images` as a docker-archive tar to `writer` and returns the writer. Each image is
/// written for `platform` (a multi-platform image as the one manifest `docker load` can
/// take). Blobs are streamed from the content store; the archive's bytes depend only on the
/// images and names.
pub fn write_docker_archive<W: Write>(
    store: &Store,
    images: &[ArchiveImage],
    platform: &Platform,
    writer: W,
) -> Result<W> {
    let mut tar = ArchiveTar::new(writer, 0);
    let io = |action: &str| {
        let action = action.to_string();
        move |error| ExportError::io(action.clone(), error)
    };
    tar.file("oci-layout", OCI_LAYOUT_FILE)
        .map_err(io("writing oci-layout"))?;
    let mut written: Vec<kiln_types::Digest> = Vec::new();
    let mut entries = Vec::new();
    let mut index_images: Vec<(Vec<String>, Descriptor)> = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for image in images {
        let label = image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| image.descriptor.digest.to_string());
        let resolved = resolve_for_archive(store, &label, &image.descriptor, platform, false)?;
        for descriptor in &resolved.blobs {
            if !written.contains(&descriptor.digest) {
                write_blob(store, &mut tar, descriptor)?;
                written.push(descriptor.digest.clone());
            }
        }
        let repo_tags: Vec<String> = image.names.iter().map(|name| familiar_name(name)).collect();
        if let Some(top) = resolved.manifest.layers.last() {
            for tag in &repo_tags {
                if let Some((repository, tag)) = tag.rsplit_once(':') {
                    if !repository.is_empty() && !tag.contains('/') {
                        repositories
                            .entry(repository.to_string())
                            .or_default()
                            .insert(tag.to_string(), top.digest.hex().to_string());
                    }
                }
            }
        }
        entries.push(ManifestEntry {
            config: blob_path(&resolved.manifest.config.digest),
            repo_tags,
            layers: resolved
                .manifest
                .layers
                .iter()
                .map(|layer| blob_path(&layer.digest))
                .collect(),
        });
        index_images.push((image.names.clone(), resolved.top));
    }
    let index = layout_index(&index_images);
    let index_bytes = canonical_json(&index).map_err(|e| ExportError::json("index.json", e))?;
    tar.file("index.json", &index_bytes)
        .map_err(io("writing index.json"))?;
    let manifest_bytes =
        serde_json::to_vec(&entries).map_err(|e| ExportError::json("manifest.json", e))?;
    tar.file("manifest.json", &manifest_bytes)
        .map_err(io("writing manifest.json"))?;
    if !repositories.is_empty() {
        let bytes =
            canonical_json(&repositories).map_err(|e| ExportError::json("repositories", e))?;
        tar.file("repositories", &bytes)
            .map_err(io("writing repositories"))?;
    }
    tar.finish().map_err(io("finishing the archive"))
}
