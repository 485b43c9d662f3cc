//! Image archives: the docker-archive that `docker load` reads (in the layout Docker 25
//! writes: an OCI image layout plus `manifest.json`, so Docker 20.10 and 25+ both load it),
//! the OCI image layout (tar or directory), and reading both back into the store.

pub mod docker_archive;
pub mod load;
pub mod oci_layout;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use kiln_snapshotter::{Store, MAX_DOCUMENT_SIZE};
use kiln_types::{media_type, Descriptor, Digest, ImageIndex, ImageManifest, Platform};

use crate::error::{ExportError, Result};

/// The OCI annotation naming an image in a layout (the tag, as containerd writes it).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and Docker 25's) annotation with the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// Largest `manifest.json`, `index.json` or other document read from an archive.
pub const MAX_ARCHIVE_DOCUMENT: u64 = 4 << 20;

/// One image to write into an archive: the names it is saved under and its stored manifest
/// or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveImage {
    /// Full names (`docker.io/library/app:1`); may be empty (the image is saved by digest).
    pub names: Vec<String>,
    pub descriptor: Descriptor,
}

/// `docker.io/library/app:1` -> `app:1`, `docker.io/team/app:1` -> `team/app:1`, as
/// `docker save` writes RepoTags.
pub fn familiar_name(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("docker.io/library/") {
        if !rest.contains('/') {
            return rest.to_string();
        }
    }
    name.strip_prefix("docker.io/").unwrap_or(name).to_string()
}

/// The tag of a full name (`registry:5000/app:1` -> `1`), if it has one.
pub fn tag_of(name: &str) -> Option<&str> {
    let without_digest = name.split('@').next().unwrap_or(name);
    let last_component = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last_component.split_once(':').map(|(_, tag)| tag)
}

/// The blob path of a digest inside a layout: `blobs/sha256/<hex>`.
pub fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.hex())
}

/// A stored image resolved for writing: the single-platform manifest, its bytes, the config
/// and layer descriptors, and every blob the image needs (documents first, layers last).
#[derive(Debug, Clone)]
pub(crate) struct ResolvedForArchive {
    /// What the archive's index names: the target itself, or its platform's manifest when the
    /// store lacks other platforms' blobs.
    pub(crate) top: Descriptor,
    /// The platform's manifest.
    pub(crate) manifest: ImageManifest,
    /// Every blob to write, no duplicates, in a stable order.
    pub(crate) blobs: Vec<Descriptor>,
}

fn read_document(store: &Store, descriptor: &Descriptor) -> Result<Vec<u8>> {
    let bytes = store
        .content()
        .read_bytes(&descriptor.digest, MAX_DOCUMENT_SIZE)?;
    Ok(bytes)
}

/// Finds what to write for one stored image. A multi-platform index is written whole when
/// every blob under it is stored, otherwise only the manifest for `platform` is.
pub(crate) fn resolve_for_archive(
    store: &Store,
    name: &str,
    target: &Descriptor,
    platform: &Platform,
    keep_index: bool,
) -> Result<ResolvedForArchive> {
    let resolved = store.resolve_layers(target, platform)?;
    let mut blobs: Vec<Descriptor> = Vec::new();
    let push = |descriptor: &Descriptor, blobs: &mut Vec<Descriptor>| {
        if !blobs.iter().any(|known| known.digest == descriptor.digest) {
            blobs.push(descriptor.clone());
        }
    };
    let mut top = resolved.manifest_descriptor.clone();
    if media_type::is_index(&target.media_type) && keep_index {
        if let Some(all) = complete_index_blobs(store, target)? {
            top = target.clone();
            for descriptor in &all {
                push(descriptor, &mut blobs);
            }
        }
    }
    if blobs.is_empty() {
        push(&resolved.manifest_descriptor, &mut blobs);
        push(&resolved.manifest.config, &mut blobs);
        for layer in &resolved.manifest.layers {
            push(layer, &mut blobs);
        }
    }
    for descriptor in &blobs {
        if !store.content().exists(&descriptor.digest) {
            return Err(ExportError::UnexportableImage {
                name: name.to_string(),
                reason: format!("blob {} is not in the content store", descriptor.digest),
            });
        }
    }
    Ok(ResolvedForArchive {
        top,
        manifest: resolved.manifest,
        blobs,
    })
}

/// Every blob under an index if all are stored (`None` if one is missing).
fn complete_index_blobs(store: &Store, index: &Descriptor) -> Result<Option<Vec<Descriptor>>> {
    let mut blobs = vec![index.clone()];
    let bytes = read_document(store, index)?;
    let parsed: ImageIndex = serde_json::from_slice(&bytes)
        .map_err(|e| ExportError::json(format!("image index {}", index.digest), e))?;
    for child in &parsed.manifests {
        if !media_type::is_manifest(&child.media_type) || !store.content().exists(&child.digest) {
            return Ok(None);
        }
        let bytes = read_document(store, child)?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| ExportError::json(format!("image manifest {}", child.digest), e))?;
        blobs.push(child.clone());
        blobs.push(manifest.config.clone());
        blobs.extend(manifest.layers.iter().cloned());
        let all_stored = std::iter::once(&manifest.config)
            .chain(&manifest.layers)
            .all(|descriptor| store.content().exists(&descriptor.digest));
        if !all_stored {
            return Ok(None);
        }
    }
    Ok(Some(blobs))
}

/// Writes tar entries with fixed owners, modes and times, so the same images give the same
/// archive bytes.
pub(crate) struct ArchiveTar<W: Write> {
    builder: tar::Builder<W>,
    directories: Vec<String>,
    mtime: u64,
}

impl<W: Write> ArchiveTar<W> {
    pub(crate) fn new(writer: W, mtime: u64) -> Self {
        let mut builder = tar::Builder::new(writer);
        builder.mode(tar::HeaderMode::Deterministic);
        ArchiveTar {
            builder,
            directories: Vec::new(),
            mtime,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(self.mtime);
        header
    }

    /// Adds the parent directories of `path` not written yet.
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut prefix = String::new();
        let components: Vec<&str> = path.split('/').collect();
        for component in &components[..components.len().saturating_sub(1)] {
            prefix.push_str(component);
            prefix.push('/');
            if !self.directories.contains(&prefix) {
                let mut header = self.header(tar::EntryType::Directory, 0o755, 0);
                self.builder
                    .append_data(&mut header, &prefix, io::empty())?;
                self.directories.push(prefix.clone());
            }
        }
        Ok(())
    }

    pub(crate) fn file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.parents(path)?;
        let mut header = self.header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        self.builder.append_data(&mut header, path, bytes)
    }

    /// Streams `size` bytes from `reader` as the file `path`.
    pub(crate) fn stream(&mut self, path: &str, size: u64, reader: impl Read) -> io::Result<()> {
        self.parents(path)?;
        let mut header = self.header(tar::EntryType::Regular, 0o644, size);
        self.builder
            .append_data(&mut header, path, reader.take(size))
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

/// Copies a stored blob into an archive, checking that the store still has the size the
/// descriptor says.
pub(crate) fn write_blob<W: Write>(
    store: &Store,
    tar: &mut ArchiveTar<W>,
    descriptor: &Descriptor,
) -> Result<()> {
    let size = store.content().size(&descriptor.digest)?;
    if size != descriptor.size {
        return Err(ExportError::UnexportableImage {
            name: descriptor.digest.to_string(),
            reason: format!(
                "the stored blob has {size} bytes, its descriptor says {}",
                descriptor.size
            ),
        });
    }
    let file = store.content().open(&descriptor.digest)?;
    tar.stream(&blob_path(&descriptor.digest), size, file)
        .map_err(|error| ExportError::io(format!("writing blob {}", descriptor.digest), error))
}

/// An index over the images, one entry per name (with containerd's and OCI's name
/// annotations), or one unnamed entry for an image saved without a name.
pub(crate) fn layout_index(images: &[(Vec<String>, Descriptor)]) -> ImageIndex {
    let mut manifests = Vec::new();
    for (names, descriptor) in images {
        if names.is_empty() {
            manifests.push(descriptor.clone());
        }
        for name in names {
            let mut entry = descriptor.clone();
            let mut annotations = entry.annotations.take().unwrap_or_default();
            annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), name.clone());
            if let Some(tag) = tag_of(name) {
                annotations.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            }
            entry.annotations = Some(annotations);
            manifests.push(entry);
        }
    }
    ImageIndex {
        schema_version: 2,
        media_type: Some(media_type::OCI_INDEX.to_string()),
        manifests,
        annotations: None,
        extra: BTreeMap::new(),
    }
}

/// The `oci-layout` file.
pub(crate) const OCI_LAYOUT_FILE: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
