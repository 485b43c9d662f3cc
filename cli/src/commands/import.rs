//! `kiln import`: make a one-layer image from a root filesystem tarball (plain, gzip or
//! zstd), as `docker import` does.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use kiln_image::ImportOptions;
use kiln_types::Platform;

use crate::store_args::StoreArgs;

/// Arguments of `kiln import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The tarball ("-" reads standard input)
    pub file: PathBuf,

    /// Name of the image: NAME[:TAG]
    pub reference: String,

    /// Apply a Dockerfile instruction to the config (CMD, ENTRYPOINT, ENV, EXPOSE,
    /// HEALTHCHECK, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR)
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,

    /// Platform written into the config (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let reference = kiln_image::parse_reference(&args.reference)?;
    let platform = args
        .platform
        .as_deref()
        .map(|text| Platform::parse(text).with_context(|| format!("--platform {text}")))
        .transpose()?;
    let store = args.store.open()?;
    let options = ImportOptions::default()
        .with_changes(args.changes.clone())
        .with_platform(platform);
    let imported = if args.file.as_os_str() == "-" {
        kiln_image::import(&store, std::io::stdin().lock(), &reference, &options)
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        kiln_image::import(&store, std::io::BufReader::new(file), &reference, &options)
    }
    .with_context(|| format!("importing {} as {reference}", args.file.display()))?;
    writeln!(std::io::stdout(), "{}", imported.manifest.digest)?;
    Ok(ExitCode::SUCCESS)
}
