//! Shared helpers of the `image_*` end-to-end tests: a fresh kiln root per test, the real
//! `kiln` binary run against it, and seeding images into a test registry.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_registry::Reference;
use kiln_snapshotter::Store;
use kiln_testsupport::{BuiltImage, TestRegistry};

/// A temporary kiln root, with its own credentials file and Docker config directory.
pub struct Kiln {
    directory: tempfile::TempDir,
}

impl Kiln {
    pub fn new() -> Self {
        let directory = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(directory.path().join("docker")).expect("docker config dir");
        Kiln { directory }
    }

    pub fn root(&self) -> PathBuf {
        self.directory.path().join("root")
    }

    /// Where `DOCKER_CONFIG` points.
    pub fn docker_config_dir(&self) -> PathBuf {
        self.directory.path().join("docker")
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.directory.path().join("credentials.json")
    }

    /// `kiln ARGS` with this root (through `KILN_ROOT`) and private credential files.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
        command
            .args(args)
            .env("KILN_ROOT", self.root())
            .env("KILN_CREDENTIALS_FILE", self.credentials_file())
            .env("DOCKER_CONFIG", self.docker_config_dir())
            .env("HOME", self.directory.path())
            .env_remove("XDG_CONFIG_HOME");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running kiln")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "kiln {args:?} failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs and expects failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "kiln {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Opens the store (as another process would).
    pub fn store(&self) -> Store {
        Store::open(self.root()).expect("opening the store")
    }

    /// `kiln inspect REF` parsed.
    pub fn inspect(&self, reference: &str) -> serde_json::Value {
        let text = self.ok(&["inspect", reference]);
        let mut documents: Vec<serde_json::Value> =
            serde_json::from_str(&text).expect("inspect JSON");
        assert_eq!(documents.len(), 1);
        documents.remove(0)
    }

    /// The stored names, from `kiln images --format json`.
    pub fn image_names(&self) -> Vec<String> {
        self.ok(&["images", "--format", "json"])
            .lines()
            .map(|line| {
                let row: serde_json::Value = serde_json::from_str(line).expect("images JSON");
                row["Name"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    }

    /// Every blob file's name must be the sha256 of its bytes: nothing partial is visible.
    pub fn assert_blobs_verified(&self) {
        let blobs = self.root().join("content/blobs/sha256");
        for entry in std::fs::read_dir(&blobs).expect("blobs dir") {
            let entry = entry.expect("blob entry");
            let bytes = std::fs::read(entry.path()).expect("blob");
            let digest = kiln_types::Digest::of_bytes(&bytes);
            assert_eq!(
                digest.hex(),
                entry.file_name().to_string_lossy(),
                "blob {:?} does not match its name",
                entry.path()
            );
        }
    }

    pub fn blob_exists(&self, digest: &kiln_types::Digest) -> bool {
        self.root()
            .join("content/blobs/sha256")
            .join(digest.hex())
            .exists()
    }
}

/// Pushes `image` to `registry` as `name` (e.g. `busybox:latest`); returns the reference.
pub fn push(registry: &TestRegistry, image: &BuiltImage, name: &str) -> Reference {
    push_with(registry, &registry.client(), image, name)
}

/// Pushes with the given client (the admin client of an auth registry).
pub fn push_with(
    registry: &TestRegistry,
    client: &kiln_registry::RegistryClient,
    image: &BuiltImage,
    name: &str,
) -> Reference {
    let reference = registry.reference(name);
    kiln_testsupport::runtime()
        .block_on(image.push(client, &reference))
        .expect("pushing the seed image");
    reference
}

/// A one-layer image with `size` bytes of incompressible data in `/data.bin` (its gzip is
/// about as large).
pub fn big_image(size: usize, seed: u64) -> BuiltImage {
    let mut state = seed | 1;
    let mut data = vec![0u8; size];
    for chunk in data.chunks_mut(8) {
        // xorshift64: fast, and gzip cannot shrink it.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let bytes = state.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let mut layer = kiln_testsupport::LayerBuilder::new();
    layer.file("data.bin", &data, 0o644);
    kiln_testsupport::ImageBuilder::new()
        .layer_tar(layer.finish())
        .build()
}

/// The `fs` directory of a snapshot id given in inspect JSON.
pub fn snapshot_fs(kiln: &Kiln, id: &str) -> PathBuf {
    kiln.root().join("snapshots").join(id).join("fs")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("reading {path:?}: {error}"))
}
