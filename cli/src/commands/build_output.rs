//! `kiln build -o SPEC`: where a build's image goes besides the store: pushed
//! (`type=image,push=true`, `type=registry`), a docker-archive (`type=docker,dest=FILE`) or
//! an OCI image layout (`type=oci,dest=FILE.tar|DIR`).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use kiln_exporter::{
    write_docker_archive, write_oci_archive, write_oci_directory, ArchiveImage, BaseImage,
    BuiltImage, Compression, LayerExporter, LayerOptions,
};
use kiln_frontend::convert::{ConvertResult, StageBase};
use kiln_snapshotter::archive::{apply_layer, ApplyOptions, WhiteoutMode};
use kiln_snapshotter::{Lease, SnapshotId, Store};
use kiln_types::{media_type, Descriptor, ImageSpec, Platform};

/// One `-o` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutput {
    /// The store (always written); pushed when `push` is set. `names` (`name=`) are tagged
    /// besides `-t`.
    Image {
        push: bool,
        names: Vec<String>,
        export: ExportSettings,
    },
    /// A docker-archive tar; its image named `names` (`name=`), else the `-t` tags.
    Docker {
        dest: PathBuf,
        names: Vec<String>,
        export: ExportSettings,
    },
    /// An OCI image layout: a tar, or a directory when `dest` has no `.tar` ending or exists
    /// as a directory; named as `Docker`.
    Oci {
        dest: PathBuf,
        names: Vec<String>,
        export: ExportSettings,
    },
    /// The final root filesystem as files (layers applied in order, whiteouts applied,
    /// owners, modes and links kept).
    Local { dest: PathBuf },
    /// The same root filesystem as one tar file.
    Tar { dest: PathBuf },
}

impl BuildOutput {
    /// The image exporter options of an image output, and whether its media types are OCI's
    /// unless told otherwise (`type=oci`, as BuildKit).
    fn export(&self) -> Option<(&ExportSettings, bool)> {
        match self {
            BuildOutput::Image { export, .. } | BuildOutput::Docker { export, .. } => {
                Some((export, false))
            }
            BuildOutput::Oci { export, .. } => Some((export, true)),
            BuildOutput::Local { .. } | BuildOutput::Tar { .. } => None,
        }
    }
}

/// BuildKit's image exporter options (`type=image|registry|docker|oci`): how layers are
/// compressed and which media types the manifest uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportSettings {
    /// `compression=gzip|zstd|uncompressed` (gzip by default).
    pub compression: Compression,
    /// Whether `compression=` was given (the store's own default differs: see
    /// `build_run`).
    pub compression_given: bool,
    /// `compression-level=N`: gzip 0-9, zstd 0-22 (0 is zstd's default, 3).
    pub level: Option<i32>,
    /// `force-compression=true`: layers stored in another compression (a pulled base
    /// image's) are recompressed too; otherwise they are kept as they are.
    pub force_compression: bool,
    /// `oci-mediatypes=true|false`; `None` is the output's default (OCI for `type=oci`,
    /// Docker's otherwise). zstd always gets OCI types.
    pub oci_media_types: Option<bool>,
    /// `rewrite-timestamp=true`: file times in new layers are clamped to SOURCE_DATE_EPOCH.
    pub rewrite_timestamp: bool,
    /// `source-date-epoch=N`: this output's epoch instead of the build's SOURCE_DATE_EPOCH.
    pub source_date_epoch: Option<i64>,
}

impl Default for ExportSettings {
    fn default() -> Self {
        ExportSettings {
            compression: Compression::Gzip,
            compression_given: false,
            level: None,
            force_compression: false,
            oci_media_types: None,
            rewrite_timestamp: false,
            source_date_epoch: None,
        }
    }
}

impl ExportSettings {
    /// The exporter's layer options for an output whose media types default to OCI's when
    /// `oci_default`, in a build whose SOURCE_DATE_EPOCH is `build_epoch`. Without
    /// `rewrite-timestamp` the epoch sets the image's times only, as in BuildKit.
    pub fn layer_options(&self, oci_default: bool, build_epoch: Option<i64>) -> LayerOptions {
        let epoch = self.source_date_epoch.or(build_epoch);
        LayerOptions {
            compression: self.compression,
            level: self.level,
            source_date_epoch: epoch.filter(|_| self.rewrite_timestamp),
            config_epoch: epoch,
            oci_media_types: self.compression == Compression::Zstd
                || self.oci_media_types.unwrap_or(oci_default),
        }
    }

    /// What BuildKit warns about for these options.
    fn warnings(&self, build_epoch: Option<i64>) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.compression == Compression::Zstd && self.oci_media_types == Some(false) {
            warnings.push("forcibly turning on oci-mediatypes for zstd".to_string());
        }
        if self.rewrite_timestamp && self.source_date_epoch.or(build_epoch).is_none() {
            warnings.push(
                "rewrite-timestamp is set but SOURCE_DATE_EPOCH is not: file times are kept"
                    .to_string(),
            );
        }
        warnings
    }
}

/// The image exporter keys, for the error on `type=local|tar`.
const EXPORT_KEYS: [&str; 6] = [
    "compression",
    "compression-level",
    "force-compression",
    "oci-mediatypes",
    "rewrite-timestamp",
    "source-date-epoch",
];

/// A boolean option as BuildKit reads it (Go's `strconv.ParseBool`; an empty value is true).
fn parse_bool(spec: &str, key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        other => bail!("-o {spec}: invalid {key} value {other:?} (expected true or false)"),
    }
}

/// Parses `-o` specs (`type=...,key=value`; a bare path is `type=local` in BuildKit, which
/// kiln does not write yet).
pub fn parse_outputs(specs: &[String]) -> anyhow::Result<Vec<BuildOutput>> {
    let mut outputs = Vec::new();
    for spec in specs {
        let mut kind = None;
        let mut dest = None;
        let mut push = false;
        let mut names = Vec::new();
        let mut export = ExportSettings::default();
        let mut level_text = None;
        let mut export_keys = Vec::new();
        for field in spec.split(',') {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            let (key, value) = (key.trim(), value.trim());
            if EXPORT_KEYS.contains(&key) {
                export_keys.push(key);
            }
            match key {
                "type" => kind = Some(value.to_string()),
                "dest" => dest = Some(PathBuf::from(value)),
                "push" => push = parse_bool(spec, key, value)?,
                "name" if !value.is_empty() => names.push(value.to_string()),
                "name" => {}
                "compression" => {
                    export.compression_given = true;
                    export.compression = match value {
                        "gzip" => Compression::Gzip,
                        "zstd" => Compression::Zstd,
                        "uncompressed" => Compression::Uncompressed,
                        "estargz" | "nydus" => bail!(
                            "-o {spec}: compression {value:?} is not supported by kiln (gzip, zstd or uncompressed)"
                        ),
                        other => bail!(
                            "-o {spec}: invalid compression value {other:?} (expected gzip, zstd or uncompressed)"
                        ),
                    }
                }
                "compression-level" => level_text = Some(value),
                "force-compression" => {
                    export.force_compression = parse_bool(spec, key, value)?;
                }
                "oci-mediatypes" => export.oci_media_types = Some(parse_bool(spec, key, value)?),
                "rewrite-timestamp" => {
                    export.rewrite_timestamp = parse_bool(spec, key, value)?;
                }
                "source-date-epoch" => {
                    export.source_date_epoch = Some(value.parse::<i64>().map_err(|_| {
                        anyhow::anyhow!(
                            "-o {spec}: invalid source-date-epoch value {value:?} (expected seconds since 1970)"
                        )
                    })?)
                }
                other => bail!("-o {spec}: option {other:?} is not supported"),
            }
        }
        if let Some(text) = level_text {
            let level = text.parse::<i32>().map_err(|_| {
                anyhow::anyhow!(
                    "-o {spec}: invalid compression-level value {text:?} (expected an integer)"
                )
            })?;
            let range = match export.compression {
                Compression::Gzip => Some(0..=9),
                Compression::Zstd => Some(0..=22),
                // BuildKit ignores a level for uncompressed layers.
                Compression::Uncompressed => None,
            };
            if let Some(range) = range {
                if !range.contains(&level) {
                    bail!(
                        "-o {spec}: compression-level {level} is out of range for {} ({}-{})",
                        compression_name(export.compression),
                        range.start(),
                        range.end()
                    );
                }
                export.level = Some(level);
            }
        }
        let kind = kind.with_context(|| format!("-o {spec}: no type= given"))?;
        let needs_dest = |dest: Option<PathBuf>| {
            dest.with_context(|| format!("-o {spec}: type={kind} needs dest=PATH"))
        };
        if matches!(kind.as_str(), "local" | "tar") {
            if let Some(key) = export_keys.first() {
                bail!("-o {spec}: option {key:?} is not supported by type={kind} (only by image, registry, docker and oci)");
            }
        }
        outputs.push(match kind.as_str() {
            "image" => BuildOutput::Image {
                push,
                names,
                export,
            },
            "registry" => BuildOutput::Image {
                push: true,
                names,
                export,
            },
            "docker" => BuildOutput::Docker {
                dest: needs_dest(dest)?,
                names,
                export,
            },
            "oci" => BuildOutput::Oci {
                dest: needs_dest(dest)?,
                names,
                export,
            },
            "local" => BuildOutput::Local {
                dest: needs_dest(dest)?,
            },
            "tar" => BuildOutput::Tar {
                dest: needs_dest(dest)?,
            },
            other => {
                bail!("-o {spec}: type={other} is not supported (image, registry, docker, oci, local, tar)")
            }
        });
    }
    Ok(outputs)
}

fn compression_name(compression: Compression) -> &'static str {
    match compression {
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
        Compression::Uncompressed => "uncompressed",
    }
}

/// The exporter options of the image kiln stores (and pushes): those of the `type=image` /
/// `type=registry` output, the defaults without one. Two such outputs must agree.
pub fn store_export(outputs: &[BuildOutput]) -> anyhow::Result<ExportSettings> {
    let mut found: Option<ExportSettings> = None;
    for output in outputs {
        if let BuildOutput::Image { export, .. } = output {
            match found {
                Some(earlier) if earlier != *export => bail!(
                    "-o type=image and type=registry outputs must give the same compression options (kiln stores one image)"
                ),
                _ => found = Some(*export),
            }
        }
    }
    Ok(found.unwrap_or_default())
}

/// The layer options of the stored image, from the `-o` specs and the build's epoch (the
/// build cache exports its layers the same way, so each snapshot is compressed once).
pub fn store_layer_options(
    specs: &[String],
    build_epoch: Option<i64>,
) -> anyhow::Result<LayerOptions> {
    let outputs = parse_outputs(specs)?;
    Ok(store_export(&outputs)?.layer_options(false, build_epoch))
}

/// The names `-o type=image,name=...` asks to tag.
pub fn output_names(outputs: &[BuildOutput]) -> Vec<String> {
    outputs
        .iter()
        .flat_map(|output| match output {
            BuildOutput::Image { names, .. } => names.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// BuildKit's warnings for the outputs' options, one line each.
pub fn warnings(outputs: &[BuildOutput], build_epoch: Option<i64>) -> Vec<String> {
    let mut lines = Vec::new();
    for output in outputs {
        if let Some((export, _)) = output.export() {
            for warning in export.warnings(build_epoch) {
                if !lines.contains(&warning) {
                    lines.push(warning);
                }
            }
        }
    }
    lines
}

/// The layers a build's image is made of: the base image's (blobs reused) and one snapshot
/// per step, with the config; built into an image once per set of exporter options.
pub struct ImagePlan {
    /// Every snapshot of the target, bottom first.
    chain: Vec<SnapshotId>,
    /// How many of `chain` are the base image's layers.
    base_count: usize,
    base: Option<BaseImage>,
    /// The base layers' snapshots, for recording recompressed blobs.
    base_snapshots: Vec<Option<SnapshotId>>,
    config: ImageSpec,
    build_epoch: Option<i64>,
}

impl ImagePlan {
    /// The target stage as an image plan: the base image's layers as they are, then one
    /// layer per step's snapshot.
    pub fn new(
        store: &Store,
        converted: &ConvertResult,
        top: Option<&SnapshotId>,
    ) -> anyhow::Result<Self> {
        let stage = &converted.stages[converted.target_stage];
        let mut chain = match top {
            Some(top) => store.snapshotter().chain(top)?,
            None => Vec::new(),
        };
        chain.reverse();
        // Follow FROM <stage> links down to the image (or scratch) the target starts from.
        let mut base = &stage.base;
        let mut seen = 0;
        while let StageBase::Stage(index) = base {
            base = &converted.stages[*index].base;
            seen += 1;
            if seen > converted.stages.len() {
                break;
            }
        }
        let mut base_image = None;
        let mut base_snapshots = Vec::new();
        let mut base_count = 0;
        if let StageBase::Image { reference, .. } = base {
            let name = kiln_image::normalize_name(reference)?;
            if let Some(record) = store.image(&name)? {
                let resolved = store.resolve_layers(&record.target, &stage.platform)?;
                let matches = resolved.layers.len() <= chain.len()
                    && resolved
                        .layers
                        .iter()
                        .zip(&chain)
                        .all(|(layer, snapshot)| layer.snapshot.as_ref() == Some(snapshot));
                if matches {
                    base_count = resolved.layers.len();
                    base_snapshots = resolved
                        .layers
                        .iter()
                        .map(|layer| layer.snapshot.clone())
                        .collect();
                    base_image = Some(BaseImage {
                        layers: resolved
                            .layers
                            .iter()
                            .map(|layer| layer.descriptor.clone())
                            .collect(),
                        diff_ids: resolved
                            .layers
                            .iter()
                            .map(|layer| layer.diff_id.clone())
                            .collect(),
                    });
                }
            }
        }
        let mut config = stage.image.clone();
        if base_image.is_none() {
            // Every layer is exported anew: the history must not claim base layers.
            config
                .history
                .retain(|entry| entry.comment.as_deref() == Some("buildkit") || entry.empty_layer);
        }
        Ok(ImagePlan {
            chain,
            base_count,
            base: base_image,
            base_snapshots,
            config,
            build_epoch: converted.source_date_epoch,
        })
    }

    /// Builds the image with `options`; with `force_compression` the base layers stored in
    /// another compression are recompressed first (their diffIDs unchanged).
    pub fn build(
        &self,
        store: &Store,
        lease: &Lease,
        options: &LayerOptions,
        force_compression: bool,
    ) -> anyhow::Result<BuiltImage> {
        let base = match (&self.base, force_compression) {
            (Some(base), true) => {
                let exporter = LayerExporter::new(store);
                let mut layers = Vec::with_capacity(base.layers.len());
                for (index, (layer, diff_id)) in base.layers.iter().zip(&base.diff_ids).enumerate()
                {
                    let snapshot = self.base_snapshots.get(index).and_then(Option::as_ref);
                    layers.push(
                        exporter
                            .convert_layer(lease, layer, diff_id, snapshot, options)
                            .with_context(|| {
                                format!("recompressing base layer {}", layer.digest)
                            })?,
                    );
                }
                Some(BaseImage {
                    layers,
                    diff_ids: base.diff_ids.clone(),
                })
            }
            (base, _) => base.clone(),
        };
        Ok(kiln_exporter::build_image(
            store,
            lease,
            &self.chain[self.base_count..],
            base.as_ref(),
            self.config.clone(),
            options,
        )?)
    }

    /// Builds the image the store keeps, and makes each new layer's snapshot findable under
    /// the image's chain id, so the image can be run (and used as a base) straight from the
    /// store.
    pub fn build_stored(
        &self,
        store: &Store,
        lease: &Lease,
        export: &ExportSettings,
    ) -> anyhow::Result<BuiltImage> {
        let options = export.layer_options(false, self.build_epoch);
        let built = self.build(store, lease, &options, export.force_compression)?;
        let chain_ids = kiln_snapshotter::chain_ids(&built.config.rootfs.diff_ids);
        let non_empty = self.chain[self.base_count..]
            .iter()
            .zip(&built.new_layers)
            .filter(|(_, layer)| !layer.empty)
            .map(|(snapshot, _)| snapshot);
        for (snapshot, chain_id) in non_empty.zip(chain_ids.iter().skip(self.base_count)) {
            store.snapshotter().add_key(snapshot, chain_id.as_str())?;
        }
        Ok(built)
    }
}

/// Writes the archive outputs of a build whose stored image is `built` (made with
/// `stored_export`), named `tags`. An output with other exporter options gets its own
/// manifest, built from `plan` (new layers compressed once per variant).
pub fn write_archives(
    store: &Store,
    lease: &Lease,
    plan: &ImagePlan,
    outputs: &[BuildOutput],
    tags: &[String],
    built: &BuiltImage,
    stored_export: &ExportSettings,
) -> anyhow::Result<()> {
    let stored_options = stored_export.layer_options(false, plan.build_epoch);
    let stored_key = (stored_options, stored_export.force_compression);
    let platform = Platform::host();
    for output in outputs {
        let descriptor = match output.export() {
            Some((export, oci_default)) => {
                let key = (
                    export.layer_options(oci_default, plan.build_epoch),
                    export.force_compression,
                );
                if key == stored_key {
                    built.manifest_descriptor.clone()
                } else {
                    plan.build(store, lease, &key.0, key.1)?.manifest_descriptor
                }
            }
            None => built.manifest_descriptor.clone(),
        };
        let names = match output {
            BuildOutput::Docker { names, .. } | BuildOutput::Oci { names, .. }
                if !names.is_empty() =>
            {
                names
                    .iter()
                    .map(|name| {
                        kiln_image::normalize_name(name)
                            .with_context(|| format!("invalid name {name:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?
            }
            _ => tags.to_vec(),
        };
        let images = vec![ArchiveImage {
            names,
            descriptor: descriptor.clone(),
        }];
        match output {
            BuildOutput::Image { .. } => {}
            BuildOutput::Docker { dest, .. } => write_file(dest, |writer| {
                Ok(write_docker_archive(store, &images, &platform, writer)?)
            })?,
            BuildOutput::Oci { dest, .. } if is_directory_dest(dest) => {
                write_oci_directory(store, &images, &platform, dest)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            BuildOutput::Oci { dest, .. } => write_file(dest, |writer| {
                Ok(write_oci_archive(store, &images, &platform, writer)?)
            })?,
            BuildOutput::Local { dest } => write_rootfs(store, &descriptor, &platform, dest)
                .with_context(|| format!("writing the root filesystem to {}", dest.display()))?,
            BuildOutput::Tar { dest } => {
                let parent = dest
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let staging = tempfile::tempdir_in(parent)
                    .with_context(|| format!("creating a directory in {}", parent.display()))?;
                write_rootfs(store, &descriptor, &platform, staging.path())?;
                write_file(dest, |writer| {
                    let mut builder = tar::Builder::new(writer);
                    builder.mode(tar::HeaderMode::Complete);
                    builder.follow_symlinks(false);
                    builder.append_dir_all(".", staging.path())?;
                    Ok(builder.into_inner()?)
                })?;
            }
        }
    }
    Ok(())
}

fn is_directory_dest(dest: &Path) -> bool {
    dest.is_dir() || dest.extension().is_none_or(|extension| extension != "tar")
}

/// Writes beside `dest` and renames, so a failure leaves no truncated file under the name;
/// writes into `dest` when it is a device, a fifo or a symlink ([`must_write_in_place`]).
pub(crate) fn write_file(
    dest: &Path,
    write: impl FnOnce(BufWriter<File>) -> anyhow::Result<BufWriter<File>>,
) -> anyhow::Result<()> {
    let name = dest
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    if must_write_in_place(dest) {
        let file = open_in_place(dest)?;
        let mut writer = write(BufWriter::with_capacity(1 << 20, file))
            .with_context(|| format!("writing {}", dest.display()))?;
        return writer
            .flush()
            .with_context(|| format!("writing {}", dest.display()));
    }
    let temporary = dest.with_file_name(format!(".{name}.kiln-tmp"));
    let result = (|| -> anyhow::Result<()> {
        let file = File::create(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        let mut writer = write(BufWriter::with_capacity(1 << 20, file))
            .with_context(|| format!("writing {}", dest.display()))?;
        writer
            .flush()
            .with_context(|| format!("writing {}", dest.display()))?;
        let file = writer
            .into_inner()
            .map_err(|error| error.into_error())
            .with_context(|| format!("writing {}", dest.display()))?;
        file.sync_all()
            .with_context(|| format!("writing {}", dest.display()))?;
        std::fs::rename(&temporary, dest).with_context(|| format!("renaming to {}", dest.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Applies the image's layers in order into `dest` (created if missing), whiteouts applied.
fn write_rootfs(
    store: &Store,
    descriptor: &Descriptor,
    platform: &Platform,
    dest: &Path,
) -> anyhow::Result<()> {
    let resolved = store.resolve_layers(descriptor, platform)?;
    std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    for (layer, diff_id) in resolved
        .manifest
        .layers
        .iter()
        .zip(&resolved.config.rootfs.diff_ids)
    {
        let compression = media_type::layer_compression(&layer.media_type).with_context(|| {
            format!(
                "layer {} has media type {:?}, not a layer",
                layer.digest, layer.media_type
            )
        })?;
        let file = store.content().open(&layer.digest)?;
        let mut options = ApplyOptions::new(WhiteoutMode::Apply);
        options.expected_diff_id = Some(diff_id.clone());
        options.preserve_owners = true;
        apply_layer(file, compression, dest, &options)
            .with_context(|| format!("applying layer {}", layer.digest))?;
    }
    Ok(())
}

/// Whether an output file must be written where it is instead of through a temp file renamed
/// over it: it exists and is not a plain file (`/dev/null`, a fifo, a symlink). Renaming would
/// replace the device or the link itself (`-o /dev/null` once replaced the host's /dev/null
/// with a regular file); `docker save -o` writes into them.
fn must_write_in_place(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|metadata| !metadata.file_type().is_file())
}

/// Opens an existing output for writing in place: truncated if it leads to a plain file,
/// never created, never truncated otherwise (a device, a fifo).
fn open_in_place(path: &Path) -> anyhow::Result<File> {
    let plain_file = std::fs::metadata(path).is_ok_and(|metadata| metadata.is_file());
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(plain_file)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}
