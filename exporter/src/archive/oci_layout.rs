//! The OCI image layout writer (`kiln build -o type=oci`): `oci-layout`, `index.json` with
//! the images' names as annotations, and `blobs/sha256/<hex>`, as a tar stream or into a
//! directory.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use kiln_snapshotter::Store;
use kiln_types::{canonical_json, Descriptor, Digest, Platform};

use super::{
    blob_path, layout_index, resolve_for_archive, write_blob, ArchiveImage, ArchiveTar,
    OCI_LAYOUT_FILE,
};
use crate::error::{ExportError, Result};

/// The names and top descriptor of each image in a layout's index.
type IndexEntries = Vec<(Vec<String>, Descriptor)>;

/// Collects every image's blobs and the index entries.
fn plan(
    store: &Store,
    images: &[ArchiveImage],
    platform: &Platform,
) -> Result<(Vec<Descriptor>, IndexEntries)> {
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut index_images = Vec::new();
    for image in images {
        let label = image
            .names
            .first()
            .cloned()
            .unwrap_or_else(|| image.descriptor.digest.to_string());
        let resolved = resolve_for_archive(store, &label, &image.descriptor, platform, true)?;
        for descriptor in resolved.blobs {
            if !blobs.iter().any(|known| known.digest == descriptor.digest) {
                blobs.push(descriptor);
            }
        }
        index_images.push((image.names.clone(), resolved.top));
    }
    Ok((blobs, index_images))
}

/// Writes `images` as an OCI image layout in a tar stream. A multi-platform image is written
/// whole when the store has all its platforms, else as its `platform` manifest.
pub fn write_oci_archive<W: Write>(
    store: &Store,
    images: &[ArchiveImage],
    platform: &Platform,
    writer: W,
) -> Result<W> {
    let (blobs, index_images) = plan(store, images, platform)?;
    let mut tar = ArchiveTar::new(writer, 0);
    tar.file("oci-layout", OCI_LAYOUT_FILE)
        .map_err(|e| ExportError::io("writing oci-layout", e))?;
    for descriptor in &blobs {
        write_blob(store, &mut tar, descriptor)?;
    }
    let index = layout_index(&index_images);
    let bytes = canonical_json(&index).map_err(|e| ExportError::json("index.json", e))?;
    tar.file("index.json", &bytes)
        .map_err(|e| ExportError::io("writing index.json", e))?;
    tar.finish()
        .map_err(|e| ExportError::io("finishing the archive", e))
}

/// Writes `images` as an OCI image layout into `directory` (created if needed). Blobs already
/// there with the right digest are kept; `index.json` is replaced atomically.
pub fn write_oci_directory(
    store: &Store,
    images: &[ArchiveImage],
    platform: &Platform,
    directory: &Path,
) -> Result<()> {
    let (blobs, index_images) = plan(store, images, platform)?;
    let io = |action: String| move |error| ExportError::io(action.clone(), error);
    let blob_directory = directory.join("blobs/sha256");
    fs::create_dir_all(&blob_directory)
        .map_err(io(format!("creating {}", blob_directory.display())))?;
    write_atomically(&directory.join("oci-layout"), OCI_LAYOUT_FILE)?;
    for descriptor in &blobs {
        let destination = directory.join(blob_path(&descriptor.digest));
        if file_has_digest(&destination, &descriptor.digest) {
            continue;
        }
        let temporary = blob_directory.join(format!(".tmp-{}", descriptor.digest.hex()));
        let mut source = store.content().open(&descriptor.digest)?;
        let mut file = fs::File::create(&temporary)
            .map_err(io(format!("creating {}", temporary.display())))?;
        io::copy(&mut source, &mut file)
            .and_then(|_| file.sync_all())
            .map_err(io(format!("writing {}", temporary.display())))?;
        fs::rename(&temporary, &destination)
            .map_err(io(format!("renaming into {}", destination.display())))?;
    }
    let index = layout_index(&index_images);
    let bytes = canonical_json(&index).map_err(|e| ExportError::json("index.json", e))?;
    write_atomically(&directory.join("index.json"), &bytes)
}

fn file_has_digest(path: &Path, digest: &Digest) -> bool {
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let mut hashing = kiln_types::Sha256Writer::new(io::sink());
    let copied = io::copy(&mut io::BufReader::new(file), &mut hashing).is_ok();
    copied && hashing.finish().0 == *digest
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |action: String| move |error| ExportError::io(action.clone(), error);
    let temporary = path.with_extension("kiln-tmp");
    let mut file =
        fs::File::create(&temporary).map_err(io(format!("creating {}", temporary.display())))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(format!("writing {}", temporary.display())))?;
    fs::rename(&temporary, path).map_err(io(format!("renaming into {}", path.display())))
}
