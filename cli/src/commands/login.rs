//! `kiln login`: check credentials against a registry and keep them in kiln's credentials
//! file (`$KILN_CREDENTIALS_FILE`, else `~/.config/kiln/credentials.json`).

use std::io::{BufRead as _, Write as _};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

use crate::store_args::{runtime, RegistryArgs};

/// Arguments of `kiln login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry (host[:port]) [default: docker.io]
    pub registry: Option<String>,

    /// User name
    #[arg(short, long)]
    pub username: Option<String>,

    /// Password (prefer --password-stdin: a password on the command line is visible to
    /// other users)
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,

    /// Read the password from standard input
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,

    #[command(flatten)]
    pub registry_options: RegistryArgs,
}

pub fn run(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let registry = registry_name(args.registry.as_deref());
    let Some(username) = args.username.clone() else {
        bail!("no user name given: use -u USER");
    };
    let password = match (&args.password, args.password_stdin) {
        (Some(password), _) => password.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => bail!("no password given: use --password-stdin or -p PASSWORD"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let client = args.registry_options.client()?;
    runtime()?
        .block_on(client.login(&registry, &username, &password))
        .with_context(|| format!("logging in to {registry}"))?;
    writeln!(std::io::stdout(), "Login Succeeded")?;
    Ok(ExitCode::SUCCESS)
}

/// The registry name credentials are kept under: Docker Hub's aliases are `docker.io`; a
/// scheme or path around a host is dropped.
pub fn registry_name(text: Option<&str>) -> String {
    let Some(text) = text else {
        return "docker.io".to_string();
    };
    let host = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .unwrap_or(text);
    let host = host.split('/').next().unwrap_or(host);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" | "" => "docker.io".to_string(),
        other => other.to_string(),
    }
}
