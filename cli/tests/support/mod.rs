//! Shared helpers of the end-to-end build tests: a registry seeded with `busybox`, a temp
//! store root that is checked for leftover mounts, and the real `kiln` binary driven with
//! `--progress json` so steps can be told apart as run or cached.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use kiln_testsupport::{busybox_image, BuiltImage, TestRegistry};

/// The `kiln` binary under test.
pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A registry on loopback holding `busybox:latest`. Dockerfiles name their base
/// `${REGISTRY}/busybox:latest` after `ARG REGISTRY`; builds get `--build-arg REGISTRY=<address>`.
pub struct Registry {
    pub registry: TestRegistry,
    pub runtime: tokio::runtime::Runtime,
}

impl Registry {
    pub fn with_busybox() -> Registry {
        let registry = TestRegistry::start();
        let runtime = kiln_testsupport::runtime();
        let registry = Registry { registry, runtime };
        registry.push(&busybox_image(), "busybox:latest");
        registry
    }

    pub fn address(&self) -> &str {
        self.registry.address()
    }

    /// Pushes `image` as `name` (`repository:tag`).
    pub fn push(&self, image: &BuiltImage, name: &str) {
        let reference = self.registry.reference(name);
        self.runtime
            .block_on(image.push(&self.registry.client(), &reference))
            .unwrap_or_else(|error| panic!("pushing {name}: {error}"));
    }
}

/// busybox with one more layer holding `/base-marker` (`text`): a different base digest
/// under the same tag.
pub fn busybox_with_marker(text: &str) -> BuiltImage {
    let base = busybox_image();
    let mut layer = kiln_testsupport::LayerBuilder::new();
    layer.file("base-marker", text.as_bytes(), 0o644);
    let mut builder = kiln_testsupport::ImageBuilder::new();
    for existing in base.layers {
        builder = builder.layer(existing);
    }
    builder
        .layer_tar(layer.finish())
        .config(|config| *config = base.config.config.clone())
        .build()
}

/// A store root for one test. Dropping it unmounts anything left (lazily) so the directory can
/// go; tests call [`Root::assert_clean`] to fail on leftovers.
pub struct Root {
    directory: tempfile::TempDir,
}

impl Root {
    pub fn new() -> Root {
        let directory = tempfile::Builder::new()
            .prefix("kiln-e2e-root-")
            .tempdir()
            .expect("temp root");
        Root { directory }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// Mount points under this root, from /proc/self/mountinfo.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(self.path())
    }

    /// Panics when a mount is left under the root (nothing may stay mounted once kiln exits).
    pub fn assert_clean(&self) {
        let mounts = self.mounts();
        assert!(
            mounts.is_empty(),
            "mounts left under {}: {mounts:#?}",
            self.path().display()
        );
    }

    /// Runs `kiln` with `--root` (put after the subcommand) and the given arguments.
    pub fn kiln(&self, subcommand: &str, args: &[&str]) -> Output {
        self.command(subcommand, args)
            .stdin(Stdio::null())
            .output()
            .expect("running kiln")
    }

    /// The command without running it (to add environment or spawn it).
    pub fn command(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut command = Command::new(KILN);
        command.arg(subcommand).arg("--root").arg(self.path());
        command.args(args);
        command
    }

    /// `kiln build --progress json` of `context` with `REGISTRY` set; extra flags after.
    pub fn build(&self, registry: &str, context: &Path, extra: &[&str]) -> Build {
        let registry_arg = format!("REGISTRY={registry}");
        let mut args = vec!["--progress", "json", "--build-arg", &registry_arg];
        args.extend_from_slice(extra);
        let context = context.to_string_lossy().into_owned();
        args.push(&context);
        Build::from_output(self.kiln("build", &args))
    }

    /// `kiln run --rm IMAGE sh -c SCRIPT` (the image's entrypoint replaced by `/bin/sh`).
    pub fn run_shell(&self, image: &str, script: &str) -> Output {
        self.kiln(
            "run",
            &["--rm", "--entrypoint", "/bin/sh", image, "-c", script],
        )
    }

    /// The image config (`ImageSpec` as JSON) of a tagged image, read from the store.
    pub fn image_config(&self, image: &str) -> serde_json::Value {
        let store = kiln_snapshotter::Store::open(self.path()).expect("opening the store");
        let name = kiln_image::normalize_name(image).expect("image name");
        let record = store
            .image(&name)
            .expect("reading images")
            .unwrap_or_else(|| panic!("no image {name} in the store"));
        let resolved = store
            .resolve_layers(&record.target, &kiln_types::Platform::host())
            .expect("resolving the image");
        serde_json::to_value(&resolved.config).expect("config JSON")
    }

    /// The manifest digest an image name points at.
    pub fn image_digest(&self, image: &str) -> String {
        let store = kiln_snapshotter::Store::open(self.path()).expect("opening the store");
        let name = kiln_image::normalize_name(image).expect("image name");
        store
            .image(&name)
            .expect("reading images")
            .unwrap_or_else(|| panic!("no image {name} in the store"))
            .target
            .digest
            .to_string()
    }
}

impl Default for Root {
    fn default() -> Self {
        Root::new()
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        // Deepest first, detached: a leftover must not keep the temp dir (or the test) alive.
        let mut mounts = self.mounts();
        mounts.sort_by_key(|mount| std::cmp::Reverse(mount.len()));
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount) {
                // SAFETY: umount2 on a NUL-terminated path
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// Mount points at or under `path` (mountinfo's fifth field, octal escapes decoded).
pub fn mounts_under(path: &Path) -> Vec<String> {
    let prefix = path.to_string_lossy().into_owned();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|mount| mount == &prefix || mount.starts_with(&format!("{prefix}/")))
        .collect()
}

fn unescape_mountinfo(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\' && index + 4 <= bytes.len() {
            let digits = std::str::from_utf8(&bytes[index + 1..index + 4]).unwrap_or("");
            if let Ok(value) = u8::from_str_radix(digits, 8) {
                out.push(value);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What one `kiln build --progress json` did.
#[derive(Debug)]
pub struct Build {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    /// Every progress event, parsed.
    pub events: Vec<serde_json::Value>,
}

impl Build {
    pub fn from_output(output: Output) -> Build {
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let events = stderr
            .lines()
            .filter(|line| line.starts_with('{'))
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        Build {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
            events,
        }
    }

    /// Panics with the output unless the build succeeded.
    pub fn assert_success(&self) -> &Build {
        assert!(self.success, "build failed:\n{}", self.human_stderr());
        self
    }

    /// The stderr without the JSON event lines.
    pub fn human_stderr(&self) -> String {
        self.stderr
            .lines()
            .filter(|line| !line.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn names_of(&self, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .events
            .iter()
            .filter(|event| event["kind"] == kind)
            .filter_map(|event| event["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Steps that ran (a `started` event).
    pub fn ran(&self) -> Vec<String> {
        self.names_of("started")
    }

    /// Steps answered from the cache.
    pub fn cached(&self) -> Vec<String> {
        self.names_of("cached")
    }

    /// Whether a step whose name contains `text` ran.
    pub fn ran_step(&self, text: &str) -> bool {
        self.ran().iter().any(|name| name.contains(text))
    }

    /// Whether a step whose name contains `text` was cached.
    pub fn cached_step(&self, text: &str) -> bool {
        self.cached().iter().any(|name| name.contains(text))
    }

    /// The ran steps that are Dockerfile instructions, `FROM` included (not `[internal]` ones
    /// like loading the context).
    pub fn ran_instructions(&self) -> Vec<String> {
        self.ran()
            .into_iter()
            .filter(|name| name.starts_with('[') && !name.starts_with("[internal]"))
            .collect()
    }
}

/// Copies a directory tree (files, dirs, symlinks) for a test to edit.
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "copying {} failed", from.display());
}

/// Writes a context: `(path, contents)` pairs under a fresh temp dir.
pub fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let directory = tempfile::Builder::new()
        .prefix("kiln-e2e-context-")
        .tempdir()
        .expect("temp context");
    for (path, contents) in files {
        write(directory.path(), path, contents);
    }
    directory
}

pub fn write(root: &Path, path: &str, contents: &str) {
    let full: PathBuf = root.join(path);
    if let Some(parent) = full.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&full, contents).expect("write");
}

/// Text of an output's stdout and stderr, for assertion messages.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
