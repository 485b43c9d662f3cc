//! `kiln save` and `kiln load` end to end with the real binary: a classic docker-archive
//! loaded, saved again, read by skopeo (a third-party reader), loaded into a fresh root; OCI
//! layouts as tar and directory; `--root` and `KILN_ROOT`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_snapshotter::Store;
use kiln_testsupport::{busybox_image, BuiltImage};
use kiln_types::Platform;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A temp directory for roots and archives; kiln's mounts are all gone when a command ends,
/// but views made by the test's own checks are detached here too.
struct TestDir {
    directory: tempfile::TempDir,
}

impl TestDir {
    fn new() -> TestDir {
        TestDir {
            directory: tempfile::Builder::new()
                .prefix("kiln-export-e2e-")
                .tempdir()
                .expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.directory.path().join(name)
    }
}

fn kiln(root: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .expect("run kiln")
}

fn success(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("run tool");
    success(output, program)
}

/// A classic `docker save` archive (`<hex>.json` config, `<n>/layer.tar` gzip layers,
/// manifest.json) of a built image.
fn classic_archive(image: &BuiltImage, name: &str, path: &Path) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |entry: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, entry, bytes).unwrap();
    };
    let config = format!("{}.json", image.config_descriptor.digest.hex());
    add(&config, &image.config_bytes);
    let mut layers = Vec::new();
    for (index, layer) in image.layers.iter().enumerate() {
        let entry = format!("{index}/layer.tar");
        add(&entry, &layer.blob);
        layers.push(entry);
    }
    let manifest = serde_json::json!([{"Config": config, "RepoTags": [name], "Layers": layers}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    fs::write(path, builder.into_inner().unwrap()).unwrap();
}

/// The `manifest.json` of a docker-archive.
fn archive_manifest(path: &Path) -> serde_json::Value {
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("manifest.json") {
            return serde_json::from_reader(entry).unwrap();
        }
    }
    panic!("no manifest.json in {}", path.display());
}

fn stored_manifest(root: &Path, name: &str) -> kiln_types::Descriptor {
    let store = Store::open(root).unwrap();
    store
        .image(name)
        .unwrap()
        .unwrap_or_else(|| panic!("{name} not tagged in {}", root.display()))
        .target
}

#[test]
fn save_output_is_read_by_skopeo_and_loads_into_a_fresh_root() {
    let dir = TestDir::new();
    let first = dir.path("first");
    let classic = dir.path("classic.tar");
    let image = busybox_image();
    classic_archive(&image, "kiln-e2e/busybox:1", &classic);
    let printed = success(
        kiln(&first, &["load", "-i", classic.to_str().unwrap()]),
        "kiln load",
    );
    assert_eq!(printed.trim(), "Loaded image: kiln-e2e/busybox:1");
    let name = "docker.io/kiln-e2e/busybox:1";
    let loaded = stored_manifest(&first, name);
    // Layers are unpacked: the store finds a snapshot for every layer.
    let resolved = Store::open(&first)
        .unwrap()
        .resolve_layers(&loaded, &Platform::host())
        .unwrap();
    assert!(resolved.top_snapshot().is_some());

    let saved = dir.path("saved.tar");
    success(
        kiln(
            &first,
            &["save", "-o", saved.to_str().unwrap(), "kiln-e2e/busybox:1"],
        ),
        "kiln save",
    );
    let inspected = tool(
        "skopeo",
        &["inspect", &format!("docker-archive:{}", saved.display())],
    );
    let inspected: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    assert_eq!(
        archive_manifest(&saved)[0]["RepoTags"][0],
        "kiln-e2e/busybox:1"
    );
    assert_eq!(
        inspected["Layers"][0].as_str().unwrap(),
        image.layers[0].diff_id.as_str()
    );
    let copied = dir.path("skopeo-dir");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", saved.display()),
            &format!("dir:{}", copied.display()),
        ],
    );
    assert!(copied.join("manifest.json").is_file());

    // A fresh root, through KILN_ROOT this time.
    let second = dir.path("second");
    let output = Command::new(KILN)
        .env("KILN_ROOT", &second)
        .args(["load", "-i", saved.to_str().unwrap()])
        .output()
        .unwrap();
    let printed = success(output, "kiln load of the saved archive");
    assert_eq!(printed.trim(), format!("Loaded image: {name}"));
    assert_eq!(stored_manifest(&second, name), loaded);

    // By image id (no name saved), to standard output.
    let output = kiln(&first, &["save", &loaded.digest.hex()[..12]]);
    let bytes = output.stdout.clone();
    success(output, "kiln save by id");
    let by_id = dir.path("by-id.tar");
    fs::write(&by_id, bytes).unwrap();
    let printed = success(
        kiln(&dir.path("third"), &["load", "-i", by_id.to_str().unwrap()]),
        "kiln load of an unnamed image",
    );
    assert_eq!(
        printed.trim(),
        format!("Loaded image ID: {}", loaded.digest)
    );
}

#[test]
fn oci_layouts_save_and_load() {
    let dir = TestDir::new();
    let first = dir.path("first");
    let classic = dir.path("classic.tar");
    classic_archive(&busybox_image(), "localhost:5000/app:2", &classic);
    success(
        kiln(&first, &["load", "-i", classic.to_str().unwrap()]),
        "kiln load",
    );
    let saved = dir.path("saved-oci.tar");
    success(
        kiln(
            &first,
            &[
                "save",
                "--format",
                "oci",
                "-o",
                saved.to_str().unwrap(),
                "localhost:5000/app:2",
            ],
        ),
        "kiln save --format oci",
    );
    // The saved image has Docker media types (as loaded); skopeo 1.9 reads only OCI types
    // from a layout, so convert with skopeo's docker-archive reader -> oci layout, then load
    // that directory.
    let layout = dir.path("layout");
    let docker_archive = dir.path("saved-docker.tar");
    success(
        kiln(
            &first,
            &[
                "save",
                "-o",
                docker_archive.to_str().unwrap(),
                "localhost:5000/app:2",
            ],
        ),
        "kiln save",
    );
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", docker_archive.display()),
            &format!("oci:{}:localhost:5000/app:2", layout.display()),
        ],
    );
    let printed = success(
        kiln(
            &dir.path("from-dir"),
            &["load", "-i", layout.to_str().unwrap()],
        ),
        "kiln load of an OCI directory",
    );
    assert_eq!(printed.trim(), "Loaded image: localhost:5000/app:2");
    let printed = success(
        kiln(
            &dir.path("from-tar"),
            &["load", "-i", saved.to_str().unwrap()],
        ),
        "kiln load of an OCI tar",
    );
    assert_eq!(printed.trim(), "Loaded image: localhost:5000/app:2");
    assert_eq!(
        stored_manifest(&dir.path("from-tar"), "localhost:5000/app:2"),
        stored_manifest(&first, "localhost:5000/app:2")
    );
}

#[test]
fn bad_input_gives_clean_errors() {
    let dir = TestDir::new();
    let root = dir.path("root");
    let junk = dir.path("junk.tar");
    fs::write(&junk, b"this is not an archive at all, but long enough").unwrap();
    let output = kiln(&root, &["load", "-i", junk.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("error: loading"));
    let output = kiln(
        &root,
        &[
            "save",
            "-o",
            dir.path("x.tar").to_str().unwrap(),
            "missing:1",
        ],
    );
    assert!(!output.status.success());
    assert!(!dir.path("x.tar").exists());
}
