//! Pull, import and the resolver against a real registry and a real store.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use kiln_frontend::resolver::ImageResolver;
use kiln_image::{
    find_image, import, list_images, pull, ImportOptions, LayerState, Progress, PullEvent,
    PullOptions, StoreResolver,
};
use kiln_snapshotter::Store;
use kiln_testsupport::{busybox_image, many_layer_image, special_files_image, TestRegistry};
use kiln_types::Platform;

fn new_store() -> (tempfile::TempDir, Store) {
    let directory = tempfile::tempdir().unwrap();
    let store = Store::open(directory.path().join("root")).unwrap();
    (directory, store)
}

#[test]
fn pull_busybox_then_again_skips_everything() {
    let registry = TestRegistry::start();
    let runtime = kiln_testsupport::runtime();
    let image = busybox_image();
    let reference = registry.reference("busybox:latest");
    runtime
        .block_on(image.push(&registry.client(), &reference))
        .unwrap();
    let (_directory, store) = new_store();
    let events = Arc::new(Mutex::new(Vec::new()));
    let progress = {
        let events = events.clone();
        Progress::new(move |event| events.lock().unwrap().push(event))
    };
    let pulled = runtime
        .block_on(pull(
            &store,
            &registry.client(),
            &reference,
            &PullOptions::default(),
            &progress,
        ))
        .unwrap();
    assert_eq!(pulled.manifest.digest, image.manifest_digest);
    assert_eq!(pulled.snapshots.len(), 1);
    assert_eq!(pulled.layers_existing, 0);
    let top = pulled.top_snapshot().unwrap();
    let busybox = store.snapshotter().fs_dir(top).join("bin/busybox");
    assert!(busybox.metadata().unwrap().len() > 100_000);
    assert!(store.content().exists(&image.layers[0].descriptor.digest));
    assert!(events.lock().unwrap().iter().any(|event| matches!(
        event,
        PullEvent::Layer {
            state: LayerState::Downloading {
                unpacking: true,
                ..
            },
            ..
        }
    )));

    let record = find_image(&store, "busybox").err();
    assert!(
        record.is_some(),
        "a registry image is not docker.io's busybox"
    );
    let record = find_image(&store, &format!("{}/busybox", registry.address())).unwrap();
    assert_eq!(record.target.digest, image.manifest_digest);
    let rows = list_images(&store).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].tag.as_deref(), Some("latest"));

    let again = runtime
        .block_on(pull(
            &store,
            &registry.client(),
            &reference,
            &PullOptions::default(),
            &Progress::none(),
        ))
        .unwrap();
    assert_eq!(again.layers_existing, 1);
    assert_eq!(again.bytes_downloaded, 0);
    assert_eq!(again.snapshots, pulled.snapshots);
}

#[test]
fn special_files_unpack_exactly() {
    let registry = TestRegistry::start();
    let runtime = kiln_testsupport::runtime();
    let image = special_files_image();
    let reference = registry.reference("special:1");
    runtime
        .block_on(image.push(&registry.client(), &reference))
        .unwrap();
    let (_directory, store) = new_store();
    let pulled = runtime
        .block_on(pull(
            &store,
            &registry.client(),
            &reference,
            &PullOptions::default(),
            &Progress::none(),
        ))
        .unwrap();
    let snapshotter = store.snapshotter();
    let lower = snapshotter.fs_dir(&pulled.snapshots[0]);
    let upper = snapshotter.fs_dir(&pulled.snapshots[1]);
    let chain = snapshotter.chain(&pulled.snapshots[1]).unwrap();
    assert_eq!(
        chain,
        vec![pulled.snapshots[1].clone(), pulled.snapshots[0].clone()]
    );
    // Layer 1: hardlink, symlinks, xattrs, owner.
    let a = lower.join("data/a").metadata().unwrap();
    let b = lower.join("data/b").metadata().unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(
        std::fs::read_link(lower.join("data/link")).unwrap(),
        std::path::Path::new("a")
    );
    assert_eq!(
        std::fs::read_link(lower.join("data/abs")).unwrap(),
        std::path::Path::new("/etc/hostname")
    );
    let owned = lower.join("data/owned").metadata().unwrap();
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    let xattr = read_xattr(&lower.join("data/xattr"), "user.kiln");
    assert_eq!(xattr.as_deref(), Some(&b"yes"[..]));
    // Layer 2: whiteout as a 0/0 char device, opaque dir, hardlink within the layer.
    let whiteout = upper.join("gone/file").symlink_metadata().unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(
        read_xattr(&upper.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(std::fs::read(upper.join("opaque/new")).unwrap(), b"new\n");
    let c = upper.join("data/c").metadata().unwrap();
    let b2 = upper.join("data/b2").metadata().unwrap();
    assert_eq!(c.ino(), b2.ino());

    // The merged view sees the result of both layers.
    let lease = store.lease("test view").unwrap();
    let view = snapshotter.view(&lease, &pulled.snapshots[1]).unwrap();
    let merged = view.mountpoint();
    assert!(!merged.join("gone/file").exists());
    assert!(!merged.join("opaque/old").exists());
    assert!(merged.join("opaque/new").exists());
    assert_eq!(
        std::fs::read(merged.join("data/b")).unwrap(),
        b"shared contents\n"
    );
    drop(view);
}

fn read_xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let name = CString::new(name).ok()?;
    let mut buffer = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let length = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    };
    if length < 0 {
        return None;
    }
    buffer.truncate(length as usize);
    Some(buffer)
}

#[test]
fn many_layers_pull_in_order_and_mount() {
    let registry = TestRegistry::start();
    let runtime = kiln_testsupport::runtime();
    let image = many_layer_image(40);
    let reference = registry.reference("many:40");
    runtime
        .block_on(image.push(&registry.client(), &reference))
        .unwrap();
    let (_directory, store) = new_store();
    let pulled = runtime
        .block_on(pull(
            &store,
            &registry.client(),
            &reference,
            &PullOptions::default().with_max_concurrent_downloads(8),
            &Progress::none(),
        ))
        .unwrap();
    assert_eq!(pulled.snapshots.len(), 40);
    let chain = store
        .snapshotter()
        .chain(pulled.top_snapshot().unwrap())
        .unwrap();
    assert_eq!(chain.len(), 40);
    let lease = store.lease("test view").unwrap();
    let view = store
        .snapshotter()
        .view(&lease, pulled.top_snapshot().unwrap())
        .unwrap();
    for index in 0..40 {
        let text =
            std::fs::read_to_string(view.mountpoint().join(format!("layers/{index}"))).unwrap();
        assert_eq!(text, index.to_string());
    }
}

#[test]
fn import_then_resolve_locally() {
    let (_directory, store) = new_store();
    let image = busybox_image();
    let tar = image.layers[0].blob.clone();
    let imported = import(
        &store,
        &tar[..],
        &kiln_image::parse_reference("busybox").unwrap(),
        &ImportOptions::default().with_changes(vec![r#"CMD ["sh", "-c", "echo hi"]"#.into()]),
    )
    .unwrap();
    assert_eq!(imported.name, "docker.io/library/busybox:latest");
    assert_eq!(imported.diff_id, image.layers[0].diff_id);
    assert_eq!(
        imported.config.history[0].comment.as_deref(),
        Some("Imported from -")
    );
    let resolver = StoreResolver::new(store.clone(), None);
    let config = resolver
        .resolve_config("docker.io/library/busybox:latest", &Platform::host())
        .unwrap()
        .unwrap();
    assert_eq!(
        config.config.cmd,
        Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
    );
    assert!(resolver
        .resolve_config("docker.io/library/alpine:latest", &Platform::host())
        .is_err());
    let fs = store.snapshotter().fs_dir(&imported.snapshot);
    assert!(fs.join("bin/busybox").is_file());
}

#[test]
fn resolver_falls_back_to_the_registry() {
    let registry = TestRegistry::start();
    let runtime = kiln_testsupport::runtime();
    let image = busybox_image();
    let reference = registry.reference("base:1");
    runtime
        .block_on(image.push(&registry.client(), &reference))
        .unwrap();
    let (_directory, store) = new_store();
    let resolver = StoreResolver::new(store, Some(registry.client()));
    let config = resolver
        .resolve_config(&reference.to_string(), &Platform::host())
        .unwrap()
        .unwrap();
    assert_eq!(config.config.cmd, Some(vec!["sh".into()]));
    // From inside a multi-threaded runtime too.
    let inside = runtime
        .block_on(async { resolver.resolve_config(&reference.to_string(), &Platform::host()) });
    assert!(inside.unwrap().is_some());
    let missing = resolver.resolve_config(
        &registry.reference("nothing:here").to_string(),
        &Platform::host(),
    );
    assert!(matches!(
        missing,
        Err(kiln_frontend::resolver::ResolveError::NotFound { .. })
    ));
}

#[test]
fn a_layer_downloading_before_its_parent_is_committed_joins_the_unpacker_late() {
    use kiln_testsupport::{Fault, FaultProxy, ImageBuilder, LayerBuilder};
    let registry = TestRegistry::start();
    let runtime = kiln_testsupport::runtime();
    let mut bottom = LayerBuilder::new();
    bottom.file("bottom", b"first\n", 0o644);
    // Incompressible: xorshift64.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let data: Vec<u8> = (0..3 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut top = LayerBuilder::new();
    top.file("top.bin", &data, 0o644);
    let image = ImageBuilder::new()
        .layer_tar(bottom.finish())
        .layer_tar(top.finish())
        .build();
    let reference = registry.reference("late:1");
    runtime
        .block_on(image.push(&registry.client(), &reference))
        .unwrap();
    let proxy = FaultProxy::start(registry.address()).unwrap();
    // The bottom layer arrives after a short delay, the top one slowly: the top layer's
    // download starts before its parent is committed and goes on well after.
    proxy.inject(
        Some("GET"),
        &format!("/blobs/{}", image.layers[0].descriptor.digest),
        Fault::Slow {
            bytes_per_second: 1 << 20,
        },
        1,
    );
    proxy.inject(
        Some("GET"),
        &format!("/blobs/{}", image.layers[1].descriptor.digest),
        Fault::Slow {
            bytes_per_second: 4 << 20,
        },
        1,
    );
    let through_proxy =
        kiln_image::parse_reference(&format!("{}/late:1", proxy.address())).unwrap();
    let (_directory, store) = new_store();
    let events = Arc::new(Mutex::new(Vec::new()));
    let progress = {
        let events = events.clone();
        Progress::new(move |event| events.lock().unwrap().push(event))
    };
    let pulled = runtime
        .block_on(pull(
            &store,
            &registry.client(),
            &through_proxy,
            &PullOptions::default(),
            &progress,
        ))
        .unwrap();
    let top_states: Vec<LayerState> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            PullEvent::Layer {
                index: 1, state, ..
            } => Some(*state),
            _ => None,
        })
        .collect();
    let joined = top_states.iter().position(|state| {
        matches!(
            state,
            LayerState::Downloading {
                unpacking: true,
                ..
            }
        )
    });
    let started_alone = top_states.iter().position(|state| {
        matches!(
            state,
            LayerState::Downloading {
                unpacking: false,
                ..
            }
        )
    });
    assert!(
        matches!((started_alone, joined), (Some(alone), Some(join)) if alone < join),
        "{top_states:?}"
    );
    assert!(
        !top_states.contains(&LayerState::Extracting),
        "{top_states:?}"
    );
    let fs = store.snapshotter().fs_dir(&pulled.snapshots[1]);
    assert_eq!(std::fs::read(fs.join("top.bin")).unwrap(), data);
    assert_eq!(
        store.snapshotter().chain(&pulled.snapshots[1]).unwrap(),
        vec![pulled.snapshots[1].clone(), pulled.snapshots[0].clone()]
    );
}
