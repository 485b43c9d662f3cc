//! `kiln build -o type=image|oci|docker` with BuildKit's exporter options: compression
//! (gzip, zstd, uncompressed) and its level, force-compression of a pulled gzip base layer,
//! oci-mediatypes, rewrite-timestamp, and the errors for bad values. Real builds in the
//! sandbox on a busybox base from a test registry; archives read back by skopeo and
//! `kiln load`, registry content by skopeo.

mod image_support;

use std::collections::HashMap;
use std::io::Read as _;
use std::path::Path;

use image_support::{push, Kiln};
use kiln_snapshotter::archive::decompressing_reader;
use kiln_testsupport::{busybox_image, TestRegistry};
use kiln_types::media_type::{self, Compression};
use serde_json::Value;

const EPOCH: i64 = 1_000_000_000;

/// A registry with busybox as `library/busybox:1`, a kiln root and a context whose
/// Dockerfile adds one layer on top of it.
struct Setup {
    registry: TestRegistry,
    kiln: Kiln,
    context: tempfile::TempDir,
    out: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let registry = TestRegistry::start();
        let base = push(&registry, &busybox_image(), "library/busybox:1");
        let context = tempfile::tempdir().expect("context");
        std::fs::write(
            context.path().join("Dockerfile"),
            format!("FROM {base}\nRUN echo hello > /hello && mkdir /made\n"),
        )
        .expect("Dockerfile");
        Setup {
            registry,
            kiln: Kiln::new(),
            context,
            out: tempfile::tempdir().expect("out"),
        }
    }

    fn context(&self) -> &str {
        self.context.path().to_str().expect("context path")
    }

    fn out(&self, name: &str) -> String {
        self.out.path().join(name).to_string_lossy().into_owned()
    }

    /// `kiln build -o SPEC... CONTEXT`; returns stderr.
    fn build(&self, outputs: &[&str]) -> String {
        self.build_with_env(outputs, &[])
    }

    fn build_with_env(&self, outputs: &[&str], env: &[(&str, &str)]) -> String {
        let mut args = vec!["build".to_string(), "--progress".into(), "plain".into()];
        for output in outputs {
            args.push("-o".into());
            args.push(output.to_string());
        }
        args.push(self.context().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut command = self.kiln.command(&args);
        command.env_remove("SOURCE_DATE_EPOCH");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().expect("running kiln");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "kiln {args:?} failed:\n{stderr}");
        stderr
    }

    /// A build expected to fail before anything runs; returns stderr.
    fn refused(&self, output: &str) -> String {
        self.kiln.fail(&["build", "-o", output, self.context()])
    }

    fn remote(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.address())
    }
}

/// Every file of a tar archive, by path.
fn read_tar(path: &str) -> HashMap<String, Vec<u8>> {
    let file = std::fs::File::open(path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let mut archive = tar::Archive::new(file);
    let mut files = HashMap::new();
    for entry in archive.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("tar read");
        files.insert(name.trim_start_matches("./").to_string(), bytes);
    }
    files
}

fn blob<'a>(files: &'a HashMap<String, Vec<u8>>, digest: &str) -> &'a [u8] {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    files
        .get(&format!("blobs/sha256/{hex}"))
        .unwrap_or_else(|| panic!("blob {digest} is not in the archive"))
}

/// The image manifest and config of an OCI layout (or Docker 25 archive) read into memory.
fn layout_image(files: &HashMap<String, Vec<u8>>) -> (Value, Value) {
    let index: Value =
        serde_json::from_slice(files.get("index.json").expect("index.json")).expect("index");
    let mut descriptor = index["manifests"][0].clone();
    loop {
        let document: Value =
            serde_json::from_slice(blob(files, descriptor["digest"].as_str().expect("digest")))
                .expect("document");
        if document["manifests"].is_array() {
            descriptor = document["manifests"][0].clone();
            continue;
        }
        let config: Value = serde_json::from_slice(blob(
            files,
            document["config"]["digest"].as_str().expect("c"),
        ))
        .expect("config");
        return (document, config);
    }
}

fn layer_types(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|layer| layer["mediaType"].as_str().expect("mediaType").to_string())
        .collect()
}

fn diff_ids(config: &Value) -> Vec<String> {
    config["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|id| id.as_str().expect("diff id").to_string())
        .collect()
}

/// (path, mtime) of every entry of a layer blob.
fn layer_entries(bytes: &[u8], layer_media_type: &str) -> Vec<(String, u64)> {
    let compression = media_type::layer_compression(layer_media_type).expect("a layer type");
    let reader = decompressing_reader(bytes, compression).expect("decompressor");
    let mut archive = tar::Archive::new(reader);
    archive
        .entries()
        .expect("layer entries")
        .map(|entry| {
            let entry = entry.expect("layer entry");
            let path = entry.path().expect("path").to_string_lossy().into_owned();
            (path, entry.header().mtime().expect("mtime"))
        })
        .collect()
}

fn skopeo(args: &[&str]) -> String {
    let output = std::process::Command::new("skopeo")
        .args(args)
        .output()
        .expect("running skopeo");
    assert!(
        output.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A registry image's manifest and config, through skopeo.
fn registry_image(reference: &str) -> (Value, Value) {
    let transport = format!("docker://{reference}");
    let manifest = skopeo(&["inspect", "--raw", "--tls-verify=false", &transport]);
    let config = skopeo(&[
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &transport,
    ]);
    (
        serde_json::from_str(&manifest).expect("manifest JSON"),
        serde_json::from_str(&config).expect("config JSON"),
    )
}

/// The compression a blob's first bytes show.
fn magic(bytes: &[u8]) -> Compression {
    kiln_snapshotter::archive::detect_compression(bytes)
}

#[test]
fn zstd_layers_are_oci_typed_and_read_back() {
    let setup = Setup::new();
    let oci = setup.out("zstd.tar");
    setup.build(&[&format!(
        "type=oci,dest={oci},name=app:zstd,compression=zstd,compression-level=9"
    )]);
    let files = read_tar(&oci);
    let (manifest, config) = layout_image(&files);
    assert_eq!(manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(manifest["config"]["mediaType"], media_type::OCI_CONFIG);
    // The pulled base layer stays gzip (no force-compression); the new one is zstd.
    assert_eq!(
        layer_types(&manifest),
        [media_type::OCI_LAYER_GZIP, media_type::OCI_LAYER_ZSTD]
    );
    let new_layer = blob(&files, manifest["layers"][1]["digest"].as_str().expect("d"));
    assert_eq!(magic(new_layer), Compression::Zstd);
    assert!(layer_entries(new_layer, media_type::OCI_LAYER_ZSTD)
        .iter()
        .any(|(path, _)| path == "hello"));
    assert_eq!(diff_ids(&config).len(), 2);

    // skopeo reads and copies it (verifying every digest), kiln loads it and runs it.
    let inspected: Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci-archive:{oci}")])).expect("json");
    assert_eq!(inspected["Layers"].as_array().map(Vec::len), Some(2));
    let copied = setup.out("copied");
    skopeo(&[
        "copy",
        &format!("oci-archive:{oci}"),
        &format!("dir:{copied}"),
    ]);
    let other = Kiln::new();
    other.ok(&["load", "-i", &oci]);
    let output = other.ok(&["run", "--rm", "app:zstd", "cat", "/hello"]);
    assert_eq!(output, "hello\n");

    // The stored image and its push: zstd layers for new layers, OCI types forced even when
    // oci-mediatypes=false is asked (with BuildKit's warning).
    let remote = setup.remote("app:zstd");
    let stderr = setup.build(&[&format!(
        "type=image,name={remote},push=true,compression=zstd,oci-mediatypes=false"
    )]);
    assert!(
        stderr.contains("forcibly turning on oci-mediatypes for zstd"),
        "{stderr}"
    );
    let (pushed, pushed_config) = registry_image(&remote);
    assert_eq!(pushed["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        layer_types(&pushed),
        [media_type::OCI_LAYER_GZIP, media_type::OCI_LAYER_ZSTD]
    );
    assert_eq!(diff_ids(&pushed_config), diff_ids(&config));
    let pulled = Kiln::new();
    pulled.ok(&["pull", &remote]);
    assert_eq!(
        pulled.ok(&["run", "--rm", &remote, "cat", "/hello"]),
        "hello\n"
    );
}

#[test]
fn force_compression_recompresses_the_base_layer() {
    let setup = Setup::new();
    let kept = setup.out("kept.tar");
    let forced = setup.out("forced.tar");
    setup.build(&[
        &format!("type=oci,dest={kept},compression=zstd"),
        &format!("type=oci,dest={forced},compression=zstd,force-compression=true"),
    ]);
    let kept_files = read_tar(&kept);
    let (kept_manifest, kept_config) = layout_image(&kept_files);
    let forced_files = read_tar(&forced);
    let (forced_manifest, forced_config) = layout_image(&forced_files);
    assert_eq!(
        layer_types(&kept_manifest),
        [media_type::OCI_LAYER_GZIP, media_type::OCI_LAYER_ZSTD]
    );
    assert_eq!(
        layer_types(&forced_manifest),
        [media_type::OCI_LAYER_ZSTD, media_type::OCI_LAYER_ZSTD]
    );
    let base_kept = blob(
        &kept_files,
        kept_manifest["layers"][0]["digest"].as_str().expect("d"),
    );
    let base_forced = blob(
        &forced_files,
        forced_manifest["layers"][0]["digest"].as_str().expect("d"),
    );
    assert_eq!(magic(base_kept), Compression::Gzip);
    assert_eq!(magic(base_forced), Compression::Zstd);
    // Same content, same diffIDs: only the compression changed.
    assert_eq!(diff_ids(&forced_config), diff_ids(&kept_config));
    assert_eq!(
        layer_entries(base_kept, media_type::OCI_LAYER_GZIP),
        layer_entries(base_forced, media_type::OCI_LAYER_ZSTD)
    );
    assert_eq!(
        kept_manifest["layers"][1]["digest"],
        forced_manifest["layers"][1]["digest"]
    );

    // Pushed forced: the registry has the zstd base, a fresh root pulls (checking every
    // diffID) and runs it.
    let remote = setup.remote("app:forced");
    setup.build(&[&format!(
        "type=image,name={remote},push=true,compression=zstd,force-compression=true"
    )]);
    let (pushed, pushed_config) = registry_image(&remote);
    assert_eq!(
        layer_types(&pushed),
        [media_type::OCI_LAYER_ZSTD, media_type::OCI_LAYER_ZSTD]
    );
    assert_eq!(
        pushed["layers"][0]["digest"], forced_manifest["layers"][0]["digest"],
        "the recompressed base layer is made once and reused"
    );
    assert_eq!(diff_ids(&pushed_config), diff_ids(&kept_config));
    let pulled = Kiln::new();
    pulled.ok(&["pull", &remote]);
    assert_eq!(
        pulled.ok(&["run", "--rm", &remote, "cat", "/hello"]),
        "hello\n"
    );
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{remote}"),
        &format!("dir:{}", setup.out("pushed-dir")),
    ]);

    // force-compression=true to gzip of a gzip base changes nothing.
    let gzip_forced = setup.out("gzip-forced.tar");
    setup.build(&[&format!(
        "type=oci,dest={gzip_forced},force-compression=true"
    )]);
    let gzip_files = read_tar(&gzip_forced);
    let (gzip_manifest, _) = layout_image(&gzip_files);
    assert_eq!(
        gzip_manifest["layers"][0]["digest"],
        kept_manifest["layers"][0]["digest"]
    );
}

#[test]
fn uncompressed_levels_and_media_types() {
    let setup = Setup::new();
    let plain = setup.out("plain.tar");
    let fast = setup.out("fast.tar");
    let best = setup.out("best.tar");
    let docker_oci = setup.out("docker-oci.tar");
    let oci_default = setup.out("oci-default.tar");
    let oci_docker = setup.out("oci-docker.tar");
    setup.build(&[
        &format!("type=docker,dest={plain},compression=uncompressed,compression-level=3"),
        &format!("type=docker,dest={fast},compression=gzip,compression-level=1"),
        &format!("type=docker,dest={best},compression-level=9"),
        &format!("type=docker,dest={docker_oci},oci-mediatypes=true"),
        &format!("type=oci,dest={oci_default}"),
        &format!("type=oci,dest={oci_docker},oci-mediatypes=false"),
    ]);

    let files = read_tar(&plain);
    let (manifest, _) = layout_image(&files);
    assert_eq!(manifest["mediaType"], media_type::DOCKER_MANIFEST);
    assert_eq!(
        layer_types(&manifest),
        [
            media_type::DOCKER_LAYER_GZIP,
            "application/vnd.docker.image.rootfs.diff.tar"
        ]
    );
    let new_layer = blob(&files, manifest["layers"][1]["digest"].as_str().expect("d"));
    assert_eq!(magic(new_layer), Compression::Uncompressed);
    // An uncompressed layer's digest is its diffID.
    let (_, config) = layout_image(&files);
    assert_eq!(manifest["layers"][1]["digest"], diff_ids(&config)[1]);
    skopeo(&["inspect", &format!("docker-archive:{plain}")]);

    let (fast_manifest, fast_config) = layout_image(&read_tar(&fast));
    let (best_manifest, best_config) = layout_image(&read_tar(&best));
    assert_ne!(
        fast_manifest["layers"][1]["digest"], best_manifest["layers"][1]["digest"],
        "gzip levels 1 and 9 give different blobs"
    );
    assert_eq!(diff_ids(&fast_config), diff_ids(&best_config));

    let (docker_oci_manifest, _) = layout_image(&read_tar(&docker_oci));
    assert_eq!(docker_oci_manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        docker_oci_manifest["config"]["mediaType"],
        media_type::OCI_CONFIG
    );
    assert_eq!(
        layer_types(&docker_oci_manifest),
        [media_type::OCI_LAYER_GZIP, media_type::OCI_LAYER_GZIP]
    );
    skopeo(&["inspect", &format!("docker-archive:{docker_oci}")]);
    let (oci_default_manifest, _) = layout_image(&read_tar(&oci_default));
    assert_eq!(oci_default_manifest["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        oci_default_manifest["layers"][1]["digest"], docker_oci_manifest["layers"][1]["digest"],
        "the same layer blob whatever the media type style"
    );
    let (oci_docker_manifest, _) = layout_image(&read_tar(&oci_docker));
    assert_eq!(
        oci_docker_manifest["mediaType"],
        media_type::DOCKER_MANIFEST
    );

    // The stored image keeps Docker's types by default, OCI's on request.
    let remote = setup.remote("app:oci");
    setup.build(&[&format!(
        "type=image,name={remote},push=true,oci-mediatypes=true"
    )]);
    let (pushed, _) = registry_image(&remote);
    assert_eq!(pushed["mediaType"], media_type::OCI_MANIFEST);
    assert_eq!(
        layer_types(&pushed),
        [media_type::OCI_LAYER_GZIP, media_type::OCI_LAYER_GZIP]
    );
    let remote = setup.remote("app:docker");
    setup.build(&[&format!("type=registry,name={remote}")]);
    let (pushed, _) = registry_image(&remote);
    assert_eq!(pushed["mediaType"], media_type::DOCKER_MANIFEST);
}

#[test]
fn rewrite_timestamp_clamps_new_layer_times() {
    let setup = Setup::new();
    let rewritten = setup.out("rewritten.tar");
    let kept = setup.out("kept.tar");
    let epoch = EPOCH.to_string();
    setup.build_with_env(
        &[
            &format!("type=oci,dest={rewritten},rewrite-timestamp=true"),
            &format!("type=oci,dest={kept}"),
        ],
        &[("SOURCE_DATE_EPOCH", &epoch)],
    );
    let new_layer_entries = |path: &str| {
        let files = read_tar(path);
        let (manifest, config) = layout_image(&files);
        let layer = &manifest["layers"][1];
        let entries = layer_entries(
            blob(&files, layer["digest"].as_str().expect("d")),
            layer["mediaType"].as_str().expect("type"),
        );
        (entries, config)
    };
    let (entries, config) = new_layer_entries(&rewritten);
    assert!(
        entries.iter().any(|(path, _)| path == "hello"),
        "{entries:?}"
    );
    for (path, mtime) in &entries {
        assert!(*mtime <= EPOCH as u64, "{path} has mtime {mtime}");
    }
    let hello = entries.iter().find(|(path, _)| path == "hello");
    assert_eq!(hello.map(|(_, mtime)| *mtime), Some(EPOCH as u64));
    assert_eq!(config["created"], "2001-09-09T01:46:40Z");

    // Without rewrite-timestamp the epoch sets the image's times only (as BuildKit).
    let (entries, config) = new_layer_entries(&kept);
    let hello = entries.iter().find(|(path, _)| path == "hello");
    assert!(
        hello.is_some_and(|(_, mtime)| *mtime > EPOCH as u64),
        "{entries:?}"
    );
    assert_eq!(config["created"], "2001-09-09T01:46:40Z");

    // Without an epoch, rewrite-timestamp warns and keeps the times.
    let stderr = setup.build(&[&format!(
        "type=oci,dest={},rewrite-timestamp=true",
        setup.out("no-epoch.tar")
    )]);
    assert!(
        stderr.contains("rewrite-timestamp is set but SOURCE_DATE_EPOCH is not"),
        "{stderr}"
    );
}

#[test]
fn bad_option_values_are_refused_before_building() {
    let setup = Setup::new();
    let dest = setup.out("x.tar");
    let cases = [
        (
            format!("type=oci,dest={dest},compression=brotli"),
            "invalid compression value \"brotli\" (expected gzip, zstd or uncompressed)",
        ),
        (
            format!("type=oci,dest={dest},compression=estargz"),
            "compression \"estargz\" is not supported by kiln",
        ),
        (
            format!("type=docker,dest={dest},compression-level=fast"),
            "invalid compression-level value \"fast\" (expected an integer)",
        ),
        (
            format!("type=docker,dest={dest},compression-level=10"),
            "compression-level 10 is out of range for gzip (0-9)",
        ),
        (
            format!("type=image,compression=zstd,compression-level=23"),
            "compression-level 23 is out of range for zstd (0-22)",
        ),
        (
            format!("type=image,compression=gzip,compression-level=-1"),
            "compression-level -1 is out of range for gzip (0-9)",
        ),
        (
            format!("type=oci,dest={dest},force-compression=maybe"),
            "invalid force-compression value \"maybe\" (expected true or false)",
        ),
        (
            format!("type=oci,dest={dest},oci-mediatypes=yes"),
            "invalid oci-mediatypes value \"yes\" (expected true or false)",
        ),
        (
            format!("type=image,rewrite-timestamp=sometimes"),
            "invalid rewrite-timestamp value \"sometimes\" (expected true or false)",
        ),
        (
            format!("type=image,push=perhaps"),
            "invalid push value \"perhaps\" (expected true or false)",
        ),
        (
            format!("type=local,dest={dest},compression=zstd"),
            "option \"compression\" is not supported by type=local",
        ),
        (
            format!("type=oci,dest={dest},source-date-epoch=yesterday"),
            "invalid source-date-epoch value \"yesterday\"",
        ),
    ];
    for (spec, expected) in &cases {
        let stderr = setup.refused(spec);
        assert!(stderr.contains(expected), "-o {spec}: {stderr}");
        assert!(
            !stderr.contains("RUN"),
            "refused before the build: {stderr}"
        );
    }
    assert!(!Path::new(&dest).exists());
    let conflicting = setup.kiln.fail(&[
        "build",
        "-o",
        "type=image,compression=zstd",
        "-o",
        "type=image,compression=gzip",
        setup.context(),
    ]);
    assert!(
        conflicting.contains("must give the same compression options"),
        "{conflicting}"
    );
}
