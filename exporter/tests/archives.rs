//! Images and archives: build an image from overlay snapshots, save it as a docker-archive
//! and an OCI layout (tar and directory), read them with skopeo (a real third-party reader)
//! and load them back into fresh stores.

mod support;

use std::fs;

use kiln_exporter::{
    build_image, load_archive, write_docker_archive, write_oci_archive, write_oci_directory,
    ArchiveFormat, ArchiveImage, BaseImage, Compression, LayerOptions, LoadOptions,
};
use kiln_snapshotter::Store;
use kiln_types::{media_type, Digest, Platform};
use support::{
    built_image, image_config, run_tool, small_run_snapshot, snapshot_tree, tree_listing, TestRoot,
};

const NAME: &str = "docker.io/library/kiln-test:1";

fn archive_image(store: &Store, name: &str) -> ArchiveImage {
    let record = store.image(name).unwrap().unwrap();
    ArchiveImage {
        names: vec![name.to_string()],
        descriptor: record.target,
    }
}

/// The merged tree of a stored image's top snapshot.
fn image_tree(store: &Store, descriptor: &kiln_types::Descriptor) -> Vec<String> {
    let lease = store.lease("view").unwrap();
    let resolved = store.resolve_layers(descriptor, &Platform::host()).unwrap();
    let top = resolved.top_snapshot().expect("layers unpacked").clone();
    let view = store.snapshotter().view(&lease, &top).unwrap();
    tree_listing(view.mountpoint())
}

#[test]
fn built_image_skips_empty_layers_and_fills_config() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let (built, _) = built_image(&store, &lease, NAME, &LayerOptions::default());
    assert_eq!(built.manifest.layers.len(), 2);
    assert_eq!(built.new_layers.len(), 3);
    assert!(built.new_layers[2].empty);
    assert_eq!(
        built.manifest_descriptor.media_type,
        media_type::DOCKER_MANIFEST
    );
    assert_eq!(
        built.config_descriptor.media_type,
        media_type::DOCKER_CONFIG
    );
    assert!(built
        .manifest
        .layers
        .iter()
        .all(|layer| layer.media_type == media_type::DOCKER_LAYER_GZIP));
    assert_eq!(
        built.config.rootfs.diff_ids,
        vec![
            built.new_layers[0].diff_id.clone(),
            built.new_layers[1].diff_id.clone()
        ]
    );
    let flags: Vec<bool> = built.config.history.iter().map(|h| h.empty_layer).collect();
    assert_eq!(flags, [false, false, true]);
    // Stored as canonical JSON: the digest is of the sorted-key bytes.
    let stored = store
        .content()
        .read_bytes(&built.manifest_descriptor.digest, 1 << 20)
        .unwrap();
    assert_eq!(stored, kiln_types::canonical_json(&built.manifest).unwrap());
    let config = store
        .content()
        .read_bytes(built.config_digest(), 1 << 20)
        .unwrap();
    assert_eq!(Digest::of_bytes(&config), *built.config_digest());
    // The store can walk it like any pulled image.
    let resolved = store
        .resolve_layers(&built.manifest_descriptor, &Platform::host())
        .unwrap();
    assert_eq!(resolved.layers.len(), 2);
}

#[test]
fn source_date_epoch_gives_identical_images_and_archives() {
    let root = TestRoot::new();
    let options = LayerOptions {
        source_date_epoch: Some(1_600_000_000),
        ..LayerOptions::default()
    };
    let mut results = Vec::new();
    for name in ["one", "two"] {
        let store = root.store(name);
        let lease = store.lease("test").unwrap();
        let (built, _) = built_image(&store, &lease, NAME, &options);
        assert_eq!(
            built.config.created.as_deref(),
            Some("2020-09-13T12:26:40Z")
        );
        let archive = write_docker_archive(
            &store,
            &[archive_image(&store, NAME)],
            &Platform::host(),
            Vec::new(),
        )
        .unwrap();
        results.push((built.manifest_descriptor.digest, Digest::of_bytes(&archive)));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert_eq!(results[0], results[1]);
}

#[test]
fn docker_archive_is_read_by_skopeo_and_loaded_back() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let (built, top) = built_image(&store, &lease, NAME, &LayerOptions::default());
    let path = root.path().join("image.tar");
    let file = fs::File::create(&path).unwrap();
    write_docker_archive(
        &store,
        &[archive_image(&store, NAME)],
        &Platform::host(),
        file,
    )
    .unwrap();

    let inspected = run_tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", path.display())],
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let layers: Vec<String> = inspected["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|layer| layer.as_str().unwrap().to_string())
        .collect();
    // skopeo serves docker-archive layers uncompressed: it lists their diffIDs.
    let expected: Vec<String> = built
        .config
        .rootfs
        .diff_ids
        .iter()
        .map(|diff_id| diff_id.to_string())
        .collect();
    assert_eq!(layers, expected);
    let copied = root.path().join("copied");
    run_tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", path.display()),
            &format!("dir:{}", copied.display()),
        ],
    );
    assert!(copied.join("manifest.json").is_file());

    let fresh = root.store("fresh");
    let fresh_lease = fresh.lease("load").unwrap();
    let report = load_archive(&fresh, &fresh_lease, &path, &LoadOptions::default()).unwrap();
    assert_eq!(report.format, ArchiveFormat::OciLayout);
    assert_eq!(report.images.len(), 1);
    let loaded = &report.images[0];
    assert_eq!(loaded.names, [NAME]);
    assert_eq!(loaded.descriptor.digest, built.manifest_descriptor.digest);
    assert_eq!(loaded.layers_unpacked, 2);
    assert_eq!(
        image_tree(&fresh, &loaded.descriptor),
        snapshot_tree(&store, &top)
    );
}

/// What skopeo writes (classic manifest.json, no index.json) loads too.
#[test]
fn skopeo_written_docker_archive_loads() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    // skopeo 1.9 reads only OCI media types from an OCI layout.
    let options = LayerOptions {
        oci_media_types: true,
        ..LayerOptions::default()
    };
    let (built, top) = built_image(&store, &lease, NAME, &options);
    let layout = root.path().join("layout");
    write_oci_directory(
        &store,
        &[archive_image(&store, NAME)],
        &Platform::host(),
        &layout,
    )
    .unwrap();
    let archive = root.path().join("from-skopeo.tar");
    run_tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{}:1", layout.display()),
            &format!("docker-archive:{}:kiln-test:1", archive.display()),
        ],
    );
    let fresh = root.store("fresh");
    let fresh_lease = fresh.lease("load").unwrap();
    let report = load_archive(&fresh, &fresh_lease, &archive, &LoadOptions::default()).unwrap();
    assert_eq!(report.format, ArchiveFormat::DockerArchive);
    let loaded = &report.images[0];
    assert_eq!(loaded.names, ["docker.io/library/kiln-test:1"]);
    let resolved = fresh
        .resolve_layers(&loaded.descriptor, &Platform::host())
        .unwrap();
    let diff_ids: Vec<Digest> = resolved.layers.iter().map(|l| l.diff_id.clone()).collect();
    assert_eq!(diff_ids, built.config.rootfs.diff_ids);
    assert_eq!(
        image_tree(&fresh, &loaded.descriptor),
        snapshot_tree(&store, &top)
    );
}

#[test]
fn oci_layouts_are_read_by_skopeo_and_loaded_back() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let options = LayerOptions {
        compression: Compression::Zstd,
        oci_media_types: true,
        ..LayerOptions::default()
    };
    let (built, top) = built_image(&store, &lease, NAME, &options);
    assert_eq!(
        built.manifest_descriptor.media_type,
        media_type::OCI_MANIFEST
    );
    let images = [archive_image(&store, NAME)];

    let directory = root.path().join("layout");
    write_oci_directory(&store, &images, &Platform::host(), &directory).unwrap();
    let inspected = run_tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            &format!("oci:{}:1", directory.display()),
        ],
    );
    assert_eq!(
        Digest::of_bytes(inspected.as_bytes()),
        built.manifest_descriptor.digest
    );
    let tar_path = root.path().join("layout.tar");
    write_oci_archive(
        &store,
        &images,
        &Platform::host(),
        fs::File::create(&tar_path).unwrap(),
    )
    .unwrap();
    run_tool(
        "skopeo",
        &["inspect", &format!("oci-archive:{}:1", tar_path.display())],
    );

    for (name, source) in [("from-dir", &directory), ("from-tar", &tar_path)] {
        let fresh = root.store(name);
        let fresh_lease = fresh.lease("load").unwrap();
        let report = load_archive(&fresh, &fresh_lease, source, &LoadOptions::default()).unwrap();
        assert_eq!(report.format, ArchiveFormat::OciLayout);
        assert_eq!(report.images[0].names, [NAME]);
        assert_eq!(
            report.images[0].descriptor.digest,
            built.manifest_descriptor.digest
        );
        assert_eq!(
            image_tree(&fresh, &report.images[0].descriptor),
            snapshot_tree(&store, &top)
        );
    }
}

#[test]
fn base_image_blobs_are_reused_not_recompressed() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("test").unwrap();
    let (base_image, base_top_snapshot) =
        built_image(&store, &lease, NAME, &LayerOptions::default());
    let resolved = store
        .resolve_layers(&base_image.manifest_descriptor, &Platform::host())
        .unwrap();
    // A build on top: one more RUN over the base's top snapshot.
    let next = small_run_snapshot(&store, &lease, &base_top_snapshot);
    let base = BaseImage {
        layers: resolved
            .layers
            .iter()
            .map(|l| l.descriptor.clone())
            .collect(),
        diff_ids: resolved.layers.iter().map(|l| l.diff_id.clone()).collect(),
    };
    let mut config = image_config(&["ADD base", "RUN change", "RUN again"]);
    config.history[2].created_by = Some("RUN again".into());
    let options = LayerOptions {
        oci_media_types: true,
        ..LayerOptions::default()
    };
    let built = build_image(&store, &lease, &[next], Some(&base), config, &options).unwrap();
    assert_eq!(built.manifest.layers.len(), 3);
    for (layer, base_layer) in built.manifest.layers.iter().zip(&base.layers) {
        assert_eq!(layer.digest, base_layer.digest);
        assert_eq!(layer.size, base_layer.size);
        assert_eq!(layer.media_type, media_type::OCI_LAYER_GZIP);
    }
    assert!(!built.new_layers[0].reused);
    assert_eq!(built.config.rootfs.diff_ids.len(), 3);

    // A base whose blob is gone is refused.
    let mut missing = base.clone();
    missing.layers[0].digest = Digest::of_bytes(b"not stored");
    let result = build_image(
        &store,
        &lease,
        &[],
        Some(&missing),
        image_config(&["a", "b"]),
        &options,
    );
    assert!(matches!(
        result,
        Err(kiln_exporter::ExportError::BaseLayerMissing { .. })
    ));
}
