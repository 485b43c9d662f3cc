//! `kiln run`: start an image from the store in the foreground, like `docker run`.
//!
//! The image's top snapshot is mounted as an overlay with a fresh writable layer, the image
//! config's Entrypoint/Cmd/Env/WorkingDir/User are applied with Docker's precedence, and the
//! sandbox runs the process with kiln's own stdio (or a pty with `-t`). kiln exits with the
//! container's exit code (128 + signal for a signal death, as Docker does).

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use kiln_registry::{ClientOptions, RegistryClient};
use kiln_runner::{CpuQuota, Limits, Network, Outcome, SandboxSpec, Stdio, TtySize};
use kiln_snapshotter::{CacheRecord, CommitOptions};
use kiln_types::Platform;

use crate::store_args::StoreArgs;

/// Arguments of `kiln run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the container's writable layer when it exits
    #[arg(long)]
    pub rm: bool,

    /// Set an environment variable (KEY=VALUE, or KEY to take it from kiln's environment)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Working directory inside the container
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,

    /// User (name|uid[:group|gid]) to run as
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,

    /// Overwrite the image's ENTRYPOINT
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,

    /// Network: host (the host's stack) or none (only loopback)
    #[arg(long, value_name = "MODE", default_value = "host")]
    pub network: String,

    /// Memory limit (bytes, or with a k/m/g suffix)
    #[arg(short = 'm', long, value_name = "SIZE")]
    pub memory: Option<String>,

    /// Number of CPUs (fractions allowed)
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,

    /// Maximum number of processes
    #[arg(long = "pids-limit", value_name = "N")]
    pub pids_limit: Option<u64>,

    /// Container hostname
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Allocate a pseudo-terminal
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Keep standard input open
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Platform of the image to run (when pulling)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub store: StoreArgs,

    /// The image to run
    pub image: String,

    /// Command and arguments (replace the image's CMD)
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_container(args))
}

async fn run_container(args: RunArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .store
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(kiln_snapshotter::DEFAULT_ROOT));
    let store = args.store.open()?;
    let platform = match &args.platform {
        Some(text) => Platform::parse(text).with_context(|| format!("--platform {text}"))?,
        None => Platform::host(),
    };
    let name = kiln_image::normalize_name(&args.image)
        .with_context(|| format!("invalid image name {:?}", args.image))?;
    let lease = store.lease(&format!("run {name}"))?;
    let record = match kiln_image::find_image(&store, &args.image) {
        Ok(record) => record,
        Err(_) => {
            let client = RegistryClient::with_options(ClientOptions::default())?;
            let reference = kiln_image::parse_reference(&args.image)?;
            write_stderr(&format!(
                "Unable to find image '{}' locally, pulling\n",
                args.image
            ));
            let options = kiln_image::PullOptions::default().with_platform(Some(platform.clone()));
            kiln_image::pull(
                &store,
                &client,
                &reference,
                &options,
                &kiln_image::Progress::none(),
            )
            .await
            .with_context(|| format!("pulling {name}"))?;
            kiln_image::find_image(&store, &args.image)?
        }
    };
    let image = store.resolve_layers(&record.target, &platform)?;
    let top = match image.layers.is_empty() {
        true => None,
        false => Some(image.top_snapshot().cloned().ok_or_else(|| {
            anyhow!("{name}: the image's layers are not unpacked in the store (pull it again)")
        })?),
    };
    for layer in &image.layers {
        if let Some(snapshot) = &layer.snapshot {
            lease.protect_snapshot(snapshot)?;
        }
    }
    let config = image.config.config.clone();

    // Docker's precedence: --entrypoint replaces the image's ENTRYPOINT and drops its CMD;
    // arguments replace CMD.
    let (entrypoint, cmd) = match &args.entrypoint {
        Some(entrypoint) => (
            if entrypoint.is_empty() {
                vec![]
            } else {
                vec![entrypoint.clone()]
            },
            args.args.clone(),
        ),
        None => (
            config.entrypoint.clone().unwrap_or_default(),
            if args.args.is_empty() {
                config.cmd.clone().unwrap_or_default()
            } else {
                args.args.clone()
            },
        ),
    };
    let argv: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if argv.is_empty() {
        bail!("no command specified: the image has no ENTRYPOINT or CMD and none was given");
    }
    let mut env = config.env.clone().unwrap_or_default();
    for item in &args.env {
        let entry = match item.split_once('=') {
            Some(_) => item.clone(),
            None => match std::env::var(item) {
                Ok(value) => format!("{item}={value}"),
                Err(_) => continue,
            },
        };
        let key = entry.split('=').next().unwrap_or_default().to_string();
        env.retain(|existing| existing.split('=').next() != Some(key.as_str()));
        env.push(entry);
    }

    let snapshotter = store.snapshotter();
    // a --rm container's writable layer is thrown away: a volatile overlay, whose unmount
    // does not sync it to disk
    let active = if args.rm {
        snapshotter.prepare_throwaway(&lease, top.as_ref())?
    } else {
        snapshotter.prepare(&lease, top.as_ref())?
    };
    let container_id = kiln_types::Digest::of_bytes(
        format!(
            "{}{:?}{}",
            active.mountpoint().display(),
            std::time::SystemTime::now(),
            std::process::id()
        )
        .as_bytes(),
    )
    .hex()[..12]
        .to_string();
    let mut spec = SandboxSpec::new(active.mountpoint(), argv);
    spec.id = Some(format!("run-{container_id}"));
    spec.env = env;
    spec.cwd = args
        .workdir
        .clone()
        .or_else(|| config.working_dir.clone().filter(|dir| !dir.is_empty()))
        .unwrap_or_else(|| "/".into());
    spec.user = args
        .user
        .clone()
        .or_else(|| config.user.clone().filter(|user| !user.is_empty()));
    spec.hostname = args
        .hostname
        .clone()
        .unwrap_or_else(|| container_id.clone());
    spec.network = match args.network.as_str() {
        "host" | "default" => Network::Host,
        "none" => Network::None,
        other => bail!(
            "--network {other:?}: expected host or none (bridge networking is not implemented)"
        ),
    };
    spec.limits = Limits {
        memory_bytes: args.memory.as_deref().map(parse_size).transpose()?,
        cpu: args.cpus.map(|cpus| CpuQuota {
            quota_us: (cpus * 100_000.0).round() as u64,
            period_us: 100_000,
        }),
        pids: args.pids_limit,
    };
    let terminal_size = args.tty.then(terminal_size);
    spec.tty = terminal_size;
    if !args.tty {
        spec.stdout = Stdio::Fd(duplicate(1)?);
        spec.stderr = Stdio::Fd(duplicate(2)?);
        spec.stdin = if args.interactive {
            Stdio::Fd(duplicate(0)?)
        } else {
            Stdio::Null
        };
    }

    let sandbox = Arc::new(kiln_runner::Sandbox::new(kiln_runner::SandboxConfig {
        state_dir: root.join("run"),
        cgroups: kiln_runner::CgroupMode::default(),
    })?);
    // what a killed kiln left (state directories, cgroups, mount-point stubs), as a build does;
    // the overlays and leases of killed processes are the store's recovery at open
    let _ = sandbox.cleanup_stale();
    // Ctrl-C and termination requests go to the container's process (through its init).
    // The handlers are installed before the container starts, so that a signal arriving
    // while it starts is forwarded rather than killing kiln and orphaning the container.
    let signal_streams = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).context("handling SIGINT")?,
            signal(SignalKind::terminate()).context("handling SIGTERM")?,
            signal(SignalKind::hangup()).context("handling SIGHUP")?,
        )
    };
    let mut running = tokio::task::block_in_place(|| sandbox.spawn(spec))?;
    let pidfd = running.pidfd();
    let mut forwarders = Vec::new();
    let mut raw_mode = None;
    if args.tty {
        if let Some(pty) = running.take_pty() {
            raw_mode = RawMode::enable(0);
            let mut output = pty.try_clone()?;
            forwarders.push(std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                let mut stdout = std::io::stdout();
                while let Ok(read) = output.read(&mut buffer) {
                    if read == 0 || stdout.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                    let _ = stdout.flush();
                }
            }));
            if args.interactive {
                let mut input = pty;
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 1024];
                    let mut stdin = std::io::stdin();
                    while let Ok(read) = stdin.read(&mut buffer) {
                        if read == 0 || input.write_all(&buffer[..read]).is_err() {
                            break;
                        }
                    }
                });
            }
        }
    }
    let signals = tokio::spawn(async move {
        let (mut interrupt, mut terminate, mut hangup) = signal_streams;
        loop {
            let number = tokio::select! {
                _ = interrupt.recv() => libc::SIGINT,
                _ = terminate.recv() => libc::SIGTERM,
                _ = hangup.recv() => libc::SIGHUP,
            };
            // SAFETY: sends a signal through a pidfd we hold open (the sandbox outlives this task's use)
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    number,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
    });
    let status = tokio::task::spawn_blocking(move || {
        let status = running.wait();
        drop(running);
        status
    })
    .await??;
    signals.abort();
    for forwarder in forwarders {
        let _ = forwarder.join();
    }
    drop(raw_mode);

    if args.rm {
        snapshotter.remove(active)?;
    } else {
        // Kept for later container commands: a record keeps the writable layer from prune.
        let id = snapshotter.commit(
            active,
            CommitOptions {
                key: Some(format!("container:{container_id}")),
                ..CommitOptions::default()
            },
        )?;
        store.put_cache_record(
            &format!("container:{container_id}"),
            &CacheRecord {
                snapshots: vec![id],
                blobs: vec![],
                cache_mounts: vec![],
                data: serde_json::json!({ "container": container_id, "image": name }),
                created_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            },
        )?;
    }
    let code = match status.outcome {
        Outcome::Exited(code) => code,
        Outcome::Signaled(signal) => 128 + signal,
    };
    if status.oom_killed {
        write_stderr("kiln: the container was killed for exceeding its memory limit\n");
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

fn duplicate(fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: dup of a standard fd; the result is owned
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy < 0 {
        return Err(std::io::Error::last_os_error()).context("duplicating a standard stream");
    }
    // SAFETY: fresh fd from fcntl
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// `512m`, `1g`, `1048576`: Docker's memory sizes.
fn parse_size(text: &str) -> anyhow::Result<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let (number, unit) = match lower.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(index) => lower.split_at(index),
        None => (lower.as_str(), ""),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| anyhow!("invalid size {text:?}"))?;
    let multiplier: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        _ => bail!("invalid size {text:?}: unknown unit"),
    };
    Ok((value * multiplier as f64) as u64)
}

fn terminal_size() -> TtySize {
    // SAFETY: TIOCGWINSZ fills a winsize
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_row > 0 {
        TtySize {
            rows: size.ws_row,
            cols: size.ws_col,
        }
    } else {
        TtySize { rows: 24, cols: 80 }
    }
}

/// Puts a terminal in raw mode and restores it when dropped.
struct RawMode {
    fd: i32,
    saved: libc::termios,
}

impl RawMode {
    fn enable(fd: i32) -> Option<RawMode> {
        // SAFETY: termios calls on a standard fd
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(fd, libc::TCSANOW, &raw);
            Some(RawMode { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the saved settings
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
        }
    }
}
