//! `kiln login`: check credentials against a registry and keep them in kiln's credentials
//! file (`$KILN_CREDENTIALS_FILE`, else `~/.config/kiln/credentials.json`).
//!
//! As `docker login`, a missing user name or password is asked for when standard input is a
//! terminal (`Username: `, then `Password: ` with echo off); the terminal's settings are put
//! back on every way out, a Ctrl-C or a kill signal included.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicPtr, Ordering};

use anyhow::{bail, Context as _};

use crate::store_args::{runtime, RegistryArgs};

/// Arguments of `kiln login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Registry (host[:port]) [default: docker.io]
    pub registry: Option<String>,

    /// User name (asked for on a terminal when not given)
    #[arg(short, long)]
    pub username: Option<String>,

    /// Password (prefer --password-stdin: a password on the command line is visible to
    /// other users; asked for on a terminal when not given)
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
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if args.password_stdin && args.username.is_none() {
        bail!("--password-stdin needs a user name: use -u USER");
    }
    let username = match &args.username {
        Some(username) => username.trim().to_string(),
        None if interactive => prompt_line("Username: ")?,
        None => bail!(
            "no user name given, and standard input is not a terminal to ask for it: \
             use -u USER with --password-stdin (or -p PASSWORD)"
        ),
    };
    if username.is_empty() {
        bail!("the user name is empty");
    }
    let password = match (&args.password, args.password_stdin) {
        (Some(password), _) => password.clone(),
        (None, true) => {
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if interactive => prompt_password("Password: ")?,
        (None, false) => bail!(
            "no password given, and standard input is not a terminal to ask for it: \
             use --password-stdin (or -p PASSWORD)"
        ),
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

/// Writes `prompt` to standard error and reads one line from the terminal on standard input,
/// trimmed.
fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(prompt.as_bytes())?;
    stderr.flush()?;
    let mut line = String::new();
    let read = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the user name")?;
    if read == 0 {
        bail!("no user name given (end of input)");
    }
    Ok(line.trim().to_string())
}

/// As [`prompt_line`] with the terminal's echo off; only the line end is stripped.
fn prompt_password(prompt: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    let read = {
        let _echo_off = EchoOff::enable(libc::STDIN_FILENO)?;
        let mut stderr = std::io::stderr().lock();
        stderr.write_all(prompt.as_bytes())?;
        stderr.flush()?;
        let read = std::io::stdin().lock().read_line(&mut line);
        // The Enter that ended the line was not echoed.
        let _ = stderr.write_all(b"\n");
        read.context("reading the password")?
    };
    if read == 0 {
        bail!("no password given (end of input)");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The terminal settings to put back when a signal ends kiln while echo is off: set (and
/// leaked, a few bytes once) before the handlers are installed, read by them.
static SAVED_TERMINAL: AtomicPtr<libc::termios> = AtomicPtr::new(std::ptr::null_mut());

/// Signals whose default action ends the process: on each, the terminal is restored first.
const RESTORING_SIGNALS: [libc::c_int; 4] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Turns a terminal's echo off and puts its settings back when dropped, or when a signal of
/// [`RESTORING_SIGNALS`] arrives (the handler restores, then the signal's default action
/// runs, so kiln still dies of it as the shell expects).
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
    previous_actions: Vec<(libc::c_int, libc::sigaction)>,
}

impl EchoOff {
    fn enable(fd: libc::c_int) -> anyhow::Result<EchoOff> {
        // SAFETY: tcgetattr fills a termios for a valid fd
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error()).context("reading the terminal settings");
        }
        SAVED_TERMINAL.store(Box::into_raw(Box::new(saved)), Ordering::SeqCst);
        let mut previous_actions = Vec::with_capacity(RESTORING_SIGNALS.len());
        for signal in RESTORING_SIGNALS {
            // SAFETY: installs a handler that only makes async-signal-safe calls
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = restore_terminal_and_die as *const () as usize;
                action.sa_flags = libc::SA_RESETHAND;
                libc::sigemptyset(&mut action.sa_mask);
                let mut previous: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut previous) == 0 {
                    previous_actions.push((signal, previous));
                }
            }
        }
        let guard = EchoOff {
            fd,
            saved,
            previous_actions,
        };
        let mut quiet = saved;
        quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        // SAFETY: sets the terminal settings of a valid fd
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error()).context("turning the terminal's echo off");
        }
        Ok(guard)
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the saved settings and the previous signal actions
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            for (signal, previous) in &self.previous_actions {
                libc::sigaction(*signal, previous, std::ptr::null_mut());
            }
        }
        // The box stays leaked: a handler running on another thread may still read it.
        SAVED_TERMINAL.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Signal handler: puts the terminal back, ends the prompt's line, and dies of the signal
/// (`SA_RESETHAND` restored the default action on entry).
extern "C" fn restore_terminal_and_die(signal: libc::c_int) {
    let saved = SAVED_TERMINAL.load(Ordering::SeqCst);
    // SAFETY: tcsetattr, write and raise are async-signal-safe; `saved` is leaked, never freed
    unsafe {
        if !saved.is_null() {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, saved);
        }
        libc::write(libc::STDERR_FILENO, b"\n".as_ptr().cast(), 1);
        libc::raise(signal);
    }
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
