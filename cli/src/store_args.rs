//! Options shared by the commands that use the store or a registry: `--root` (or
//! `KILN_ROOT`) and `--insecure-registry`, and opening what they name.

use std::path::PathBuf;

use anyhow::Context as _;
use kiln_registry::{ClientOptions, RegistryClient};
use kiln_snapshotter::{Store, DEFAULT_ROOT};

/// `--root DIR`: where kiln keeps images, layers and cache. The top-level command and each
/// subcommand flatten it; being global, it is taken before or after the subcommand
/// (`kiln --root DIR images`, `kiln images --root DIR`), the subcommand's own winning.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StoreArgs {
    /// kiln's root directory (images, layers, build cache) [default: /var/lib/kiln]
    #[arg(long, env = "KILN_ROOT", value_name = "DIR", global = true)]
    pub root: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens (creating if needed) the store these options name.
    pub fn open(&self) -> anyhow::Result<Store> {
        open_store(self.root.clone())
    }
}

/// Opens the store at `root` (default [`DEFAULT_ROOT`]), recovering from crashed processes.
pub fn open_store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    let root = root.unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))
}

/// `--insecure-registry HOST`: registries reached over plain HTTP.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// Reach this registry (host[:port]) over plain HTTP; loopback registries always are
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
}

impl RegistryArgs {
    /// A registry client with credentials from `kiln login` and Docker's config.
    pub fn client(&self) -> anyhow::Result<RegistryClient> {
        registry_client(&self.insecure_registries)
    }
}

/// A registry client with the default options, plus `insecure` registries over HTTP.
pub fn registry_client(insecure: &[String]) -> anyhow::Result<RegistryClient> {
    RegistryClient::with_options(ClientOptions {
        insecure_registries: insecure.to_vec(),
        ..ClientOptions::default()
    })
    .context("setting up the registry client")
}

/// A multi-threaded tokio runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}
