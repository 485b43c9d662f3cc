//! `kiln pull`: download an image from a registry into the store, unpacked and tagged.
//! Progress: a bar per layer on a terminal, one line per layer state change otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::Context as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_image::{LayerState, Progress, PullEvent, PullOptions};
use kiln_types::Platform;

use crate::store_args::{runtime, RegistryArgs, StoreArgs};

/// Arguments of `kiln pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// Image to pull: NAME[:TAG] or NAME@DIGEST
    pub reference: String,

    /// Platform to pick from a multi-platform image (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Layers downloaded at once
    #[arg(long = "max-concurrent-downloads", value_name = "N", default_value_t = kiln_image::DEFAULT_CONCURRENT_DOWNLOADS)]
    pub max_concurrent_downloads: usize,

    /// Print only the image name at the end
    #[arg(short, long)]
    pub quiet: bool,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(args: PullArgs) -> anyhow::Result<ExitCode> {
    let reference = kiln_image::parse_reference(&args.reference)?;
    let platform = args
        .platform
        .as_deref()
        .map(|text| Platform::parse(text).with_context(|| format!("--platform {text}")))
        .transpose()?;
    let store = args.store.open()?;
    let client = args.registry.client()?;
    let options = PullOptions::default()
        .with_platform(platform)
        .with_max_concurrent_downloads(args.max_concurrent_downloads);
    let renderer = if args.quiet {
        None
    } else if std::io::stderr().is_terminal() {
        Some(Renderer::Bars(Bars::new()))
    } else {
        Some(Renderer::Lines {
            heading: pulling_from(&reference),
            shown: Mutex::new(HashMap::new()),
        })
    };
    let renderer = std::sync::Arc::new(renderer);
    let progress = {
        let renderer = renderer.clone();
        Progress::new(move |event| {
            if let Some(renderer) = renderer.as_ref() {
                renderer.event(event);
            }
        })
    };
    let pulled = runtime()?
        .block_on(kiln_image::pull(
            &store, &client, &reference, &options, &progress,
        ))
        .with_context(|| format!("pulling {reference}"))?;
    if let Some(Renderer::Bars(bars)) = renderer.as_ref() {
        bars.finish();
    }
    let mut stdout = std::io::stdout().lock();
    let name = pulled.name.clone().unwrap_or_else(|| reference.to_string());
    if !args.quiet {
        writeln!(stdout, "Digest: {}", pulled.root_digest)?;
        let status = if pulled.layers_existing == pulled.snapshots.len() {
            "Image is up to date for"
        } else {
            "Downloaded newer image for"
        };
        writeln!(stdout, "Status: {status} {name}")?;
    }
    writeln!(stdout, "{name}")?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// How progress is shown.
enum Renderer {
    /// indicatif bars, one per layer.
    Bars(Bars),
    /// One line per layer state change (the last state shown per layer), after Docker's
    /// `TAG: Pulling from REPOSITORY` heading.
    Lines {
        heading: String,
        shown: Mutex<HashMap<usize, &'static str>>,
    },
}

/// Docker's first line of a pull: `latest: Pulling from library/busybox`.
fn pulling_from(reference: &kiln_registry::Reference) -> String {
    let version = match (reference.tag(), reference.digest()) {
        (Some(tag), _) => tag.to_string(),
        (None, Some(digest)) => digest.to_string(),
        (None, None) => "latest".to_string(),
    };
    format!("{version}: Pulling from {}", reference.repository())
}

impl Renderer {
    fn event(&self, event: PullEvent) {
        match self {
            Renderer::Bars(bars) => bars.event(event),
            Renderer::Lines { heading, shown } => {
                let line = match &event {
                    PullEvent::Resolved { .. } => Some(heading.clone()),
                    PullEvent::Layer {
                        index,
                        digest,
                        size,
                        state,
                    } => {
                        let text = state_text(state);
                        let mut shown = shown.lock().unwrap_or_else(|poison| poison.into_inner());
                        if shown.get(index) == Some(&text) {
                            None
                        } else {
                            shown.insert(*index, text);
                            let extra = match state {
                                LayerState::Downloading { resumed_from, .. }
                                    if *resumed_from > 0 =>
                                {
                                    format!(" (resuming at {resumed_from} of {size} bytes)")
                                }
                                LayerState::Downloading { .. } => format!(" ({size} bytes)"),
                                _ => String::new(),
                            };
                            Some(format!("{}: {text}{extra}", short_digest(digest)))
                        }
                    }
                    PullEvent::Tagged { name } => Some(format!("tagged {name}")),
                    _ => None,
                };
                if let Some(line) = line {
                    #[allow(clippy::print_stderr)]
                    {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
}

fn state_text(state: &LayerState) -> &'static str {
    match state {
        LayerState::Waiting => "Pulling fs layer",
        LayerState::AlreadyExists => "Already exists",
        LayerState::Downloading {
            unpacking: true, ..
        } => "Downloading and extracting",
        LayerState::Downloading { .. } => "Downloading",
        LayerState::Downloaded => "Download complete",
        LayerState::Extracting => "Extracting",
        LayerState::Done => "Pull complete",
        _ => "Working",
    }
}

fn short_digest(digest: &kiln_types::Digest) -> &str {
    let hex = digest.hex();
    &hex[..hex.len().min(12)]
}

/// Bars on a terminal.
struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<usize, ProgressBar>>,
}

impl Bars {
    fn new() -> Self {
        Bars {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn event(&self, event: PullEvent) {
        let PullEvent::Layer {
            index,
            digest,
            size,
            state,
        } = event
        else {
            return;
        };
        let mut bars = self
            .bars
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let bar = bars.entry(index).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(size));
            let style = ProgressStyle::with_template(
                "{prefix}: {msg:<26} [{bar:30}] {bytes:>10}/{total_bytes}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(short_digest(&digest).to_string());
            bar
        });
        bar.set_message(state_text(&state));
        match state {
            LayerState::Downloading { downloaded, .. } => bar.set_position(downloaded),
            LayerState::Downloaded | LayerState::Extracting => bar.set_position(size),
            LayerState::AlreadyExists | LayerState::Done => {
                bar.set_position(size);
                bar.finish();
            }
            _ => {}
        }
    }

    fn finish(&self) {
        let bars = self
            .bars
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for bar in bars.values() {
            if !bar.is_finished() {
                bar.finish();
            }
        }
    }
}
