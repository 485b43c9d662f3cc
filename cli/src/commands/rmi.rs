//! `kiln rmi`: untag images, then remove what no image, cache record or running operation
//! uses any more.

use std::io::Write as _;
use std::process::ExitCode;

use crate::store_args::StoreArgs;

/// Arguments of `kiln rmi`.
#[derive(Debug, clap::Args)]
pub struct RmiArgs {
    /// Images: names or image ids (prefixes)
    #[arg(required = true)]
    pub references: Vec<String>,

    /// Remove every name of an image given by id, even when it has several
    #[arg(short, long)]
    pub force: bool,

    /// Only untag: leave the unused layers for the next `kiln prune`
    #[arg(long = "no-prune")]
    pub no_prune: bool,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: RmiArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let mut stdout = std::io::stdout().lock();
    let mut failed = false;
    let mut deleted_any = false;
    for reference in &args.references {
        match kiln_image::remove_image(&store, reference, args.force) {
            Ok(removed) => {
                for name in &removed.untagged {
                    writeln!(stdout, "Untagged: {name}")?;
                }
                if let Some(id) = removed.deleted {
                    writeln!(stdout, "Deleted: {id}")?;
                    deleted_any = true;
                }
            }
            Err(error) => {
                failed = true;
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("error: {:#}", anyhow::Error::new(error));
                }
            }
        }
    }
    if deleted_any && !args.no_prune {
        // Layers only: cache mounts are build cache, left to `kiln prune`.
        kiln_image::prune(&store, false)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
