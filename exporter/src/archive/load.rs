//! Reading image archives into the store (`kiln load`): a docker-archive (classic
//! `manifest.json` with `<id>/layer.tar` or Docker 25's layout) or an OCI image layout, as a
//! tar stream (optionally gzip or zstd compressed) or a directory.
//!
//! A tar is read once, front to back: every regular file goes straight into the content store
//! (hashed on the way) and is remembered by its path, so nothing depends on the order of the
//! entries and no layer is held in memory. Paths in the archive are only ever keys in that
//! map; nothing is extracted by name, so a hostile name cannot reach outside. Files named by
//! digest (`blobs/sha256/<hex>`) must hash to it. A directory is read in place, every path
//! resolved inside it (`openat2` with `RESOLVE_IN_ROOT`). Layers are then unpacked into
//! snapshots keyed by chain id, each checked against its diffID.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use kiln_snapshotter::archive::{
    apply_layer, decompressing_reader, detect_compression, ApplyOptions, WhiteoutMode,
};
use kiln_snapshotter::{chain_ids, Lease, PreparedUnpack, SnapshotId, Store, StoreError};
use kiln_types::media_type::{self, Compression};
use kiln_types::{
    canonical_json, Descriptor, Digest, ImageIndex, ImageManifest, ImageSpec, Platform,
};
use serde::Deserialize;

use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MAX_ARCHIVE_DOCUMENT};
use crate::error::{ExportError, Result};
use crate::layer::DOCKER_LAYER_TAR;

/// How deep symlinks inside a docker-archive may chain (old `docker save` links repeated
/// layers to their first copy).
const MAX_LINK_DEPTH: usize = 8;
/// Most entries accepted in an archive.
const MAX_ENTRIES: usize = 1_000_000;

/// How to load an archive.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The platform whose layers are unpacked when an archive holds an index.
    pub platform: Platform,
    /// Unpack the layers into snapshots (default true); otherwise only store the blobs.
    pub unpack: bool,
    /// Stop unpacking a layer beyond this many uncompressed bytes.
    pub max_layer_size: Option<u64>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            platform: Platform::host(),
            unpack: true,
            max_layer_size: None,
        }
    }
}

/// The format an archive turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveFormat {
    /// `index.json` + `oci-layout` (also Docker 25's archives).
    OciLayout,
    /// `manifest.json` only (Docker before 25, skopeo's docker-archive).
    DockerArchive,
}

/// One image read from an archive and stored.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The names the archive gives it, as written there (`busybox:latest` in a
    /// docker-archive, `docker.io/library/busybox:latest` from containerd's annotation, or a
    /// bare tag from `org.opencontainers.image.ref.name`): normalize before tagging.
    pub names: Vec<String>,
    /// The stored manifest or index.
    pub descriptor: Descriptor,
    /// The top snapshot of the unpacked layers, if unpacked.
    pub top_snapshot: Option<SnapshotId>,
    /// Layers unpacked now (not found already unpacked).
    pub layers_unpacked: usize,
}

/// What [`load_archive`] did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub format: ArchiveFormat,
    pub images: Vec<LoadedImage>,
}

/// A `manifest.json` entry as Docker writes it.
#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Where an archive's files are.
enum Source {
    /// A tar read once: its files are in the content store already.
    Tar {
        files: BTreeMap<String, (Digest, u64)>,
        links: BTreeMap<String, String>,
    },
    /// A directory read in place.
    Directory { root: OwnedFd, path: PathBuf },
}

/// Normalizes a path inside an archive: `./a//b/` -> `a/b`. `..` is refused; a leading `/`
/// is dropped (the path is only a key, relative to the archive).
fn clean_path(path: &str) -> Result<String> {
    let mut parts = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(ExportError::UnsafePath {
                    path: path.to_string(),
                    reason: "parent directory component",
                })
            }
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err(ExportError::UnsafePath {
            path: path.to_string(),
            reason: "empty path",
        });
    }
    Ok(parts.join("/"))
}

/// The digest a `blobs/sha256/<hex>` path names, if it is one.
fn digest_of_blob_path(path: &str) -> Option<Digest> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    Digest::parse(&format!("sha256:{hex}")).ok()
}

impl Source {
    /// Reads a tar stream (plain, gzip or zstd) once, storing every regular file as a blob.
    fn read_tar(store: &Store, lease: &Lease, reader: impl Read) -> Result<Source> {
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let prefix = {
            use std::io::BufRead;
            reader
                .fill_buf()
                .map_err(|e| ExportError::io("reading the archive", e))?
                .to_vec()
        };
        let compression = detect_compression(&prefix);
        let decompressed = decompressing_reader(reader, compression)
            .map_err(|e| ExportError::io("reading the archive", e))?;
        let mut archive = tar::Archive::new(decompressed);
        let mut files = BTreeMap::new();
        let mut links = BTreeMap::new();
        let entries = archive
            .entries()
            .map_err(|e| ExportError::io("reading the archive", e))?;
        for (count, entry) in entries.enumerate() {
            if count >= MAX_ENTRIES {
                return Err(ExportError::invalid(format!(
                    "more than {MAX_ENTRIES} entries"
                )));
            }
            let mut entry = entry.map_err(|e| ExportError::io("reading the archive", e))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            let path = clean_path(&raw_path)?;
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default();
                // A symlink is relative to its directory, a hardlink to the archive root.
                let joined = if kind.is_symlink() && !target.starts_with('/') {
                    match path.rsplit_once('/') {
                        Some((parent, _)) => format!("{parent}/{target}"),
                        None => target,
                    }
                } else {
                    target
                };
                links.insert(path, joined);
                continue;
            }
            if !kind.is_file() && kind != tar::EntryType::Continuous {
                continue;
            }
            let mut writer = store.content().writer(lease, None)?;
            io::copy(&mut entry, &mut writer)
                .map_err(|e| ExportError::io(format!("reading {raw_path} from the archive"), e))?;
            let (digest, size) = writer.commit()?;
            if let Some(named) = digest_of_blob_path(&path) {
                if named != digest {
                    return Err(ExportError::DigestMismatch {
                        path,
                        expected: named,
                        found: digest,
                    });
                }
            }
            files.insert(path, (digest, size));
        }
        Ok(Source::Tar { files, links })
    }

    fn open_directory(path: &Path) -> Result<Source> {
        let root = rustix::fs::open(
            path,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|errno| ExportError::ReadInput {
            path: path.to_path_buf(),
            source: errno.into(),
        })?;
        Ok(Source::Directory {
            root,
            path: path.to_path_buf(),
        })
    }

    /// Follows links inside a tar to the file they name.
    fn resolve_tar_path<'a>(
        files: &'a BTreeMap<String, (Digest, u64)>,
        links: &BTreeMap<String, String>,
        path: &str,
    ) -> Result<Option<&'a (Digest, u64)>> {
        let mut current = clean_path(path)?;
        for _ in 0..MAX_LINK_DEPTH {
            if let Some(found) = files.get(&current) {
                return Ok(Some(found));
            }
            match links.get(&current) {
                Some(target) => current = clean_path(target)?,
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Opens a file of a directory source inside its root.
    fn open_in_directory(root: &OwnedFd, directory: &Path, path: &str) -> Result<Option<File>> {
        let clean = clean_path(path)?;
        let how = rustix::fs::ResolveFlags::IN_ROOT | rustix::fs::ResolveFlags::NO_MAGICLINKS;
        match rustix::fs::openat2(
            root,
            clean.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
            how,
        ) {
            Ok(fd) => {
                let file = File::from(fd);
                let metadata = file.metadata().map_err(|source| ExportError::ReadInput {
                    path: directory.join(&clean),
                    source,
                })?;
                if metadata.is_file() {
                    Ok(Some(file))
                } else {
                    Ok(None)
                }
            }
            Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => Ok(None),
            Err(errno) => Err(ExportError::ReadInput {
                path: directory.join(&clean),
                source: errno.into(),
            }),
        }
    }

    fn exists(&self, path: &str) -> Result<bool> {
        match self {
            Source::Tar { files, links } => {
                Ok(Self::resolve_tar_path(files, links, path)?.is_some())
            }
            Source::Directory { root, path: dir } => {
                Ok(Self::open_in_directory(root, dir, path)?.is_some())
            }
        }
    }

    /// Reads a small document (`manifest.json`, `index.json`, ...), refusing big ones.
    fn document(&self, store: &Store, path: &str, named_by: &str) -> Result<Vec<u8>> {
        let missing = || ExportError::MissingFile {
            path: path.to_string(),
            document: named_by.to_string(),
        };
        let too_large = |size: u64| {
            ExportError::invalid(format!(
                "{path} is {size} bytes, more than the {MAX_ARCHIVE_DOCUMENT} bytes allowed"
            ))
        };
        match self {
            Source::Tar { files, links } => {
                let (digest, size) =
                    Self::resolve_tar_path(files, links, path)?.ok_or_else(missing)?;
                if *size > MAX_ARCHIVE_DOCUMENT {
                    return Err(too_large(*size));
                }
                Ok(store.content().read_bytes(digest, MAX_ARCHIVE_DOCUMENT)?)
            }
            Source::Directory { root, path: dir } => {
                let file = Self::open_in_directory(root, dir, path)?.ok_or_else(missing)?;
                let mut bytes = Vec::new();
                file.take(MAX_ARCHIVE_DOCUMENT + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|source| ExportError::ReadInput {
                        path: dir.join(path),
                        source,
                    })?;
                if bytes.len() as u64 > MAX_ARCHIVE_DOCUMENT {
                    return Err(too_large(bytes.len() as u64));
                }
                Ok(bytes)
            }
        }
    }

    /// Makes sure the file at `path` is in the content store and returns its digest and
    /// size; with `expected`, it must have that digest and size.
    fn blob(
        &self,
        store: &Store,
        lease: &Lease,
        path: &str,
        named_by: &str,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64)> {
        let missing = || ExportError::MissingFile {
            path: path.to_string(),
            document: named_by.to_string(),
        };
        let (digest, size) = match self {
            Source::Tar { files, links } => {
                let (digest, size) =
                    Self::resolve_tar_path(files, links, path)?.ok_or_else(missing)?;
                lease.protect_blob(digest)?;
                (digest.clone(), *size)
            }
            Source::Directory { root, path: dir } => {
                let mut file = Self::open_in_directory(root, dir, path)?.ok_or_else(missing)?;
                let mut writer = store
                    .content()
                    .writer(lease, expected.map(|(digest, size)| (digest.clone(), size)))?;
                if writer.offset() != 0 {
                    writer.restart()?;
                }
                io::copy(&mut file, &mut writer).map_err(|source| ExportError::ReadInput {
                    path: dir.join(path),
                    source,
                })?;
                match writer.commit() {
                    Ok(stored) => stored,
                    Err(StoreError::DigestMismatch { expected, found }) => {
                        return Err(ExportError::DigestMismatch {
                            path: path.to_string(),
                            expected,
                            found,
                        })
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        };
        if let Some((expected_digest, expected_size)) = expected {
            if digest != *expected_digest {
                return Err(ExportError::DigestMismatch {
                    path: path.to_string(),
                    expected: expected_digest.clone(),
                    found: digest,
                });
            }
            if size != expected_size {
                return Err(ExportError::invalid(format!(
                    "{path} has {size} bytes, its descriptor says {expected_size}"
                )));
            }
        }
        Ok((digest, size))
    }
}

/// Reads the archive at `path` (a tar file, possibly compressed, or a directory) into the
/// store: blobs verified, layers unpacked into snapshots (diffIDs checked). Nothing is
/// tagged: the caller normalizes [`LoadedImage::names`] and tags them. Everything stored is
/// added to `lease`.
pub fn load_archive(
    store: &Store,
    lease: &Lease,
    path: &Path,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let metadata = std::fs::metadata(path).map_err(|source| ExportError::ReadInput {
        path: path.to_path_buf(),
        source,
    })?;
    let source = if metadata.is_dir() {
        Source::open_directory(path)?
    } else {
        let file = File::open(path).map_err(|source| ExportError::ReadInput {
            path: path.to_path_buf(),
            source,
        })?;
        Source::read_tar(store, lease, file)?
    };
    load_source(store, lease, &source, path, options)
}

/// [`load_archive`] from a tar stream (`kiln load` reading stdin).
pub fn load_archive_stream(
    store: &Store,
    lease: &Lease,
    reader: impl Read,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let source = Source::read_tar(store, lease, reader)?;
    load_source(store, lease, &source, Path::new("-"), options)
}

fn load_source(
    store: &Store,
    lease: &Lease,
    source: &Source,
    path: &Path,
    options: &LoadOptions,
) -> Result<LoadReport> {
    let (format, images) = if source.exists("index.json")? {
        (
            ArchiveFormat::OciLayout,
            read_oci_layout(store, lease, source)?,
        )
    } else if source.exists("manifest.json")? {
        (
            ArchiveFormat::DockerArchive,
            read_docker_manifest(store, lease, source)?,
        )
    } else {
        return Err(ExportError::UnknownArchive {
            path: path.to_path_buf(),
            reason: "neither index.json nor manifest.json found".to_string(),
        });
    };
    let mut loaded = Vec::with_capacity(images.len());
    for (names, descriptor) in images {
        let (top_snapshot, layers_unpacked) = if options.unpack {
            unpack(store, lease, &descriptor, options)?
        } else {
            (None, 0)
        };
        loaded.push(LoadedImage {
            names,
            descriptor,
            top_snapshot,
            layers_unpacked,
        });
    }
    Ok(LoadReport {
        format,
        images: loaded,
    })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| ExportError::json(what, e))
}

/// Brings one manifest (and its config and layers) of a layout into the store, checking
/// every digest and size.
fn import_manifest(
    store: &Store,
    lease: &Lease,
    source: &Source,
    descriptor: &Descriptor,
) -> Result<()> {
    let what = format!("manifest {}", descriptor.digest);
    source.blob(
        store,
        lease,
        &super::blob_path(&descriptor.digest),
        "index.json",
        Some((&descriptor.digest, descriptor.size)),
    )?;
    let manifest: ImageManifest = parse(
        &store
            .content()
            .read_bytes(&descriptor.digest, MAX_ARCHIVE_DOCUMENT)?,
        &what,
    )?;
    for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
        source.blob(
            store,
            lease,
            &super::blob_path(&blob.digest),
            &what,
            Some((&blob.digest, blob.size)),
        )?;
    }
    Ok(())
}

/// The images of an OCI layout's `index.json`, with their names from the annotations.
fn read_oci_layout(
    store: &Store,
    lease: &Lease,
    source: &Source,
) -> Result<Vec<(Vec<String>, Descriptor)>> {
    let index: ImageIndex = parse(
        &source.document(store, "index.json", "the layout")?,
        "index.json",
    )?;
    let mut images: Vec<(Vec<String>, Descriptor)> = Vec::new();
    for entry in &index.manifests {
        let name = entry.annotations.as_ref().and_then(|annotations| {
            annotations
                .get(ANNOTATION_IMAGE_NAME)
                .or_else(|| annotations.get(ANNOTATION_REF_NAME))
                .cloned()
        });
        if media_type::is_manifest(&entry.media_type) {
            import_manifest(store, lease, source, entry)?;
        } else if media_type::is_index(&entry.media_type) {
            source.blob(
                store,
                lease,
                &super::blob_path(&entry.digest),
                "index.json",
                Some((&entry.digest, entry.size)),
            )?;
            let nested: ImageIndex = parse(
                &store
                    .content()
                    .read_bytes(&entry.digest, MAX_ARCHIVE_DOCUMENT)?,
                &format!("index {}", entry.digest),
            )?;
            for child in &nested.manifests {
                // Platforms the archive does not carry are left out, as skopeo and docker
                // write single-platform layouts of multi-platform images.
                let path = super::blob_path(&child.digest);
                if media_type::is_manifest(&child.media_type) && source.exists(&path)? {
                    import_manifest(store, lease, source, child)?;
                }
            }
        } else {
            return Err(ExportError::UnsupportedMediaType {
                media_type: entry.media_type.clone(),
                digest: entry.digest.clone(),
            });
        }
        let mut descriptor = entry.clone();
        descriptor.annotations = None;
        match images
            .iter_mut()
            .find(|(_, known)| known.digest == descriptor.digest)
        {
            Some((names, _)) => names.extend(name),
            None => images.push((name.into_iter().collect(), descriptor)),
        }
    }
    Ok(images)
}

/// The images of a classic `manifest.json`: config and layer files stored as blobs, and a
/// Docker v2 manifest made for each (OCI types if a layer is zstd).
fn read_docker_manifest(
    store: &Store,
    lease: &Lease,
    source: &Source,
) -> Result<Vec<(Vec<String>, Descriptor)>> {
    let entries: Vec<DockerManifestEntry> = parse(
        &source.document(store, "manifest.json", "the archive")?,
        "manifest.json",
    )?;
    let mut images = Vec::with_capacity(entries.len());
    for entry in entries {
        let (config_digest, config_size) =
            source.blob(store, lease, &entry.config, "manifest.json", None)?;
        let config: ImageSpec = parse(
            &store
                .content()
                .read_bytes(&config_digest, MAX_ARCHIVE_DOCUMENT)?,
            &format!("config {}", entry.config),
        )?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ExportError::invalid(format!(
                "{} lists {} layers but its config has {} diff ids",
                entry.config,
                entry.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let mut layers = Vec::with_capacity(entry.layers.len());
        for layer_path in &entry.layers {
            let (digest, size) = source.blob(store, lease, layer_path, "manifest.json", None)?;
            let mut prefix = [0u8; 8];
            let read = store
                .content()
                .open(&digest)?
                .read(&mut prefix)
                .map_err(|e| ExportError::io(format!("reading layer {layer_path}"), e))?;
            layers.push((detect_compression(&prefix[..read]), digest, size));
        }
        let oci = layers
            .iter()
            .any(|(compression, _, _)| *compression == Compression::Zstd);
        let layer_descriptors = layers
            .into_iter()
            .map(|(compression, digest, size)| {
                let media_type = match (compression, oci) {
                    (Compression::Gzip, false) => media_type::DOCKER_LAYER_GZIP,
                    (Compression::Uncompressed, false) => DOCKER_LAYER_TAR,
                    (Compression::Gzip, true) => media_type::OCI_LAYER_GZIP,
                    (Compression::Uncompressed, true) => media_type::OCI_LAYER_TAR,
                    (Compression::Zstd, _) => media_type::OCI_LAYER_ZSTD,
                };
                Descriptor::new(media_type, digest, size)
            })
            .collect();
        let (manifest_type, config_type) = if oci {
            (media_type::OCI_MANIFEST, media_type::OCI_CONFIG)
        } else {
            (media_type::DOCKER_MANIFEST, media_type::DOCKER_CONFIG)
        };
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(manifest_type.to_string()),
            config: Descriptor::new(config_type, config_digest, config_size),
            layers: layer_descriptors,
            annotations: None,
            extra: BTreeMap::new(),
        };
        let bytes = canonical_json(&manifest).map_err(|e| ExportError::json("manifest", e))?;
        let (digest, size) = store.content().put_bytes(lease, &bytes, None)?;
        images.push((
            entry.repo_tags.unwrap_or_default(),
            Descriptor::new(manifest_type, digest, size),
        ));
    }
    Ok(images)
}

/// Unpacks an image's layers into snapshots keyed by chain id (already unpacked ones are
/// reused), checking each layer's diffID. Returns the top snapshot and how many were new.
fn unpack(
    store: &Store,
    lease: &Lease,
    descriptor: &Descriptor,
    options: &LoadOptions,
) -> Result<(Option<SnapshotId>, usize)> {
    let resolved = store.resolve_layers(descriptor, &options.platform)?;
    let diff_ids: Vec<Digest> = resolved
        .layers
        .iter()
        .map(|layer| layer.diff_id.clone())
        .collect();
    let chains = chain_ids(&diff_ids);
    let mut parent: Option<SnapshotId> = None;
    let mut unpacked = 0;
    for (layer, chain_id) in resolved.layers.iter().zip(&chains) {
        let prepared =
            store
                .snapshotter()
                .prepare_unpack(lease, chain_id.as_str(), parent.as_ref())?;
        let id = match prepared {
            PreparedUnpack::Existing(id) => id,
            PreparedUnpack::New(directory) => {
                let blob = store.content().open(&layer.descriptor.digest)?;
                let compression = match media_type::layer_compression(&layer.descriptor.media_type)
                {
                    Some(compression) => compression,
                    None => {
                        return Err(ExportError::UnsupportedMediaType {
                            media_type: layer.descriptor.media_type.clone(),
                            digest: layer.descriptor.digest.clone(),
                        })
                    }
                };
                let applied = apply_layer(
                    BufReader::with_capacity(1 << 20, blob),
                    compression,
                    directory.path(),
                    &ApplyOptions {
                        expected_diff_id: Some(layer.diff_id.clone()),
                        max_uncompressed_size: options.max_layer_size,
                        ..ApplyOptions::new(WhiteoutMode::Overlay)
                    },
                )?;
                unpacked += 1;
                directory.commit(Some(applied.diff_id), Some(applied.uncompressed_size))?
            }
        };
        parent = Some(id);
    }
    Ok((parent, unpacked))
}
