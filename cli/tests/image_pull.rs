//! `kiln pull`, `images`, `inspect`, `tag`, `rmi` end to end: the real binary, a real
//! registry, a fresh store per test.

mod image_support;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

use image_support::{push, read, snapshot_fs, Kiln};
use kiln_testsupport::{
    busybox_image, many_layer_image, special_files_image, BuiltIndex, ImageBuilder, LayerBuilder,
    TestRegistry,
};
use kiln_types::Platform;

#[test]
fn pull_busybox_then_images_inspect_tag_rmi() {
    let registry = TestRegistry::start();
    let image = busybox_image();
    let reference = push(&registry, &image, "busybox:latest");
    let kiln = Kiln::new();
    let name = reference.to_string();

    let output = kiln.ok(&["pull", &name]);
    assert!(
        output.contains(&format!("Digest: {}", image.manifest_digest)),
        "{output}"
    );
    assert!(output.trim_end().ends_with(&name), "{output}");
    assert_eq!(kiln.image_names(), vec![name.clone()]);

    let table = kiln.ok(&["images"]);
    let header = table.lines().next().unwrap_or_default();
    for column in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(column), "{table}");
    }
    // The image id is the config digest, as Docker's.
    assert!(
        table.contains(&image.config_descriptor.digest.hex()[..12]),
        "{table}"
    );

    let inspected = kiln.inspect(&name);
    assert_eq!(inspected["Id"], image.config_descriptor.digest.to_string());
    assert_eq!(inspected["Digest"], image.manifest_digest.to_string());
    assert_eq!(inspected["Config"]["config"]["Cmd"][0], "sh");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(1));
    let top = inspected["TopSnapshot"].as_str().expect("top snapshot");
    assert!(snapshot_fs(&kiln, top).join("bin/busybox").is_file());
    // By id prefix too.
    let by_id = kiln.inspect(&image.config_descriptor.digest.hex()[..8]);
    assert_eq!(by_id["Id"], inspected["Id"]);

    // A second pull finds everything there.
    let again = kiln.ok(&["pull", &name]);
    assert!(again.contains("Image is up to date"), "{again}");

    kiln.ok(&["tag", &name, "mybox:1"]);
    let mut names = kiln.image_names();
    names.sort();
    assert_eq!(
        names,
        vec![name.clone(), "docker.io/library/mybox:1".into()]
    );
    assert_eq!(kiln.inspect("mybox:1")["Id"], inspected["Id"]);

    // By id with two names: refused without --force.
    let refused = kiln.fail(&["rmi", &image.config_descriptor.digest.hex()[..12]]);
    assert!(refused.contains("--force"), "{refused}");
    let untagged = kiln.ok(&["rmi", "mybox:1"]);
    assert!(
        untagged.contains("Untagged: docker.io/library/mybox:1"),
        "{untagged}"
    );
    assert!(!untagged.contains("Deleted"), "{untagged}");
    let removed = kiln.ok(&["rmi", &name]);
    assert!(removed.contains("Deleted: "), "{removed}");
    assert!(kiln.image_names().is_empty());
    // rmi pruned the unused layers.
    assert!(!snapshot_fs(&kiln, top).exists());
    assert!(!kiln.blob_exists(&image.layers[0].descriptor.digest));
    let missing = kiln.fail(&["inspect", &name]);
    assert!(missing.contains("no such image"), "{missing}");
}

#[test]
fn pull_by_digest_and_root_flag() {
    let registry = TestRegistry::start();
    let image = busybox_image();
    let reference = push(&registry, &image, "busybox:latest");
    let kiln = Kiln::new();
    let pinned = format!("{}@{}", reference.name(), image.manifest_digest);
    let root = kiln.root();
    let root = root.to_str().expect("utf-8 root");
    // --root after the subcommand, overriding KILN_ROOT.
    let other = tempfile::tempdir().expect("temp dir");
    let output = kiln
        .command(&["pull", "--root", root, &pinned])
        .env("KILN_ROOT", other.path())
        .output()
        .expect("kiln");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(kiln.image_names(), vec![pinned.clone()]);
    let table = kiln.ok(&["images"]);
    assert!(table.contains("<none>"), "{table}");
    assert_eq!(
        kiln.inspect(&pinned)["Id"],
        image.config_descriptor.digest.to_string()
    );
    // A digest that is not there.
    let wrong = format!("{}@sha256:{}", reference.name(), "0".repeat(64));
    let error = kiln.fail(&["pull", &wrong]);
    assert!(
        error.contains("not found") || error.contains("404"),
        "{error}"
    );
}

fn platform_image(platform: &str) -> kiln_testsupport::BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.file("platform", platform.as_bytes(), 0o644);
    ImageBuilder::new()
        .platform(Platform::parse(platform).expect("platform"))
        .layer_tar(layer.finish())
        .build()
}

#[test]
fn platform_is_picked_from_an_index() {
    let registry = TestRegistry::start();
    let index = BuiltIndex::new(
        vec![
            platform_image("linux/amd64"),
            platform_image("linux/arm64/v8"),
            platform_image("linux/s390x"),
        ],
        false,
    );
    let reference = registry.reference("multi:1");
    kiln_testsupport::runtime()
        .block_on(index.push(&registry.client(), &reference))
        .expect("push index");
    let name = reference.to_string();

    let kiln = Kiln::new();
    let output = kiln.ok(&["pull", "--platform", "linux/arm64", &name]);
    assert!(
        output.contains(&format!("Digest: {}", index.digest)),
        "{output}"
    );
    let inspected = kiln.inspect(&name);
    assert_eq!(inspected["Architecture"], "arm64");
    assert_eq!(
        inspected["Id"],
        index.images[1].config_descriptor.digest.to_string()
    );
    assert_eq!(
        inspected["Digest"],
        index.images[1].manifest_digest.to_string()
    );
    let top = inspected["TopSnapshot"].as_str().expect("top");
    assert_eq!(
        read(&snapshot_fs(&kiln, top).join("platform")),
        "linux/arm64/v8"
    );

    let kiln = Kiln::new();
    kiln.ok(&["pull", "--platform", "linux/s390x", &name]);
    assert_eq!(kiln.inspect(&name)["Architecture"], "s390x");

    let host = Platform::host();
    let kiln = Kiln::new();
    kiln.ok(&["pull", &name]);
    assert_eq!(
        kiln.inspect(&name)["Architecture"],
        host.architecture.as_str()
    );

    let error = Kiln::new().fail(&["pull", "--platform", "linux/riscv64", &name]);
    assert!(error.contains("no manifest for platform"), "{error}");
}

#[test]
fn a_150_layer_image_pulls_and_its_top_snapshot_mounts() {
    let registry = TestRegistry::start();
    let image = many_layer_image(150);
    let reference = push(&registry, &image, "many:150");
    let kiln = Kiln::new();
    kiln.ok(&[
        "pull",
        "--max-concurrent-downloads",
        "6",
        &reference.to_string(),
    ]);
    let inspected = kiln.inspect(&reference.to_string());
    let layers = inspected["Layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 150);
    assert!(layers.iter().all(|layer| layer["Snapshot"].is_string()));

    let store = kiln.store();
    let top = kiln_snapshotter::SnapshotId::parse(inspected["TopSnapshot"].as_str().expect("top"))
        .expect("snapshot id");
    assert_eq!(store.snapshotter().chain(&top).expect("chain").len(), 150);
    let lease = store.lease("test view").expect("lease");
    let view = store
        .snapshotter()
        .view(&lease, &top)
        .expect("mount the 150 layers");
    for index in [0, 1, 77, 149] {
        assert_eq!(
            read(&view.mountpoint().join(format!("layers/{index}"))),
            index.to_string()
        );
    }
    let count = std::fs::read_dir(view.mountpoint().join("layers"))
        .expect("layers dir")
        .count();
    assert_eq!(count, 150);
}

#[test]
fn whiteouts_hardlinks_symlinks_and_xattrs_are_exact() {
    let registry = TestRegistry::start();
    let image = special_files_image();
    let reference = push(&registry, &image, "special:1");
    let kiln = Kiln::new();
    kiln.ok(&["pull", &reference.to_string()]);
    let inspected = kiln.inspect(&reference.to_string());
    let layers = inspected["Layers"].as_array().expect("layers");
    let lower = snapshot_fs(&kiln, layers[0]["Snapshot"].as_str().expect("snapshot"));
    let upper = snapshot_fs(&kiln, layers[1]["Snapshot"].as_str().expect("snapshot"));

    let a = lower.join("data/a").metadata().expect("a");
    let b = lower.join("data/b").metadata().expect("b");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(
        std::fs::read_link(lower.join("data/link"))
            .expect("link")
            .to_str(),
        Some("a")
    );
    assert_eq!(
        std::fs::read_link(lower.join("data/abs"))
            .expect("abs")
            .to_str(),
        Some("/etc/hostname")
    );
    let owned = lower.join("data/owned").metadata().expect("owned");
    assert_eq!(
        (owned.uid(), owned.gid(), owned.mode() & 0o7777),
        (1000, 1000, 0o640)
    );
    assert_eq!(
        xattr(&lower.join("data/xattr"), "user.kiln").as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(
        xattr(&lower.join("data/xattr"), "security.capability").map(|value| value.len()),
        Some(20)
    );

    let whiteout = upper
        .join("gone/file")
        .symlink_metadata()
        .expect("whiteout");
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(
        xattr(&upper.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    let c = upper.join("data/c").metadata().expect("c");
    let b2 = upper.join("data/b2").metadata().expect("b2");
    assert_eq!(c.ino(), b2.ino());

    // The merged tree, through the store.
    let store = kiln.store();
    let top = kiln_snapshotter::SnapshotId::parse(inspected["TopSnapshot"].as_str().expect("top"))
        .expect("snapshot id");
    let lease = store.lease("test view").expect("lease");
    let view = store.snapshotter().view(&lease, &top).expect("view");
    let merged = view.mountpoint();
    assert!(!merged.join("gone/file").exists());
    assert!(merged.join("gone").is_dir());
    assert!(!merged.join("opaque/old").exists());
    assert_eq!(read(&merged.join("opaque/new")), "new\n");
    assert_eq!(read(&merged.join("data/b")), "shared contents\n");
    assert_eq!(read(&merged.join("data/link")), "shared contents\n");
    assert_eq!(read(&merged.join("etc/hostname")), "kiln-test\n");
}

fn xattr(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let script = "import os, sys\n\
sys.stdout.buffer.write(os.getxattr(sys.argv[1], sys.argv[2], follow_symlinks=False))";
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(name)
        .output()
        .ok()?;
    output.status.success().then_some(output.stdout)
}
