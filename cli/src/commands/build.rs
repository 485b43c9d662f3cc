//! `kiln build`: build an image from a Dockerfile. `--print-dag` converts the Dockerfile to its
//! DAG and prints it without running anything (no root needed); otherwise the DAG is solved
//! (see `build_run`) and the result tagged in the store.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use kiln_frontend::convert::{convert, render_result, ConvertOptions};
use kiln_frontend::dag::PrintFormat;
use kiln_frontend::dockerignore::DockerIgnore;
use kiln_frontend::resolver::OfflineResolver;
use kiln_types::Platform;

/// Arguments of `kiln build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Build context directory
    pub context: PathBuf,

    /// Name of the Dockerfile ("-" reads it from stdin) [default: CONTEXT/Dockerfile]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,

    /// Set a build-time variable (KEY=VALUE, or KEY to take it from the environment)
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,

    /// Name of the stage to build
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,

    /// Target platform (os/arch[/variant]) [default: this machine's]
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    /// Print the build's DAG (text, dot or json) and exit without building
    #[arg(
        long = "print-dag",
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text"
    )]
    pub print_dag: Option<PrintFormat>,

    /// Name and optionally a tag (name:tag) for the image; repeatable
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tags: Vec<String>,

    /// Do not use cached results
    #[arg(long)]
    pub no_cache: bool,

    /// Do not use cached results for this stage; repeatable
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    pub no_cache_filter: Vec<String>,

    /// Always resolve base images in their registry, even when the store has them
    #[arg(long)]
    pub pull: bool,

    /// Network for RUN steps without --network
    #[arg(long, value_name = "MODE", default_value = "default")]
    pub network: String,

    /// Secret for RUN --mount=type=secret: id=ID,src=FILE or id=ID,env=VAR; repeatable
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,

    /// SSH agent for RUN --mount=type=ssh: default or ID=SOCKET; repeatable
    #[arg(long, value_name = "SPEC")]
    pub ssh: Vec<String>,

    /// Progress output
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: crate::progress::ProgressMode,

    /// For every step that ran, say which of its inputs changed since the last build
    #[arg(long)]
    pub explain_cache: bool,

    /// Extra privileges: security.insecure allows RUN --security=insecure
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,

    /// Export the build cache: type=local,dest=DIR | type=registry,ref=REF | type=inline, with
    /// mode=min|max and cache-mounts=true; repeatable
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Vec<String>,

    /// Use a build cache: type=local,src=DIR | type=registry,ref=REF | REF (a cache or an image
    /// with inline cache); repeatable
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,

    /// Push the named images (-t) to their registries after the build
    #[arg(long)]
    pub push: bool,

    /// Output: type=image[,name=REF][,push=true] (the store; pushed with push=true),
    /// type=registry, type=docker,dest=FILE, type=oci,dest=FILE.tar|DIR, type=local,dest=DIR,
    /// type=tar,dest=FILE; image outputs take compression=gzip|zstd|uncompressed,
    /// compression-level=N, force-compression=true, oci-mediatypes=true|false,
    /// rewrite-timestamp=true; repeatable
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,

    /// Registry to reach over plain HTTP (loopback always is); repeatable
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,

    /// kiln's store
    #[arg(long, env = "KILN_ROOT", value_name = "DIR", default_value = kiln_snapshotter::DEFAULT_ROOT)]
    pub root: PathBuf,
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let Some(format) = args.print_dag else {
        return super::build_run::run(args);
    };
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let (dockerfile_name, dockerfile_path, text) = read_dockerfile(&args)?;
    let dockerignore = read_dockerignore(&args.context, dockerfile_path.as_deref())?;
    let mut options = ConvertOptions::new(&OfflineResolver);
    options.build_args = parse_build_args(&args.build_args)?;
    options.target = args.target.clone();
    if let Some(platform) = &args.platform {
        options.target_platform =
            Some(Platform::parse(platform).with_context(|| format!("--platform {platform}"))?);
    }
    options.dockerignore = dockerignore;
    let result =
        convert(&text, &dockerfile_name, &options).map_err(|error| anyhow::anyhow!("{error}"))?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(render_result(&result, format).as_bytes())?;
    stdout.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The Dockerfile's display name, its path (None for stdin) and its text.
pub(crate) fn read_dockerfile(
    args: &BuildArgs,
) -> anyhow::Result<(String, Option<PathBuf>, String)> {
    match args.file.as_deref() {
        Some("-") => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Dockerfile from stdin")?;
            Ok(("-".to_string(), None, text))
        }
        file => {
            let path = match file {
                Some(file) => PathBuf::from(file),
                None => args.context.join("Dockerfile"),
            };
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let text = String::from_utf8(bytes)
                .with_context(|| format!("{} is not valid UTF-8", path.display()))?;
            let name = file.map_or_else(|| "Dockerfile".to_string(), str::to_string);
            Ok((name, Some(path), text))
        }
    }
}

/// The exclude patterns: `<Dockerfile>.dockerignore` beside the Dockerfile if it exists (as
/// BuildKit), else `.dockerignore` at the context's root.
pub(crate) fn read_dockerignore(
    context: &Path,
    dockerfile: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    let mut candidates = Vec::new();
    if let Some(dockerfile) = dockerfile {
        if let Some(file_name) = dockerfile.file_name() {
            let mut name = file_name.to_os_string();
            name.push(".dockerignore");
            candidates.push(dockerfile.with_file_name(name));
        }
    }
    candidates.push(context.join(".dockerignore"));
    for candidate in candidates {
        match std::fs::read(&candidate) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let ignore = DockerIgnore::parse(&text)
                    .with_context(|| format!("reading {}", candidate.display()))?;
                return Ok(ignore
                    .matcher()
                    .patterns()
                    .iter()
                    .map(|pattern| {
                        if pattern.is_exclusion() {
                            format!("!{}", pattern.text())
                        } else {
                            pattern.text().to_string()
                        }
                    })
                    .collect());
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", candidate.display()))
            }
        }
    }
    Ok(Vec::new())
}

/// `KEY=VALUE` pairs; a bare `KEY` takes its value from kiln's environment and is skipped when
/// unset, as `docker build` does.
pub(crate) fn parse_build_args(items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((key, _)) if key.is_empty() => bail!("invalid --build-arg {item:?}: empty name"),
            Some((key, value)) => {
                out.insert(key.to_string(), value.to_string());
            }
            None => {
                if let Ok(value) = std::env::var(item) {
                    out.insert(item.clone(), value);
                }
            }
        }
    }
    Ok(out)
}
