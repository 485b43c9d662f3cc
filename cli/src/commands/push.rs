//! `kiln push`: upload a stored image to a registry (blobs the registry has are skipped,
//! blobs of another repository of the same registry are mounted), then print its digest as
//! `docker push` does. An interrupted push is simply run again.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use kiln_exporter::{PushEvent, PushOptions, PushReport};
use kiln_registry::{BlobPushOutcome, RegistryClient};
use kiln_snapshotter::Store;
use kiln_types::Platform;

use crate::store_args::{runtime, RegistryArgs, StoreArgs};

/// Arguments of `kiln push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Image to push: NAME[:TAG] (the name says where it goes)
    pub reference: String,

    /// Platform to push from a multi-platform image whose other platforms are not stored
    /// (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Layers uploaded at once
    #[arg(long = "max-concurrent-uploads", value_name = "N", default_value_t = kiln_exporter::DEFAULT_CONCURRENT_UPLOADS)]
    pub max_concurrent_uploads: usize,

    /// Print only the pushed digest's line
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: PushArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let client = args.registry.client()?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text).with_context(|| format!("--platform {text}"))?,
        None => Platform::host(),
    };
    let options = PushOptions {
        max_concurrent_uploads: args.max_concurrent_uploads,
        platform,
        progress: (!args.quiet).then(line_progress),
        ..PushOptions::default()
    };
    let report = push_stored(&store, &client, &args.reference, &options)?;
    print_report(&report)?;
    Ok(ExitCode::SUCCESS)
}

/// Pushes the stored image named `name` (normalized as `docker` does; a missing tag is
/// `latest`) to the registry its name says.
pub fn push_stored(
    store: &Store,
    client: &RegistryClient,
    name: &str,
    options: &PushOptions,
) -> anyhow::Result<PushReport> {
    let mut reference = kiln_image::parse_reference(name)?;
    if reference.digest().is_some() {
        anyhow::bail!("cannot push to {name}: push to a tag, not a digest");
    }
    if reference.tag().is_none() {
        reference = reference.with_tag("latest")?;
    }
    let stored_name = reference.to_string();
    let record = store
        .image(&stored_name)?
        .with_context(|| format!("no image named {stored_name} in the store"))?;
    runtime()?
        .block_on(kiln_exporter::push_image(
            store,
            client,
            &stored_name,
            &record.target,
            &reference,
            options,
        ))
        .with_context(|| format!("pushing {stored_name}"))
}

/// `<tag>: digest: sha256:... size: N`, as `docker push` ends.
pub fn print_report(report: &PushReport) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}: digest: {} size: {}",
        report.reference.tag().unwrap_or("latest"),
        report.descriptor.digest,
        report.descriptor.size
    )?;
    stdout.flush()?;
    Ok(())
}

/// One line per finished blob on standard error, like `docker push` without a terminal.
pub fn line_progress() -> kiln_exporter::PushProgress {
    Arc::new(|event| {
        let line = match event {
            PushEvent::BlobDone {
                digest,
                outcome,
                mounted_from,
                ..
            } => {
                let short = &digest.hex()[..digest.hex().len().min(12)];
                match (outcome, mounted_from) {
                    (BlobPushOutcome::AlreadyPresent, _) => {
                        format!("{short}: Layer already exists")
                    }
                    (BlobPushOutcome::Mounted, Some(from)) => {
                        format!("{short}: Mounted from {from}")
                    }
                    (BlobPushOutcome::Mounted, None) => format!("{short}: Mounted"),
                    _ => format!("{short}: Pushed"),
                }
            }
            _ => return,
        };
        #[allow(clippy::print_stderr)]
        {
            eprintln!("{line}");
        }
    })
}

/// Whether a build's `--push` or `-o type=image,push=true` asks to push its tags.
pub fn build_wants_push(push_flag: bool, outputs: &[String]) -> anyhow::Result<bool> {
    let parsed = super::build_output::parse_outputs(outputs)?;
    Ok(push_flag
        || parsed.iter().any(|output| {
            matches!(
                output,
                super::build_output::BuildOutput::Image { push: true, .. }
            )
        }))
}

/// After a build: pushes every tag (`kiln build --push`), printing each digest line.
pub async fn push_built_tags(
    store: &Store,
    client: &RegistryClient,
    tags: &[String],
) -> anyhow::Result<()> {
    if tags.is_empty() {
        anyhow::bail!("--push needs a name: use -t NAME[:TAG]");
    }
    let options = PushOptions {
        progress: Some(line_progress()),
        ..PushOptions::default()
    };
    for tag in tags {
        let reference = kiln_image::parse_reference(tag)?;
        let reference = match reference.tag() {
            Some(_) => reference,
            None => reference.with_tag("latest")?,
        };
        let stored_name = reference.to_string();
        let record = store
            .image(&stored_name)?
            .with_context(|| format!("no image named {stored_name} in the store"))?;
        let report = kiln_exporter::push_image(
            store,
            client,
            &stored_name,
            &record.target,
            &reference,
            &options,
        )
        .await
        .with_context(|| format!("pushing {stored_name}"))?;
        print_report(&report)?;
    }
    Ok(())
}
