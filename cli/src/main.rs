//! The `kiln` binary: parses the command line and dispatches to one subcommand module each.

mod build_cache;
mod commands;
mod explain;
mod progress;
mod provider;
mod store_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's malloc: the frontend's conversion makes ~200k small
/// allocations for a 5,000-instruction Dockerfile, and took 20 ms with glibc against 15.5 ms
/// (`cargo bench -p kiln-frontend`, which uses the same allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kiln: a Dockerfile build engine and image runner.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    /// `--root` before the subcommand (`kiln --root DIR images`); being global, clap also
    /// takes it after the subcommand and hands the value to the subcommand's own options.
    #[command(flatten)]
    store: store_args::StoreArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build an image from a Dockerfile
    Build(commands::build::BuildArgs),
    /// Run a command in a new container from an image
    Run(commands::run::RunArgs),
    /// Download an image from a registry
    Pull(commands::pull::PullArgs),
    /// Upload an image to a registry
    Push(commands::push::PushArgs),
    /// List images
    Images(commands::images::ImagesArgs),
    /// Give an image another name
    Tag(commands::tag::TagArgs),
    /// Remove images
    Rmi(commands::rmi::RmiArgs),
    /// Show everything known about images, as JSON
    Inspect(commands::inspect::InspectArgs),
    /// Log in to a registry
    Login(commands::login::LoginArgs),
    /// Log out of a registry
    Logout(commands::logout::LogoutArgs),
    /// Make an image from a root filesystem tarball
    Import(commands::import::ImportArgs),
    /// Remove unused images' layers, blobs and build cache
    Prune(commands::prune::PruneArgs),
    /// Save images to a docker-archive (or OCI layout) tar
    Save(commands::save::SaveArgs),
    /// Load images from a docker-archive or OCI layout (tar or directory)
    Load(commands::load::LoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Run(args) => commands::run::run(args),
        Command::Pull(args) => commands::pull::run(args),
        Command::Push(args) => commands::push::run(args),
        Command::Images(args) => commands::images::run(args),
        Command::Tag(args) => commands::tag::run(args),
        Command::Rmi(args) => commands::rmi::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Login(args) => commands::login::run(args),
        Command::Logout(args) => commands::logout::run(args),
        Command::Import(args) => commands::import::run(args),
        Command::Prune(args) => commands::prune::run(args),
        Command::Save(args) => commands::save::run(args),
        Command::Load(args) => commands::load::run(args),
    };
    match result {
        Ok(code) if code == ExitCode::SUCCESS => exit_success(),
        Ok(code) => code,
        Err(error) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Ends a successful command without the C runtime's exit handlers. Everything kiln owns was
/// dropped when the command returned (store, leases, mounts, sandboxes); what is left are the
/// allocators' exit-time cleanups, which only free memory the kernel is about to take back:
/// mimalloc's `mi_collect` decommits every arena (~3 ms of a 60 ms no-change rebuild) and
/// OpenSSL frees its tables. Standard output and error are flushed first.
fn exit_success() -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it that could observe
    // state it skips (other threads are ended with the process, as by `exit`).
    unsafe { libc::_exit(0) }
}
