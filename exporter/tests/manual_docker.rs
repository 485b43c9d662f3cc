//! Not run by default: writes `$KILN_MANUAL_ARCHIVE` (default /tmp/kiln-manual-docker.tar), a
//! docker-archive of busybox plus one layer built here, for checking by hand with a real
//! Docker: `docker load -i FILE && docker run --rm --network=host kiln-manual:1 cat /added`.

mod support;

use std::fs;

use kiln_exporter::{
    build_image, load_archive, tag, write_docker_archive, ArchiveImage, BaseImage, LayerOptions,
    LoadOptions,
};
use kiln_testsupport::busybox_image;
use kiln_types::Platform;
use support::{image_config, small_run_snapshot, TestRoot};

#[test]
#[ignore = "writes an archive for a manual docker load"]
fn write_archive_for_docker() {
    let root = TestRoot::new();
    let store = root.store("store");
    let lease = store.lease("manual").unwrap();
    let image = busybox_image();
    // Into the store through a classic docker-archive.
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |entry: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, entry, bytes).unwrap();
    };
    add("config.json", &image.config_bytes);
    add("0/layer.tar", &image.layers[0].blob);
    add(
        "manifest.json",
        br#"[{"Config":"config.json","RepoTags":["busybox:latest"],"Layers":["0/layer.tar"]}]"#,
    );
    let classic = root.path().join("busybox.tar");
    fs::write(&classic, builder.into_inner().unwrap()).unwrap();
    let report = load_archive(&store, &lease, &classic, &LoadOptions::default()).unwrap();
    let loaded = &report.images[0];
    let resolved = store
        .resolve_layers(&loaded.descriptor, &Platform::host())
        .unwrap();
    let next = small_run_snapshot(&store, &lease, loaded.top_snapshot.as_ref().unwrap());
    let base = BaseImage {
        layers: resolved
            .layers
            .iter()
            .map(|l| l.descriptor.clone())
            .collect(),
        diff_ids: resolved.layers.iter().map(|l| l.diff_id.clone()).collect(),
    };
    let mut config = image_config(&["layer 0", "RUN echo > /added"]);
    config.config.cmd = Some(vec!["sh".into()]);
    config.config.env = Some(vec!["PATH=/bin".into()]);
    let built = build_image(
        &store,
        &lease,
        &[next],
        Some(&base),
        config,
        &LayerOptions::default(),
    )
    .unwrap();
    let name = "docker.io/library/kiln-manual:1".to_string();
    tag(
        &store,
        std::slice::from_ref(&name),
        &built.manifest_descriptor,
    )
    .unwrap();
    let path = std::env::var("KILN_MANUAL_ARCHIVE")
        .unwrap_or_else(|_| "/tmp/kiln-manual-docker.tar".to_string());
    write_docker_archive(
        &store,
        &[ArchiveImage {
            names: vec![name],
            descriptor: built.manifest_descriptor.clone(),
        }],
        &Platform::host(),
        fs::File::create(&path).unwrap(),
    )
    .unwrap();
}
