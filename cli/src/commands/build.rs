//! `kiln build`: build an image from a Dockerfile (for now: `--print-dag` only).

use std::process::ExitCode;

/// Arguments of `kiln build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Build context directory
    pub context: std::path::PathBuf,
}

pub fn run(_args: BuildArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("kiln build is not implemented yet")
}
