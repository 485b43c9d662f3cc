//! `kiln save`: write images to a docker-archive (what `docker load` reads) or an OCI image
//! layout tar, from the store.

use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use kiln_exporter::{write_docker_archive, write_oci_archive, ArchiveImage};
use kiln_registry::Reference;
use kiln_snapshotter::Store;
use kiln_types::Platform;

use crate::store_args::StoreArgs;

/// The archive formats `kiln save` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaveFormat {
    /// docker-archive: `docker load` (20.10 and later), skopeo `docker-archive:`
    Docker,
    /// OCI image layout in a tar: skopeo `oci-archive:`, containerd
    Oci,
}

/// Arguments of `kiln save`.
#[derive(Debug, clap::Args)]
pub struct SaveArgs {
    /// Images to save: names or image ids
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,

    /// Write to this file instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Archive format
    #[arg(long, value_enum, default_value_t = SaveFormat::Docker)]
    pub format: SaveFormat,

    /// Platform to save from a multi-platform image (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// Finds an image by name (normalized as `docker` does) or id, and the names to save it
/// under: the normalized name when one was given, none for an id.
fn find_image(store: &Store, reference: &str) -> anyhow::Result<ArchiveImage> {
    if let Ok(parsed) = Reference::parse(reference) {
        let name = parsed.to_string();
        if let Some(record) = store.image(&name)? {
            return Ok(ArchiveImage {
                names: vec![name],
                descriptor: record.target,
            });
        }
    }
    let record = store
        .resolve_image(reference)
        .with_context(|| format!("finding image {reference}"))?;
    let names = if record.name == reference {
        vec![record.name.clone()]
    } else {
        Vec::new()
    };
    Ok(ArchiveImage {
        names,
        descriptor: record.target,
    })
}

/// The archive of `images` in `format`, written to `writer`.
fn write_archive<W: std::io::Write>(
    format: SaveFormat,
    store: &Store,
    images: &[ArchiveImage],
    platform: &Platform,
    writer: W,
) -> kiln_exporter::Result<W> {
    match format {
        SaveFormat::Docker => write_docker_archive(store, images, platform, writer),
        SaveFormat::Oci => write_oci_archive(store, images, platform, writer),
    }
}

pub fn run(args: SaveArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text).with_context(|| format!("platform {text}"))?,
        None => Platform::host(),
    };
    let mut images: Vec<ArchiveImage> = Vec::new();
    for reference in &args.images {
        let image = find_image(&store, reference)?;
        match images
            .iter_mut()
            .find(|known| known.descriptor.digest == image.descriptor.digest)
        {
            Some(known) => known.names.extend(image.names),
            None => images.push(image),
        }
    }
    match &args.output {
        // beside the destination and renamed (so a failed save leaves no truncated archive
        // under the name), or into it when it is a device, a fifo or a symlink
        Some(path) => super::build_output::write_file(path, |writer| {
            write_archive(args.format, &store, &images, &platform, writer)
                .with_context(|| format!("saving to {}", path.display()))
        })?,
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write an archive to a terminal: use -o FILE or redirect");
            }
            let stdout = BufWriter::with_capacity(1 << 20, stdout.lock());
            let mut writer = write_archive(args.format, &store, &images, &platform, stdout)
                .context("saving to standard output")?;
            writer.flush().context("writing standard output")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
