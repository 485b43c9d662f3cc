//! Hostile archives for `kiln load`: escaping paths, blobs that do not match their names,
//! missing files, oversized documents, wrong diffIDs, symlinks out of a layout directory.
//! Nothing may land outside the store, and every case is a clean error.

mod support;

use std::fs;
use std::path::Path;

use kiln_exporter::{load_archive, ExportError, LoadOptions};
use kiln_testsupport::image::{ImageBuilder, LayerBuilder};
use kiln_types::Digest;
use support::TestRoot;

/// Writes a tar of (path, bytes) entries, with names written raw (no sanitizing).
fn raw_tar(path: &Path, entries: &[(&str, &[u8])]) {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, bytes) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        let name_bytes = name.as_bytes();
        header.as_old_mut().name[..name_bytes.len()].copy_from_slice(name_bytes);
        header.set_cksum();
        builder.append(&header, *bytes).unwrap();
    }
    fs::write(path, builder.into_inner().unwrap()).unwrap();
}

fn small_image() -> kiln_testsupport::image::BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.dir("etc", 0o755).file("etc/hello", b"hello\n", 0o644);
    ImageBuilder::new().layer_tar(layer.finish()).build()
}

/// A docker-archive (classic manifest.json) of `image` with layer and config file names.
fn docker_entries(image: &kiln_testsupport::image::BuiltImage) -> Vec<(String, Vec<u8>)> {
    let config_name = format!("{}.json", image.config_descriptor.digest.hex());
    let layer_names: Vec<String> = (0..image.layers.len())
        .map(|index| format!("layer{index}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["hostile:1"],
        "Layers": layer_names,
    }]);
    let mut entries = vec![(config_name.clone(), image.config_bytes.to_vec())];
    for (name, layer) in layer_names.iter().zip(&image.layers) {
        entries.push((name.clone(), layer.tar.to_vec()));
    }
    entries.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    entries
}

fn write_entries(path: &Path, entries: &[(String, Vec<u8>)]) {
    let borrowed: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(name, bytes)| (name.as_str(), bytes.as_slice()))
        .collect();
    raw_tar(path, &borrowed);
}

fn load(root: &TestRoot, archive: &Path) -> Result<kiln_exporter::LoadReport, ExportError> {
    let store = root.store("store");
    let lease = store.lease("load").unwrap();
    load_archive(&store, &lease, archive, &LoadOptions::default())
}

#[test]
fn a_classic_docker_archive_with_uncompressed_layers_loads() {
    let root = TestRoot::new();
    let archive = root.path().join("ok.tar");
    write_entries(&archive, &docker_entries(&small_image()));
    let report = load(&root, &archive).unwrap();
    assert_eq!(report.images[0].names, ["hostile:1"]);
    assert_eq!(report.images[0].layers_unpacked, 1);
}

#[test]
fn parent_components_in_archive_paths_are_refused() {
    let root = TestRoot::new();
    let archive = root.path().join("evil.tar");
    let mut entries = docker_entries(&small_image());
    entries.insert(0, ("../victim/x".into(), b"escaped".to_vec()));
    write_entries(&archive, &entries);
    let result = load(&root, &archive);
    assert!(
        matches!(result, Err(ExportError::UnsafePath { .. })),
        "{result:?}"
    );
    assert!(!root.path().join("victim").exists());

    // A manifest naming a layer outside the archive is refused too.
    let image = small_image();
    let mut entries = docker_entries(&image);
    let last = entries.len() - 1;
    entries[last].1 = serde_json::to_vec(&serde_json::json!([{
        "Config": format!("{}.json", image.config_descriptor.digest.hex()),
        "RepoTags": ["hostile:1"],
        "Layers": ["../../../../etc/passwd"],
    }]))
    .unwrap();
    write_entries(&archive, &entries);
    let result = load(&root, &archive);
    assert!(
        matches!(result, Err(ExportError::UnsafePath { .. })),
        "{result:?}"
    );
}

#[test]
fn a_blob_that_does_not_match_its_name_is_refused() {
    let root = TestRoot::new();
    let archive = root.path().join("mismatch.tar");
    let named = Digest::of_bytes(b"what the name promises");
    let path = format!("blobs/sha256/{}", named.hex());
    raw_tar(&archive, &[(path.as_str(), b"something else")]);
    let result = load(&root, &archive);
    assert!(
        matches!(result, Err(ExportError::DigestMismatch { .. })),
        "{result:?}"
    );
}

#[test]
fn missing_files_and_unknown_archives_are_clean_errors() {
    let root = TestRoot::new();
    let archive = root.path().join("missing.tar");
    let mut entries = docker_entries(&small_image());
    entries.retain(|(name, _)| !name.ends_with("layer.tar"));
    write_entries(&archive, &entries);
    assert!(matches!(
        load(&root, &archive),
        Err(ExportError::MissingFile { .. })
    ));

    raw_tar(&archive, &[("hello.txt", b"not an image")]);
    assert!(matches!(
        load(&root, &archive),
        Err(ExportError::UnknownArchive { .. })
    ));

    fs::write(
        &archive,
        b"not even a tar, just some bytes that are long enough to look",
    )
    .unwrap();
    assert!(load(&root, &archive).is_err());
}

#[test]
fn oversized_documents_are_refused() {
    let root = TestRoot::new();
    let archive = root.path().join("big.tar");
    let mut big = b"[".to_vec();
    big.extend(std::iter::repeat_n(b' ', 5 << 20));
    big.extend_from_slice(b"]");
    raw_tar(&archive, &[("manifest.json", &big)]);
    let result = load(&root, &archive);
    assert!(
        matches!(result, Err(ExportError::InvalidArchive { .. })),
        "{result:?}"
    );
}

#[test]
fn a_layer_that_does_not_match_its_diff_id_is_refused() {
    let root = TestRoot::new();
    let archive = root.path().join("diffid.tar");
    let image = small_image();
    let mut entries = docker_entries(&image);
    let mut other = LayerBuilder::new();
    other.file("swapped", b"not the layer the config names", 0o644);
    for entry in &mut entries {
        if entry.0.ends_with("layer.tar") {
            entry.1 = other.finish();
            break;
        }
    }
    write_entries(&archive, &entries);
    let result = load(&root, &archive);
    assert!(
        matches!(
            result,
            Err(ExportError::Archive(
                kiln_snapshotter::archive::ArchiveError::DiffIdMismatch { .. }
            ))
        ),
        "{result:?}"
    );
    // The failed unpack left no snapshot behind.
    let store = root.store("store");
    assert!(store.snapshotter().list().unwrap().is_empty());
}

#[test]
fn symlinks_in_a_layout_directory_stay_inside_it() {
    let root = TestRoot::new();
    let image = small_image();
    let layout = root.path().join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    // The manifest blob is a symlink to a file outside the layout that has the right bytes:
    // resolved inside the layout, it is not found.
    let outside = root.path().join("outside-manifest");
    fs::write(&outside, &image.manifest_bytes).unwrap();
    std::os::unix::fs::symlink(
        &outside,
        layout.join(format!("blobs/sha256/{}", image.manifest_digest.hex())),
    )
    .unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": image.manifest_media_type,
            "digest": image.manifest_digest,
            "size": image.manifest_bytes.len(),
        }],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let result = load(&root, &layout);
    assert!(
        matches!(result, Err(ExportError::MissingFile { .. })),
        "{result:?}"
    );

    // With the real files in place the same layout loads.
    fs::remove_file(layout.join(format!("blobs/sha256/{}", image.manifest_digest.hex()))).unwrap();
    fs::write(
        layout.join(format!("blobs/sha256/{}", image.manifest_digest.hex())),
        &image.manifest_bytes,
    )
    .unwrap();
    fs::write(
        layout.join(format!(
            "blobs/sha256/{}",
            image.config_descriptor.digest.hex()
        )),
        &image.config_bytes,
    )
    .unwrap();
    for layer in &image.layers {
        fs::write(
            layout.join(format!("blobs/sha256/{}", layer.descriptor.digest.hex())),
            &layer.blob,
        )
        .unwrap();
    }
    let report = load(&root, &layout).unwrap();
    assert_eq!(report.images[0].descriptor.digest, image.manifest_digest);

    // A blob whose bytes were changed after the fact is refused.
    let layer_path = layout.join(format!(
        "blobs/sha256/{}",
        image.layers[0].descriptor.digest.hex()
    ));
    let mut corrupted = image.layers[0].blob.to_vec();
    let last = corrupted.len() - 1;
    corrupted[last] ^= 0xff;
    fs::write(&layer_path, corrupted).unwrap();
    let fresh = TestRoot::new();
    let result = load(&fresh, &layout);
    assert!(
        matches!(result, Err(ExportError::DigestMismatch { .. })),
        "{result:?}"
    );
}

#[test]
fn compressed_archives_load() {
    let root = TestRoot::new();
    let plain = root.path().join("plain.tar");
    write_entries(&plain, &docker_entries(&small_image()));
    let compressed = root.path().join("plain.tar.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        fs::File::create(&compressed).unwrap(),
        flate2::Compression::fast(),
    );
    std::io::copy(&mut fs::File::open(&plain).unwrap(), &mut encoder).unwrap();
    encoder.finish().unwrap();
    let report = load(&root, &compressed).unwrap();
    assert_eq!(report.images[0].names, ["hostile:1"]);
}
