//! `kiln images`: the tagged images of the store, as `docker images` lists them.

use std::io::Write as _;
use std::process::ExitCode;

use crate::store_args::StoreArgs;

/// Output format of `kiln images`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ImagesFormat {
    /// REPOSITORY TAG [DIGEST] IMAGE ID CREATED SIZE
    Table,
    /// One JSON object per line
    Json,
}

/// Arguments of `kiln images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Only show image ids
    #[arg(short, long)]
    pub quiet: bool,

    /// Show full image ids
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,

    /// Show digests: of the manifest each name points at
    #[arg(long)]
    pub digests: bool,

    /// Output format
    #[arg(long, value_enum, default_value = "table")]
    pub format: ImagesFormat,

    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<ExitCode> {
    let store = args.store.open()?;
    let rows = kiln_image::list_images(&store)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let mut stdout = std::io::stdout().lock();
    let id_text = |id: &kiln_types::Digest| {
        if args.no_trunc {
            id.to_string()
        } else {
            id.hex()[..12].to_string()
        }
    };
    if args.quiet {
        let mut seen = std::collections::BTreeSet::new();
        for row in &rows {
            if seen.insert(row.id.clone()) {
                writeln!(stdout, "{}", id_text(&row.id))?;
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        ImagesFormat::Json => {
            for row in &rows {
                let line = serde_json::json!({
                    "Name": row.name,
                    "Repository": row.repository,
                    "Tag": row.tag,
                    "ID": row.id,
                    "Digest": row.digest,
                    "Created": row.created,
                    "Size": row.size,
                });
                writeln!(stdout, "{line}")?;
            }
        }
        ImagesFormat::Table => {
            let mut header = vec!["REPOSITORY", "TAG"];
            if args.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "CREATED", "SIZE"]);
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    let mut cells = vec![
                        row.repository.clone(),
                        row.tag.clone().unwrap_or_else(|| "<none>".into()),
                    ];
                    if args.digests {
                        cells.push(row.digest.to_string());
                    }
                    cells.extend([
                        id_text(&row.id),
                        row.created
                            .as_deref()
                            .and_then(kiln_image::parse_rfc3339)
                            .map(|created| human_age(now.saturating_sub(created)))
                            .unwrap_or_else(|| "N/A".into()),
                        human_size(row.size),
                    ]);
                    cells
                })
                .collect();
            let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
            for row in &table {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.len());
                }
            }
            let render = |cells: &[&str]| {
                let mut line = String::new();
                for (column, cell) in cells.iter().enumerate() {
                    if column + 1 == cells.len() {
                        line.push_str(cell);
                    } else {
                        line.push_str(&format!("{cell:<width$}   ", width = widths[column]));
                    }
                }
                line
            };
            writeln!(stdout, "{}", render(&header))?;
            for row in &table {
                let cells: Vec<&str> = row.iter().map(String::as_str).collect();
                writeln!(stdout, "{}", render(&cells))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Docker's `units.HumanDuration` + " ago".
pub fn human_age(seconds: u64) -> String {
    let text = match seconds {
        0 => "Less than a second".to_string(),
        1 => "1 second".to_string(),
        2..=59 => format!("{seconds} seconds"),
        60..=119 => "About a minute".to_string(),
        120..=3599 => format!("{} minutes", seconds / 60),
        3600..=7199 => "About an hour".to_string(),
        7200..=172_799 => format!("{} hours", seconds / 3600),
        172_800..=1_209_599 => format!("{} days", seconds / 86_400),
        1_209_600..=5_183_999 => format!("{} weeks", seconds / 604_800),
        5_184_000..=63_071_999 => format!("{} months", seconds / 2_592_000),
        _ => format!("{} years", seconds / 31_536_000),
    };
    format!("{text} ago")
}

/// Docker's `units.HumanSize`: decimal units, three significant digits (`1.98MB`).
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    };
    format!("{text}{}", units[unit])
}
