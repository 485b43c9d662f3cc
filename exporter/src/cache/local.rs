//! A cache in a local directory (`--cache-to type=local,dest=DIR`): an OCI image layout,
//! `blobs/sha256/<hex>` plus `index.json` naming the cache manifest by tag, so several
//! caches (one per tag) can share a directory and its blobs.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use kiln_snapshotter::{Store, MAX_DOCUMENT_SIZE};
use kiln_types::media_type::OCI_INDEX;
use kiln_types::{canonical_json, Descriptor, Digest, ImageIndex};

use super::config::CacheConfig;
use super::document::{cache_config_descriptor, cache_documents};
use crate::archive::{ANNOTATION_REF_NAME, OCI_LAYOUT_FILE};
use crate::error::{ExportError, Result};

/// The tag a cache is written under when none is given.
pub const DEFAULT_CACHE_TAG: &str = "latest";

/// Where blob `digest` lives in a cache directory.
pub fn local_blob_path(directory: &Path, digest: &Digest) -> PathBuf {
    directory.join("blobs/sha256").join(digest.hex())
}

fn io_error(action: String) -> impl FnOnce(io::Error) -> ExportError {
    move |source| ExportError::Io { action, source }
}

/// Writes `config`, its manifest and every blob it needs (from `store`'s content store)
/// into `directory`, and points `tag` at the manifest in `index.json` (replaced
/// atomically). Blobs already there with the right size are kept. Returns the manifest.
pub fn export_local(
    store: &Store,
    directory: &Path,
    config: &CacheConfig,
    tag: &str,
) -> Result<Descriptor> {
    let documents = cache_documents(config)?;
    let blob_directory = directory.join("blobs/sha256");
    fs::create_dir_all(&blob_directory)
        .map_err(io_error(format!("creating {}", blob_directory.display())))?;
    write_atomically(&directory.join("oci-layout"), OCI_LAYOUT_FILE)?;
    for blob in &documents.blobs {
        let destination = local_blob_path(directory, &blob.digest);
        if fs::metadata(&destination).is_ok_and(|meta| meta.is_file() && meta.len() == blob.size) {
            continue;
        }
        let mut source = store.content().open(&blob.digest)?;
        write_blob_file(&destination, |file| io::copy(&mut source, file).map(|_| ()))?;
    }
    for (descriptor, bytes) in [
        (&documents.config, &documents.config_bytes),
        (&documents.manifest, &documents.manifest_bytes),
    ] {
        write_blob_file(&local_blob_path(directory, &descriptor.digest), |file| {
            file.write_all(bytes)
        })?;
    }

    let index_path = directory.join("index.json");
    let mut index = read_index(&index_path).unwrap_or_else(|_| ImageIndex {
        schema_version: 2,
        media_type: Some(OCI_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: None,
        extra: Default::default(),
    });
    index.manifests.retain(|entry| ref_name(entry) != Some(tag));
    let mut entry = documents.manifest.clone();
    entry.annotations = Some([(ANNOTATION_REF_NAME.to_string(), tag.to_string())].into());
    index.manifests.push(entry);
    let bytes = canonical_json(&index).map_err(|e| ExportError::json("index.json", e))?;
    write_atomically(&index_path, &bytes)?;
    Ok(documents.manifest)
}

/// Reads the cache tagged `tag` from `directory`: `None` when the directory or the tag
/// does not exist (a first build has no cache yet); an error when what is there is wrong.
pub fn import_local(directory: &Path, tag: &str) -> Result<Option<CacheConfig>> {
    let index_path = directory.join("index.json");
    if !index_path.exists() {
        return Ok(None);
    }
    let index = read_index(&index_path)?;
    let Some(entry) = index
        .manifests
        .iter()
        .find(|entry| ref_name(entry) == Some(tag))
    else {
        return Ok(None);
    };
    let manifest_bytes = read_local_blob(directory, &entry.digest)?;
    let config = cache_config_descriptor(&manifest_bytes)?;
    let config_bytes = read_local_blob(directory, &config.digest)?;
    CacheConfig::from_slice(&config_bytes).map(Some)
}

/// A small document blob of a cache directory, verified against its digest.
fn read_local_blob(directory: &Path, digest: &Digest) -> Result<Vec<u8>> {
    let path = local_blob_path(directory, digest);
    let bytes = read_limited(&path)?;
    let found = Digest::of_bytes(&bytes);
    if found != *digest {
        return Err(ExportError::DigestMismatch {
            path: path.display().to_string(),
            expected: digest.clone(),
            found,
        });
    }
    Ok(bytes)
}

fn read_limited(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|source| ExportError::ReadInput {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_DOCUMENT_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ExportError::ReadInput {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
        return Err(ExportError::InvalidCache {
            reason: format!(
                "{} is over the {MAX_DOCUMENT_SIZE} byte limit",
                path.display()
            ),
        });
    }
    Ok(bytes)
}

fn read_index(path: &Path) -> Result<ImageIndex> {
    let bytes = read_limited(path)?;
    serde_json::from_slice(&bytes).map_err(|e| ExportError::json(path.display().to_string(), e))
}

fn ref_name(entry: &Descriptor) -> Option<&str> {
    entry
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// Writes a blob file through a temp file in the same directory, fsynced, then renamed.
fn write_blob_file(
    destination: &Path,
    write: impl FnOnce(&mut fs::File) -> io::Result<()>,
) -> Result<()> {
    let name = destination
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = destination.with_file_name(format!(".tmp-{name}-{}", std::process::id()));
    let mut file = fs::File::create(&temporary)
        .map_err(io_error(format!("creating {}", temporary.display())))?;
    let result = write(&mut file).and_then(|()| file.sync_all());
    if let Err(error) = result {
        let _ = fs::remove_file(&temporary);
        return Err(ExportError::io(
            format!("writing {}", temporary.display()),
            error,
        ));
    }
    fs::rename(&temporary, destination)
        .map_err(io_error(format!("renaming into {}", destination.display())))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_blob_file(path, |file| file.write_all(bytes))
}
