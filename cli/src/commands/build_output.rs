//! `kiln build -o SPEC`: where a build's image goes besides the store: pushed
//! (`type=image,push=true`, `type=registry`), a docker-archive (`type=docker,dest=FILE`) or
//! an OCI image layout (`type=oci,dest=FILE.tar|DIR`).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use kiln_exporter::{write_docker_archive, write_oci_archive, write_oci_directory, ArchiveImage};
use kiln_snapshotter::archive::{apply_layer, ApplyOptions, WhiteoutMode};
use kiln_snapshotter::Store;
use kiln_types::{media_type, Descriptor, Platform};

/// One `-o` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildOutput {
    /// The store (always written); pushed when `push` is set.
    Image { push: bool },
    /// A docker-archive tar.
    Docker { dest: PathBuf },
    /// An OCI image layout: a tar, or a directory when `dest` has no `.tar` ending or exists
    /// as a directory.
    Oci { dest: PathBuf },
    /// The final root filesystem as files (layers applied in order, whiteouts applied,
    /// owners, modes and links kept).
    Local { dest: PathBuf },
    /// The same root filesystem as one tar file.
    Tar { dest: PathBuf },
}

/// Parses `-o` specs (`type=...,key=value`; a bare path is `type=local` in BuildKit, which
/// kiln does not write yet).
pub fn parse_outputs(specs: &[String]) -> anyhow::Result<Vec<BuildOutput>> {
    let mut outputs = Vec::new();
    for spec in specs {
        let mut kind = None;
        let mut dest = None;
        let mut push = false;
        for field in spec.split(',') {
            let (key, value) = field.split_once('=').unwrap_or((field, ""));
            match key.trim() {
                "type" => kind = Some(value.trim().to_string()),
                "dest" => dest = Some(PathBuf::from(value.trim())),
                "push" => push = matches!(value.trim(), "true" | "1" | ""),
                "name" => {}
                other => bail!("-o {spec}: option {other:?} is not supported"),
            }
        }
        let kind = kind.with_context(|| format!("-o {spec}: no type= given"))?;
        let needs_dest = |dest: Option<PathBuf>| {
            dest.with_context(|| format!("-o {spec}: type={kind} needs dest=PATH"))
        };
        outputs.push(match kind.as_str() {
            "image" => BuildOutput::Image { push },
            "registry" => BuildOutput::Image { push: true },
            "docker" => BuildOutput::Docker {
                dest: needs_dest(dest)?,
            },
            "oci" => BuildOutput::Oci {
                dest: needs_dest(dest)?,
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

/// Writes the archive outputs of a build whose image is `descriptor`, named `tags`.
pub fn write_archives(
    store: &Store,
    outputs: &[BuildOutput],
    tags: &[String],
    descriptor: &Descriptor,
) -> anyhow::Result<()> {
    let images = vec![ArchiveImage {
        names: tags.to_vec(),
        descriptor: descriptor.clone(),
    }];
    let platform = Platform::host();
    for output in outputs {
        match output {
            BuildOutput::Image { .. } => {}
            BuildOutput::Docker { dest } => write_file(dest, |writer| {
                Ok(write_docker_archive(store, &images, &platform, writer)?)
            })?,
            BuildOutput::Oci { dest } if is_directory_dest(dest) => {
                write_oci_directory(store, &images, &platform, dest)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
            BuildOutput::Oci { dest } => write_file(dest, |writer| {
                Ok(write_oci_archive(store, &images, &platform, writer)?)
            })?,
            BuildOutput::Local { dest } => write_rootfs(store, descriptor, &platform, dest)
                .with_context(|| format!("writing the root filesystem to {}", dest.display()))?,
            BuildOutput::Tar { dest } => {
                let parent = dest
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let staging = tempfile::tempdir_in(parent)
                    .with_context(|| format!("creating a directory in {}", parent.display()))?;
                write_rootfs(store, descriptor, &platform, staging.path())?;
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

/// Writes beside `dest` and renames, so a failure leaves no truncated file under the name.
fn write_file(
    dest: &Path,
    write: impl FnOnce(BufWriter<File>) -> anyhow::Result<BufWriter<File>>,
) -> anyhow::Result<()> {
    let name = dest
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
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
