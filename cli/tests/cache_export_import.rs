//! `--cache-to` / `--cache-from` end to end, with the real `kiln` binary, a real registry
//! (behind a proxy that logs every request) and the real sandbox: a build exports its cache,
//! a build in a brand-new root imports it and must run nothing, download only the final
//! image's layers and produce the same image digest (SOURCE_DATE_EPOCH); a changed source
//! file runs only the steps after its COPY. Local and registry caches in min and max mode,
//! inline cache through a pushed image, and cache mounts.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_registry::{BlobSource, Reference, RegistryClient};
use kiln_testsupport::{busybox_image, FaultProxy, TestRegistry};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
const EPOCH: &str = "1700000000";

/// A builder stage whose first step is not in the final image, then a final stage that
/// copies from it.
const DOCKERFILE: &str = r#"ARG REGISTRY
FROM ${REGISTRY}/busybox:latest AS builder
RUN echo deps > /deps.txt
COPY lib.txt /src/lib.txt
RUN mkdir -p /out && cat /deps.txt /src/lib.txt > /out/lib

FROM ${REGISTRY}/busybox:latest
COPY --from=builder /out/lib /app/lib
COPY app.txt /app/app.txt
RUN cat /app/app.txt /app/lib > /app/combined
RUN echo final > /app/final
"#;

/// The registry with busybox, behind a logging proxy whose address every reference uses.
struct Registry {
    _registry: TestRegistry,
    proxy: FaultProxy,
    runtime: tokio::runtime::Runtime,
}

impl Registry {
    fn start() -> Registry {
        let registry = TestRegistry::start();
        let runtime = kiln_testsupport::runtime();
        let reference = registry.reference("busybox:latest");
        runtime
            .block_on(busybox_image().push(&registry.client(), &reference))
            .expect("pushing busybox");
        let proxy = FaultProxy::start(registry.address()).expect("starting the proxy");
        Registry {
            _registry: registry,
            proxy,
            runtime,
        }
    }

    fn address(&self) -> String {
        self.proxy.address()
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new().expect("registry client")
    }

    /// Digests of the blobs fetched with GET since the log was cleared.
    fn blob_gets(&self) -> Vec<String> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|request| request.method == "GET" && request.path.contains("/blobs/sha256:"))
            .filter_map(|request| {
                request
                    .path
                    .rsplit_once("/blobs/")
                    .map(|(_, digest)| digest.to_string())
            })
            .collect()
    }
}

/// A fresh store root; leftover mounts are detached on drop.
struct Root {
    directory: tempfile::TempDir,
}

impl Root {
    fn new() -> Root {
        Root {
            directory: tempfile::Builder::new()
                .prefix("kiln-cache-root-")
                .tempdir()
                .expect("temp root"),
        }
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }

    fn kiln(&self, subcommand: &str, args: &[&str]) -> Output {
        Command::new(KILN)
            .arg(subcommand)
            .arg("--root")
            .arg(self.path())
            .args(args)
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .stdin(Stdio::null())
            .output()
            .expect("running kiln")
    }

    fn build(&self, registry: &str, context: &Path, extra: &[&str]) -> Build {
        let registry_arg = format!("REGISTRY={registry}");
        let context = context.to_string_lossy().into_owned();
        let mut args = vec!["--progress", "json", "--build-arg", &registry_arg];
        args.extend_from_slice(extra);
        args.push(&context);
        let build = Build::from_output(self.kiln("build", &args));
        assert!(build.success, "build failed:\n{}", build.stderr);
        build
    }

    fn store(&self) -> kiln_snapshotter::Store {
        kiln_snapshotter::Store::open(self.path()).expect("opening the store")
    }

    /// The manifest digest and layer digests of a tagged image.
    fn image(&self, name: &str) -> (String, Vec<String>) {
        let store = self.store();
        let name = kiln_image::normalize_name(name).expect("name");
        let record = store.image(&name).expect("images").expect("tagged image");
        let resolved = store
            .resolve_layers(&record.target, &kiln_types::Platform::host())
            .expect("resolving");
        (
            record.target.digest.to_string(),
            resolved
                .manifest
                .layers
                .iter()
                .map(|layer| layer.digest.to_string())
                .collect(),
        )
    }

    /// Every blob in the content store.
    fn blobs(&self) -> BTreeSet<String> {
        self.store()
            .content()
            .list()
            .expect("listing blobs")
            .into_iter()
            .map(|digest| digest.to_string())
            .collect()
    }

    fn assert_no_mounts(&self) {
        let prefix = self.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let left: Vec<&str> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|mount| mount.starts_with(&prefix))
            .collect();
        assert!(left.is_empty(), "mounts left: {left:?}");
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let prefix = self.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|mount| mount.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: umount2 with a NUL-terminated path
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// One `kiln build --progress json`.
struct Build {
    success: bool,
    stderr: String,
    events: Vec<serde_json::Value>,
}

impl Build {
    fn from_output(output: Output) -> Build {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let events = stderr
            .lines()
            .filter(|line| line.starts_with('{'))
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Build {
            success: output.status.success(),
            stderr,
            events,
        }
    }

    fn names(&self, kind: &str) -> BTreeSet<String> {
        self.events
            .iter()
            .filter(|event| event["kind"] == kind)
            .filter_map(|event| event["name"].as_str().map(str::to_string))
            .collect()
    }

    /// Dockerfile steps that ran.
    fn ran(&self) -> BTreeSet<String> {
        self.names("started")
            .into_iter()
            .filter(|name| name.starts_with('[') && !name.starts_with("[internal]"))
            .collect()
    }

    fn cached(&self) -> BTreeSet<String> {
        self.names("cached")
    }

    fn ran_step(&self, text: &str) -> bool {
        self.ran().iter().any(|name| name.contains(text))
    }

    fn cached_step(&self, text: &str) -> bool {
        self.cached().iter().any(|name| name.contains(text))
    }

    /// The output lines of the steps.
    fn logs(&self) -> String {
        self.events
            .iter()
            .filter(|event| event["kind"] == "log")
            .filter_map(|event| event["data"].as_str())
            .collect()
    }
}

fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let directory = tempfile::Builder::new()
        .prefix("kiln-cache-context-")
        .tempdir()
        .expect("temp context");
    for (path, contents) in files {
        std::fs::write(directory.path().join(path), contents).expect("writing the context");
    }
    directory
}

fn app_context(app: &str, lib: &str) -> tempfile::TempDir {
    context(&[
        ("Dockerfile", DOCKERFILE),
        ("app.txt", app),
        ("lib.txt", lib),
    ])
}

/// The layer blobs a local cache's config lists.
fn local_cache_layers(directory: &Path) -> Vec<String> {
    let config = kiln_exporter::cache::import_local(directory, "latest")
        .expect("reading the cache")
        .expect("a cache");
    config
        .layers
        .iter()
        .filter(|layer| !layer.empty)
        .map(|layer| layer.blob.digest.to_string())
        .collect()
}

fn assert_all_cached(build: &Build) {
    assert!(
        build.ran().is_empty(),
        "steps ran with a complete cache: {:?}\n{}",
        build.ran(),
        build.stderr
    );
    // The target is loaded; the solver needs nothing below it.
    assert!(
        build.cached_step("RUN echo final"),
        "target not cached: {:?}",
        build.cached()
    );
}

/// In a fresh root, only the final image's layers (and small documents) may be downloaded:
/// no layer of the cache that the final image does not have is in the store.
fn assert_only_final_layers(root: &Root, cache_layers: &[String], final_layers: &[String]) {
    let blobs = root.blobs();
    let final_layers: HashSet<&String> = final_layers.iter().collect();
    for layer in cache_layers {
        if !final_layers.contains(layer) {
            assert!(
                !blobs.contains(layer),
                "layer {layer} is not in the final image but was downloaded"
            );
        }
    }
    for layer in &final_layers {
        assert!(blobs.contains(*layer), "final layer {layer} missing");
    }
}

#[test]
fn local_cache_min_rebuilds_nothing_in_a_fresh_root() {
    let registry = Registry::start();
    let address = registry.address();
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_dir = cache.path().join("cache");
    let to = format!("type=local,dest={}", cache_dir.display());
    let from = format!("type=local,src={}", cache_dir.display());
    let context = app_context("app v1\n", "lib v1\n");

    let first_root = Root::new();
    let first = first_root.build(
        &address,
        context.path(),
        &["-t", "app:1", "--cache-to", &to],
    );
    assert!(first.ran_step("RUN echo final"));
    let (first_digest, first_layers) = first_root.image("app:1");
    first_root.assert_no_mounts();

    // Brand-new root: nothing runs, not even the builder stage the final image copies from.
    let fresh = Root::new();
    let second = fresh.build(
        &address,
        context.path(),
        &["-t", "app:1", "--cache-from", &from],
    );
    assert_all_cached(&second);
    assert!(!second.ran_step("RUN echo deps"));
    let (second_digest, second_layers) = fresh.image("app:1");
    assert_eq!(
        second_digest, first_digest,
        "same image digest from the cache"
    );
    assert_eq!(second_layers, first_layers);
    assert_only_final_layers(&fresh, &local_cache_layers(&cache_dir), &first_layers);
    fresh.assert_no_mounts();

    // A changed source file: only the steps after its COPY run. In min mode the builder's
    // records are not exported, but its checksum is: it is not needed.
    let changed = app_context("app v2\n", "lib v1\n");
    let third_root = Root::new();
    let third = third_root.build(
        &address,
        changed.path(),
        &["-t", "app:2", "--cache-from", &from],
    );
    let ran: Vec<String> = third.ran().into_iter().collect();
    assert!(third.ran_step("COPY app.txt"), "ran: {ran:?}");
    assert!(third.ran_step("RUN cat /app/app.txt"), "ran: {ran:?}");
    assert!(third.ran_step("RUN echo final"), "ran: {ran:?}");
    assert!(!third.ran_step("COPY --from=builder"), "ran: {ran:?}");
    assert!(!third.ran_step("RUN echo deps"), "ran: {ran:?}");
    assert!(!third.ran_step("RUN mkdir"), "ran: {ran:?}");
    assert_eq!(ran.len(), 3, "ran: {ran:?}");
}

#[test]
fn local_cache_max_keeps_intermediate_stages() {
    let registry = Registry::start();
    let address = registry.address();
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_dir = cache.path().join("cache");
    let context = app_context("app v1\n", "lib v1\n");
    let first_root = Root::new();
    for (mode, expect_deps_cached) in [("min", false), ("max", true)] {
        let to = format!(
            "type=local,dest={},tag={mode},mode={mode}",
            cache_dir.display()
        );
        first_root.build(
            &address,
            context.path(),
            &["-t", "app:1", "--cache-to", &to],
        );
        // The builder's source changes: its first step is only in a max cache.
        let changed = app_context("app v1\n", "lib v2\n");
        let from = format!("type=local,src={},tag={mode}", cache_dir.display());
        let fresh = Root::new();
        let build = fresh.build(
            &address,
            changed.path(),
            &["-t", "app:2", "--cache-from", &from],
        );
        assert_eq!(
            build.cached_step("RUN echo deps"),
            expect_deps_cached,
            "mode={mode}: ran {:?}, cached {:?}",
            build.ran(),
            build.cached()
        );
        assert_eq!(build.ran_step("RUN echo deps"), !expect_deps_cached);
        assert!(build.ran_step("COPY lib.txt"));
        assert!(build.ran_step("RUN mkdir"));
        fresh.assert_no_mounts();
    }

    // Fully cached from the max cache: the builder's layers are in the cache but the
    // fresh root downloads only the final image's.
    let from = format!("type=local,src={},tag=max", cache_dir.display());
    let fresh = Root::new();
    let build = fresh.build(
        &address,
        context.path(),
        &["-t", "app:1", "--cache-from", &from],
    );
    assert_all_cached(&build);
    let (digest, layers) = fresh.image("app:1");
    assert_eq!(digest, first_root.image("app:1").0);
    let config = kiln_exporter::cache::import_local(&cache_dir, "max")
        .unwrap()
        .unwrap();
    let cache_layers: Vec<String> = config
        .layers
        .iter()
        .filter(|layer| !layer.empty)
        .map(|layer| layer.blob.digest.to_string())
        .collect();
    assert!(
        cache_layers.iter().any(|layer| !layers.contains(layer)),
        "a max cache holds the builder stage's layers too"
    );
    assert_only_final_layers(&fresh, &cache_layers, &layers);
}

#[test]
fn registry_cache_downloads_only_the_final_layers() {
    let registry = Registry::start();
    let address = registry.address();
    let context = app_context("app v1\n", "lib v1\n");
    for mode in ["min", "max"] {
        let cache_ref = format!("{address}/cache/app:{mode}");
        let to = format!("type=registry,ref={cache_ref},mode={mode}");
        let first_root = Root::new();
        first_root.build(
            &address,
            context.path(),
            &["-t", "app:1", "--cache-to", &to],
        );
        let (first_digest, first_layers) = first_root.image("app:1");

        registry.proxy.clear_log();
        let fresh = Root::new();
        let from = format!("type=registry,ref={cache_ref}");
        let build = fresh.build(
            &address,
            context.path(),
            &["-t", "app:1", "--cache-from", &from],
        );
        assert_all_cached(&build);
        let (digest, layers) = fresh.image("app:1");
        assert_eq!(digest, first_digest, "mode={mode}");
        assert_eq!(layers, first_layers);
        // Blob GETs: the final image's layers (once each) and documents (configs), nothing
        // else that is a layer of the cache.
        let gets = registry.blob_gets();
        let cache_config = registry
            .runtime
            .block_on(kiln_exporter::cache::import_registry(
                &registry.client(),
                &Reference::parse(&cache_ref).unwrap(),
            ))
            .unwrap()
            .unwrap();
        let cache_layers: HashSet<String> = cache_config
            .layers
            .iter()
            .filter(|layer| !layer.empty)
            .map(|layer| layer.blob.digest.to_string())
            .collect();
        for digest in &gets {
            if cache_layers.contains(digest) {
                assert!(
                    layers.contains(digest),
                    "mode={mode}: downloaded {digest}, not a layer of the final image"
                );
            }
        }
        for layer in &layers {
            let count = gets.iter().filter(|get| *get == layer).count();
            assert_eq!(count, 1, "mode={mode}: layer {layer} fetched {count} times");
        }
        if mode == "max" {
            assert!(cache_layers.iter().any(|layer| !layers.contains(layer)));
        }
        fresh.assert_no_mounts();

        // The same cache used and re-exported in place: the next fresh root still finds
        // every record (re-exported without downloading the ones not needed).
        let again = Root::new();
        let both = ["-t", "app:1", "--cache-from", &from, "--cache-to", &to];
        let build = again.build(&address, context.path(), &both);
        assert_all_cached(&build);
        let last = Root::new();
        let changed = app_context("app v1\n", "lib v2\n");
        let build = last.build(
            &address,
            changed.path(),
            &["-t", "app:2", "--cache-from", &from],
        );
        assert_eq!(
            build.cached_step("RUN echo deps"),
            mode == "max",
            "mode={mode}"
        );
    }
}

/// Pushes a tagged image of a root's store to `reference`.
fn push_image(registry: &Registry, root: &Root, name: &str, reference: &Reference) {
    let store = root.store();
    let name = kiln_image::normalize_name(name).unwrap();
    let record = store.image(&name).unwrap().unwrap();
    let resolved = store
        .resolve_layers(&record.target, &kiln_types::Platform::host())
        .unwrap();
    let client = registry.client();
    registry.runtime.block_on(async {
        for blob in resolved
            .manifest
            .layers
            .iter()
            .chain(std::iter::once(&resolved.manifest.config))
        {
            client
                .push_blob(
                    reference,
                    blob,
                    BlobSource::File(store.content().blob_path(&blob.digest)),
                )
                .await
                .expect("pushing a blob");
        }
        let bytes = std::fs::read(store.content().blob_path(&record.target.digest)).unwrap();
        client
            .push_manifest(reference, &record.target.media_type, bytes.into())
            .await
            .expect("pushing the manifest");
    });
}

#[test]
fn inline_cache_comes_with_the_pushed_image() {
    let registry = Registry::start();
    let address = registry.address();
    let context = app_context("app v1\n", "lib v1\n");
    let image_ref = format!("{address}/app:inline");
    let first_root = Root::new();
    first_root.build(
        &address,
        context.path(),
        &["-t", &image_ref, "--cache-to", "type=inline"],
    );
    let (first_digest, first_layers) = first_root.image(&image_ref);
    let reference = Reference::parse(&image_ref).unwrap();
    push_image(&registry, &first_root, &image_ref, &reference);

    registry.proxy.clear_log();
    let fresh = Root::new();
    let build = fresh.build(
        &address,
        context.path(),
        &[
            "-t",
            &image_ref,
            "--cache-from",
            &image_ref,
            "--cache-to",
            "type=inline",
        ],
    );
    assert_all_cached(&build);
    let (digest, layers) = fresh.image(&image_ref);
    assert_eq!(
        digest, first_digest,
        "the same image, inline cache included"
    );
    assert_eq!(layers, first_layers);
    for layer in &layers {
        let count = registry
            .blob_gets()
            .iter()
            .filter(|get| *get == layer)
            .count();
        assert_eq!(count, 1, "layer {layer} fetched {count} times");
    }
    fresh.assert_no_mounts();
}

#[test]
fn cache_mounts_are_restored_on_a_fresh_machine() {
    let registry = Registry::start();
    let address = registry.address();
    let dockerfile = r#"ARG REGISTRY
FROM ${REGISTRY}/busybox:latest
COPY stamp.txt /stamp.txt
RUN --mount=type=cache,target=/cache,id=warm sh -c 'echo "cache-files=$(ls /cache | wc -l)"; touch /cache/file-$(cat /stamp.txt)'
"#;
    let cache = tempfile::tempdir().expect("cache dir");
    let cache_dir: PathBuf = cache.path().join("cache");
    let to = format!(
        "type=local,dest={},mode=max,cache-mounts=true",
        cache_dir.display()
    );
    let from = format!("type=local,src={}", cache_dir.display());

    let first_root = Root::new();
    let first_context = context(&[("Dockerfile", dockerfile), ("stamp.txt", "a")]);
    let first = first_root.build(
        &address,
        first_context.path(),
        &["-t", "warm:1", "--cache-to", &to],
    );
    assert!(first.logs().contains("cache-files=0"), "{}", first.logs());

    // A fresh machine whose RUN must run (the stamp changed) starts with the cache warm,
    // and exports the grown cache.
    let second_root = Root::new();
    let second_context = context(&[("Dockerfile", dockerfile), ("stamp.txt", "b")]);
    let second = second_root.build(
        &address,
        second_context.path(),
        &["-t", "warm:2", "--cache-from", &from, "--cache-to", &to],
    );
    assert!(
        second.ran_step("RUN --mount=type=cache"),
        "ran {:?}",
        second.ran()
    );
    assert!(second.logs().contains("cache-files=1"), "{}", second.logs());

    let third_root = Root::new();
    let third_context = context(&[("Dockerfile", dockerfile), ("stamp.txt", "c")]);
    let third = third_root.build(
        &address,
        third_context.path(),
        &["-t", "warm:3", "--cache-from", &from],
    );
    assert!(third.logs().contains("cache-files=2"), "{}", third.logs());
    third_root.assert_no_mounts();

    // Without cache-mounts=true nothing of the mount is exported.
    let plain_dir = cache.path().join("plain");
    let plain_to = format!("type=local,dest={},mode=max", plain_dir.display());
    first_root.build(
        &address,
        first_context.path(),
        &["-t", "warm:1", "--cache-to", &plain_to],
    );
    let config = kiln_exporter::cache::import_local(&plain_dir, "latest")
        .unwrap()
        .unwrap();
    assert!(config.cache_mounts.is_empty());
}

#[test]
fn bad_cache_options_are_refused_and_missing_caches_are_warnings() {
    let registry = Registry::start();
    let address = registry.address();
    let context = app_context("app v1\n", "lib v1\n");
    let root = Root::new();
    let registry_arg = format!("REGISTRY={address}");
    let context_arg = context.path().to_string_lossy().into_owned();
    for bad in [
        "type=local",
        "type=ftp,dest=/tmp/x",
        "type=local,dest=/tmp/x,mode=all",
        "type=inline,cache-mounts=true",
        "type=local,dest=/tmp/x,colour=blue",
    ] {
        let output = root.kiln(
            "build",
            &[
                "--build-arg",
                &registry_arg,
                "--cache-to",
                bad,
                &context_arg,
            ],
        );
        assert!(!output.status.success(), "--cache-to {bad} accepted");
    }
    let missing = tempfile::tempdir().unwrap();
    let from = format!("type=local,src={}", missing.path().join("none").display());
    let output = root.kiln(
        "build",
        &[
            "--build-arg",
            &registry_arg,
            "--cache-from",
            &from,
            &context_arg,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("no cache found"), "{stderr}");

    // A cache directory with a corrupted layer: a miss, the step runs, the build succeeds.
    let cache_dir = missing.path().join("cache");
    let to = format!("type=local,dest={}", cache_dir.display());
    root.build(
        &address,
        context.path(),
        &["-t", "app:1", "--cache-to", &to],
    );
    for layer in local_cache_layers(&cache_dir) {
        let path = kiln_exporter::cache::local_blob_path(
            &cache_dir,
            &kiln_types::Digest::parse(&layer).unwrap(),
        );
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
    }
    let fresh = Root::new();
    let from = format!("type=local,src={}", cache_dir.display());
    let build = fresh.build(
        &address,
        context.path(),
        &["-t", "app:1", "--cache-from", &from],
    );
    assert!(build.ran_step("RUN echo final"), "ran {:?}", build.ran());
    assert!(build.stderr.contains("not used"), "{}", build.stderr);
    fresh.assert_no_mounts();
}
