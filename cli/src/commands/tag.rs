//! `kiln tag`: give a local image another name.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::store_args::StoreArgs;

/// Arguments of `kiln tag`.
#[derive(Debug, clap::Args)]
pub struct TagArgs {
    /// The image: a name or an image id (prefix)
    pub source: String,
    /// The new name: NAME[:TAG]
    pub target: String,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: TagArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    kiln_image::tag(&store, &args.source, &args.target)
        .with_context(|| format!("tagging {} as {}", args.source, args.target))?;
    Ok(ExitCode::SUCCESS)
}
