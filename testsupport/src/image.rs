//! Image builders for seeding registries: layer tars (files, links, whiteouts, xattrs) ->
//! gzip layers -> config -> manifest -> push; multi-platform indexes; ready-made seeds
//! (busybox from Debian's busybox-static, a many-layer image, a special-files image).

use std::io::Write as _;

use bytes::Bytes;
use flate2::write::GzEncoder;
use kiln_registry::{BlobSource, Reference, RegistryClient, RegistryError};
use kiln_types::media_type::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
    OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST,
};
use kiln_types::{
    Descriptor, Digest, History, ImageConfig, ImageIndex, ImageManifest, ImageSpec, Platform,
    RootFs,
};

/// A fixed mtime for every entry, so seeds are reproducible (2020-01-01).
pub const SEED_MTIME: u64 = 1_577_836_800;

/// Writes a layer tar entry by entry.
pub struct LayerBuilder {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    pub fn new() -> Self {
        LayerBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(SEED_MTIME);
        header
    }

    fn append(&mut self, mut header: tar::Header, path: &str, data: &[u8]) -> &mut Self {
        // Long names go through the tar crate's GNU long-name path; writes to a Vec cannot
        // fail, so an error here is a harness bug.
        if let Err(error) = self.builder.append_data(&mut header, path, data) {
            panic!("writing tar entry {path:?}: {error}");
        }
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let header = Self::header(tar::EntryType::Directory, mode, 0);
        self.append(header, &format!("{}/", path.trim_end_matches('/')), &[])
    }

    pub fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> &mut Self {
        let header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        self.append(header, path, contents)
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Regular, mode, contents.len() as u64);
        header.set_uid(uid);
        header.set_gid(gid);
        self.append(header, path, contents)
    }

    /// A regular file preceded by a PAX header carrying `SCHILY.xattr.<name>` records.
    pub fn file_with_xattrs(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
        xattrs: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut records = Vec::new();
        for (name, value) in xattrs {
            let mut payload = format!("SCHILY.xattr.{name}=").into_bytes();
            payload.extend_from_slice(value);
            payload.push(b'\n');
            records.extend_from_slice(&pax_record(&payload));
        }
        let pax_header = Self::header(tar::EntryType::XHeader, 0o644, records.len() as u64);
        let pax_name = format!("PaxHeaders.0/{}", path.rsplit('/').next().unwrap_or(path));
        self.append(pax_header, &pax_name, &records);
        self.file(path, contents, mode)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Symlink, 0o777, 0);
        if let Err(error) = self.builder.append_link(&mut header, path, target) {
            panic!("writing symlink {path:?}: {error}");
        }
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut header = Self::header(tar::EntryType::Link, 0o644, 0);
        if let Err(error) = self.builder.append_link(&mut header, path, target) {
            panic!("writing hardlink {path:?}: {error}");
        }
        self
    }

    /// `dir/.wh.name`: deletes `dir/name` from lower layers.
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (parent, name) = match path.rsplit_once('/') {
            Some((parent, name)) => (format!("{parent}/"), name),
            None => (String::new(), path),
        };
        self.file(&format!("{parent}.wh.{name}"), &[], 0o644)
    }

    /// `dir/.wh..wh..opq`: hides everything lower layers had in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            &[],
            0o644,
        )
    }

    pub fn finish(self) -> Vec<u8> {
        match self.builder.into_inner() {
            Ok(bytes) => bytes,
            Err(error) => panic!("finishing tar: {error}"),
        }
    }
}

/// One PAX record: `<length> <payload>` where the length counts itself.
fn pax_record(payload: &[u8]) -> Vec<u8> {
    let mut length = payload.len() + 2;
    loop {
        let total = length.to_string().len() + 1 + payload.len();
        if total == length {
            break;
        }
        length = total;
    }
    let mut record = format!("{length} ").into_bytes();
    record.extend_from_slice(payload);
    record
}

/// A layer ready to push: its tar, compressed blob, diff id and descriptor.
#[derive(Debug, Clone)]
pub struct Layer {
    pub tar: Bytes,
    pub blob: Bytes,
    pub diff_id: Digest,
    pub descriptor: Descriptor,
}

impl Layer {
    /// A gzip layer (OCI media type).
    pub fn gzip(tar: Vec<u8>) -> Self {
        Self::gzip_with_media_type(tar, OCI_LAYER_GZIP)
    }

    pub fn gzip_with_media_type(tar: Vec<u8>, media_type: &str) -> Self {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let compressed = encoder
            .write_all(&tar)
            .and_then(|()| encoder.finish())
            .unwrap_or_else(|error| panic!("gzip into memory: {error}"));
        let diff_id = Digest::of_bytes(&tar);
        let digest = Digest::of_bytes(&compressed);
        Layer {
            descriptor: Descriptor::new(media_type, digest, compressed.len() as u64),
            tar: Bytes::from(tar),
            blob: Bytes::from(compressed),
            diff_id,
        }
    }

    /// An uncompressed layer.
    pub fn uncompressed(tar: Vec<u8>) -> Self {
        let digest = Digest::of_bytes(&tar);
        let tar = Bytes::from(tar);
        Layer {
            descriptor: Descriptor::new(OCI_LAYER_TAR, digest.clone(), tar.len() as u64),
            blob: tar.clone(),
            tar,
            diff_id: digest,
        }
    }
}

/// Builds one single-platform image.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    platform: Platform,
    layers: Vec<Layer>,
    config: ImageConfig,
    docker_media_types: bool,
    history: Vec<History>,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ImageBuilder {
    /// An empty image for the host platform, OCI media types.
    pub fn new() -> Self {
        ImageBuilder {
            platform: Platform::host(),
            layers: Vec::new(),
            config: ImageConfig::default(),
            docker_media_types: false,
            history: Vec::new(),
        }
    }

    pub fn platform(mut self, platform: Platform) -> Self {
        self.platform = platform;
        self
    }

    /// Uses Docker v2 media types (manifest, config, gzip layers).
    pub fn docker_media_types(mut self) -> Self {
        self.docker_media_types = true;
        self
    }

    /// Adds a layer from tar bytes (gzip-compressed).
    pub fn layer_tar(self, tar: Vec<u8>) -> Self {
        let media_type = if self.docker_media_types {
            DOCKER_LAYER_GZIP
        } else {
            OCI_LAYER_GZIP
        };
        self.layer(Layer::gzip_with_media_type(tar, media_type))
    }

    pub fn layer(mut self, layer: Layer) -> Self {
        self.history.push(History {
            created_by: Some(format!("layer {}", self.layers.len())),
            ..History::default()
        });
        self.layers.push(layer);
        self
    }

    /// Changes the runtime config.
    pub fn config(mut self, change: impl FnOnce(&mut ImageConfig)) -> Self {
        change(&mut self.config);
        self
    }

    pub fn build(self) -> BuiltImage {
        let (manifest_type, config_type) = if self.docker_media_types {
            (DOCKER_MANIFEST, DOCKER_CONFIG)
        } else {
            (OCI_MANIFEST, OCI_CONFIG)
        };
        let spec = ImageSpec {
            created: Some("2020-01-01T00:00:00Z".into()),
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            config: self.config,
            rootfs: RootFs::layers(
                self.layers
                    .iter()
                    .map(|layer| layer.diff_id.clone())
                    .collect(),
            ),
            history: self.history,
            ..ImageSpec::default()
        };
        let config_bytes = Bytes::from(
            serde_json::to_vec(&spec).unwrap_or_else(|error| panic!("config JSON: {error}")),
        );
        let config_descriptor = Descriptor::new(
            config_type,
            Digest::of_bytes(&config_bytes),
            config_bytes.len() as u64,
        );
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(manifest_type.to_string()),
            config: config_descriptor.clone(),
            layers: self
                .layers
                .iter()
                .map(|layer| layer.descriptor.clone())
                .collect(),
            annotations: None,
            extra: Default::default(),
        };
        let manifest_bytes = Bytes::from(
            serde_json::to_vec(&manifest).unwrap_or_else(|error| panic!("manifest JSON: {error}")),
        );
        BuiltImage {
            manifest_digest: Digest::of_bytes(&manifest_bytes),
            manifest_media_type: manifest_type.to_string(),
            manifest,
            manifest_bytes,
            config: spec,
            config_bytes,
            config_descriptor,
            layers: self.layers,
            platform: self.platform,
        }
    }
}

/// A built image, ready to push.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: ImageManifest,
    pub manifest_bytes: Bytes,
    pub manifest_digest: Digest,
    pub manifest_media_type: String,
    pub config: ImageSpec,
    pub config_bytes: Bytes,
    pub config_descriptor: Descriptor,
    pub layers: Vec<Layer>,
    pub platform: Platform,
}

impl BuiltImage {
    /// The manifest's descriptor, with its platform (as an index entry).
    pub fn descriptor(&self) -> Descriptor {
        let mut descriptor = Descriptor::new(
            self.manifest_media_type.clone(),
            self.manifest_digest.clone(),
            self.manifest_bytes.len() as u64,
        );
        descriptor.platform = Some(self.platform.clone());
        descriptor
    }

    /// Pushes layers and config, then the manifest under `reference`'s tag; returns the
    /// manifest digest.
    pub async fn push(
        &self,
        client: &RegistryClient,
        reference: &Reference,
    ) -> Result<Digest, RegistryError> {
        self.push_blobs(client, reference).await?;
        client
            .push_manifest(
                reference,
                &self.manifest_media_type,
                self.manifest_bytes.clone(),
            )
            .await
    }

    /// Pushes layers and config only.
    pub async fn push_blobs(
        &self,
        client: &RegistryClient,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        for layer in &self.layers {
            client
                .push_blob(
                    reference,
                    &layer.descriptor,
                    BlobSource::Bytes(layer.blob.clone()),
                )
                .await?;
        }
        client
            .push_blob(
                reference,
                &self.config_descriptor,
                BlobSource::Bytes(self.config_bytes.clone()),
            )
            .await?;
        Ok(())
    }
}

/// A multi-platform index over built images.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub images: Vec<BuiltImage>,
    pub index: ImageIndex,
    pub bytes: Bytes,
    pub digest: Digest,
    pub media_type: String,
}

impl BuiltIndex {
    /// An OCI index (or a Docker manifest list) over `images`.
    pub fn new(images: Vec<BuiltImage>, docker_media_types: bool) -> Self {
        let media_type = if docker_media_types {
            DOCKER_MANIFEST_LIST
        } else {
            OCI_INDEX
        };
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(media_type.to_string()),
            manifests: images.iter().map(BuiltImage::descriptor).collect(),
            annotations: None,
            extra: Default::default(),
        };
        let bytes = Bytes::from(
            serde_json::to_vec(&index).unwrap_or_else(|error| panic!("index JSON: {error}")),
        );
        BuiltIndex {
            digest: Digest::of_bytes(&bytes),
            images,
            index,
            bytes,
            media_type: media_type.to_string(),
        }
    }

    /// Pushes every image (by digest) then the index under `reference`'s tag.
    pub async fn push(
        &self,
        client: &RegistryClient,
        reference: &Reference,
    ) -> Result<Digest, RegistryError> {
        for image in &self.images {
            image.push_blobs(client, reference).await?;
            let untagged = Reference::from_parts(
                reference.registry(),
                reference.repository(),
                None,
                Some(&image.manifest_digest),
            )?;
            client
                .push_manifest(
                    &untagged,
                    &image.manifest_media_type,
                    image.manifest_bytes.clone(),
                )
                .await?;
        }
        client
            .push_manifest(reference, &self.media_type, self.bytes.clone())
            .await
    }
}

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX_PATH: &str = "/bin/busybox";

/// A one-layer busybox image from the host's static busybox: `/bin/busybox`, a symlink per
/// applet (`busybox --list-full`), `/etc/passwd` (root, nobody), `/etc/group`, `/tmp` (1777),
/// `/root`, and empty `/proc`, `/sys`, `/dev`. Panics if busybox-static is not installed.
pub fn busybox_image() -> BuiltImage {
    let binary = std::fs::read(BUSYBOX_PATH)
        .unwrap_or_else(|error| panic!("reading {BUSYBOX_PATH} (install busybox-static): {error}"));
    let listing = std::process::Command::new(BUSYBOX_PATH)
        .arg("--list-full")
        .output()
        .unwrap_or_else(|error| panic!("running busybox --list-full: {error}"));
    let mut applets: Vec<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .map(|line| line.trim().trim_start_matches('/').to_string())
        .filter(|line| !line.is_empty() && line != "bin/busybox")
        .collect();
    applets.sort();
    applets.dedup();

    let mut layer = LayerBuilder::new();
    for dir in [
        "bin", "dev", "etc", "proc", "root", "sbin", "sys", "usr", "usr/bin", "usr/sbin", "var",
    ] {
        layer.dir(dir, if dir == "root" { 0o700 } else { 0o755 });
    }
    layer.dir("tmp", 0o1777);
    layer.file("bin/busybox", &binary, 0o755);
    for applet in &applets {
        // Only applets in directories the layer made.
        if let Some((parent, _)) = applet.rsplit_once('/') {
            if matches!(parent, "bin" | "sbin" | "usr/bin" | "usr/sbin") {
                layer.symlink(applet, "/bin/busybox");
            }
        }
    }
    layer.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    );
    layer.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n", 0o644);
    ImageBuilder::new()
        .layer_tar(layer.finish())
        .config(|config| {
            config.env = Some(vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ]);
            config.cmd = Some(vec!["sh".into()]);
        })
        .build()
}

/// An image with `count` small layers; layer `i` adds `/layers/<i>` holding `i`.
pub fn many_layer_image(count: usize) -> BuiltImage {
    let mut builder = ImageBuilder::new();
    for index in 0..count {
        let mut layer = LayerBuilder::new();
        layer.dir("layers", 0o755);
        layer.file(
            &format!("layers/{index}"),
            index.to_string().as_bytes(),
            0o644,
        );
        builder = builder.layer_tar(layer.finish());
    }
    builder.build()
}

/// A two-layer image exercising special entries. Layer 1: `etc/hostname`, `data/a`,
/// `data/b` (hardlink to `data/a`), `data/link -> a` (symlink), `data/abs -> /etc/hostname`,
/// `opaque/old`, `gone/file`, `data/xattr` with `user.kiln=yes` and
/// `security.capability` bytes, `data/owned` (uid 1000, gid 1000, mode 0640).
/// Layer 2: whiteout of `gone/file`, opaque `opaque/` with `opaque/new`, `data/b2`
/// hardlinked to `data/c` in the same layer.
pub fn special_files_image() -> BuiltImage {
    let mut first = LayerBuilder::new();
    first
        .dir("etc", 0o755)
        .file("etc/hostname", b"kiln-test\n", 0o644)
        .dir("data", 0o755)
        .file("data/a", b"shared contents\n", 0o644)
        .hardlink("data/b", "data/a")
        .symlink("data/link", "a")
        .symlink("data/abs", "/etc/hostname")
        .file_with_xattrs(
            "data/xattr",
            b"with xattrs\n",
            0o644,
            &[
                ("user.kiln", b"yes"),
                // A valid VFS_CAP_REVISION_2 value (the kernel refuses
                // others): effective, permitted caps 1, 3 and 10; its
                // 0x0a byte is a newline inside a PAX record.
                (
                    "security.capability",
                    &[1, 0, 0, 2, 10, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
            ],
        )
        .file_owned("data/owned", b"owned\n", 0o640, 1000, 1000)
        .dir("opaque", 0o755)
        .file("opaque/old", b"old\n", 0o644)
        .dir("gone", 0o755)
        .file("gone/file", b"doomed\n", 0o644);
    let mut second = LayerBuilder::new();
    second
        .dir("gone", 0o755)
        .whiteout("gone/file")
        .dir("opaque", 0o755)
        .opaque("opaque")
        .file("opaque/new", b"new\n", 0o644)
        .dir("data", 0o755)
        .file("data/c", b"second layer\n", 0o644)
        .hardlink("data/b2", "data/c");
    ImageBuilder::new()
        .layer_tar(first.finish())
        .layer_tar(second.finish())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record(b"path=x\n"), b"9 path=x\n");
        for payload_length in [1, 7, 95, 96, 97, 995, 996, 10_000] {
            let record = pax_record(&vec![b'a'; payload_length]);
            let space = record.iter().position(|byte| *byte == b' ').unwrap();
            let declared: usize = std::str::from_utf8(&record[..space])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(declared, record.len(), "payload of {payload_length}");
        }
    }

    #[test]
    fn xattrs_read_back_through_the_tar_crate() {
        let mut layer = LayerBuilder::new();
        layer.file_with_xattrs("f", b"x", 0o644, &[("user.a", b"1")]);
        let tar = layer.finish();
        let mut archive = tar::Archive::new(&tar[..]);
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        let extensions: Vec<(String, Vec<u8>)> = entry
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|extension| {
                let extension = extension.unwrap();
                (
                    extension.key().unwrap().to_string(),
                    extension.value_bytes().to_vec(),
                )
            })
            .collect();
        assert_eq!(
            extensions,
            vec![("SCHILY.xattr.user.a".to_string(), b"1".to_vec())]
        );
        assert_eq!(entry.path().unwrap().to_str(), Some("f"));
    }
}
