//! `kiln logout`: forget a registry's credentials in kiln's credentials file.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::commands::login::registry_name;
use crate::store_args::RegistryArgs;

/// Arguments of `kiln logout`.
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// Registry (host[:port]) [default: docker.io]
    pub registry: Option<String>,

    #[command(flatten)]
    pub registry_options: RegistryArgs,
}

pub fn run(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_name(args.registry.as_deref());
    let client = args.registry_options.client()?;
    let removed = client
        .logout(&registry)
        .with_context(|| format!("logging out of {registry}"))?;
    let mut stdout = std::io::stdout().lock();
    if removed {
        writeln!(stdout, "Removing login credentials for {registry}")?;
    } else {
        writeln!(stdout, "Not logged in to {registry}")?;
    }
    Ok(ExitCode::SUCCESS)
}
