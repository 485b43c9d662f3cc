//! `kiln prune`: remove every blob, snapshot and cache mount that no image, cache record or
//! running kiln process uses.

use std::io::Write as _;
use std::process::ExitCode;

use crate::commands::images::human_size;
use crate::store_args::StoreArgs;

/// Arguments of `kiln prune`.
#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Keep unused RUN --mount=type=cache directories
    #[arg(long = "keep-cache-mounts")]
    pub keep_cache_mounts: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let report = kiln_image::prune(&store, !args.keep_cache_mounts)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "Deleted {} blobs, {} snapshots, {} cache mounts, {} partial downloads",
        report.blobs_removed,
        report.snapshots_removed,
        report.cache_mounts_removed,
        report.ingest_files_removed
    )?;
    writeln!(
        stdout,
        "Total reclaimed space: {}",
        human_size(report.bytes_freed)
    )?;
    Ok(ExitCode::SUCCESS)
}
