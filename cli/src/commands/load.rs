//! `kiln load`: read a docker-archive or an OCI image layout (tar, compressed tar or
//! directory) into the store, unpack its layers and tag its images.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use kiln_exporter::{load_archive, load_archive_stream, tag, LoadOptions, LoadedImage};
use kiln_registry::Reference;
use kiln_types::Platform;

use crate::store_args::StoreArgs;

/// Arguments of `kiln load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Read from this tar file or layout directory instead of standard input
    #[arg(short, long, value_name = "FILE")]
    pub input: Option<PathBuf>,

    /// Platform to unpack from a multi-platform image (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Print nothing
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

/// The store names of a loaded image: each archive name normalized as `docker` does. A bare
/// tag (an OCI `ref.name` such as `1.0`) names no repository and is left out.
fn store_names(image: &LoadedImage) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    for name in &image.names {
        if !name.contains(':') && !name.contains('/') {
            continue;
        }
        let parsed = Reference::parse(name)
            .with_context(|| format!("image name {name:?} in the archive"))?;
        names.push(parsed.to_string());
    }
    Ok(names)
}

pub fn run(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let lease = store.lease("kiln load")?;
    let options = LoadOptions {
        platform: match &args.platform {
            Some(text) => Platform::parse(text).with_context(|| format!("platform {text}"))?,
            None => Platform::host(),
        },
        ..LoadOptions::default()
    };
    let report = match &args.input {
        Some(path) if path.as_os_str() != "-" => load_archive(&store, &lease, path, &options)
            .with_context(|| format!("loading {}", path.display()))?,
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                bail!("no archive given: use -i FILE or pipe one into standard input");
            }
            load_archive_stream(&store, &lease, stdin.lock(), &options)
                .context("loading from standard input")?
        }
    };
    let mut lines = Vec::new();
    for image in &report.images {
        let names = store_names(image)?;
        tag(&store, &names, &image.descriptor)
            .with_context(|| format!("tagging {}", image.descriptor.digest))?;
        if names.is_empty() {
            lines.push(format!("Loaded image ID: {}", image.descriptor.digest));
        }
        for name in &image.names {
            if name.contains(':') || name.contains('/') {
                lines.push(format!("Loaded image: {name}"));
            }
        }
    }
    lease.release()?;
    if !args.quiet {
        #[allow(clippy::print_stdout)]
        for line in lines {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
