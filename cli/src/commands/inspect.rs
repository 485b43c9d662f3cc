//! `kiln inspect`: everything known about local images, as a JSON array.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::store_args::StoreArgs;

/// Arguments of `kiln inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Images: names or image ids (prefixes)
    #[arg(required = true)]
    pub references: Vec<String>,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let mut documents = Vec::with_capacity(args.references.len());
    for reference in &args.references {
        documents.push(
            kiln_image::inspect(&store, reference)
                .with_context(|| format!("inspecting {reference}"))?,
        );
    }
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &documents)?;
    writeln!(stdout)?;
    Ok(ExitCode::SUCCESS)
}
