//! What the caller asks for: the sandbox spec and the exit status it gets back.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

/// Docker's default `PATH`, used for the executable lookup (and added to the environment) when the
/// spec's environment has no `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's default `RLIMIT_NOFILE` (soft and hard).
pub const DEFAULT_NOFILE_LIMIT: u64 = 1_048_576;

/// Everything needed to start one sandboxed process.
#[derive(Debug)]
#[non_exhaustive]
pub struct SandboxSpec {
    /// Sandbox id; a random one is generated when `None`. Must match `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
    pub id: Option<String>,
    /// The root filesystem: a directory on the host, usually an overlayfs mount point. Mounts the
    /// sandbox makes never propagate back to the host, but stub mount points are created in it
    /// (and removed afterwards when still empty).
    pub rootfs: PathBuf,
    /// `argv`; `args[0]` is looked up in the container's `PATH` unless it contains a `/`.
    pub args: Vec<String>,
    /// Environment as `KEY=value` strings. `PATH` and `HOME` are added when missing, as Docker does.
    pub env: Vec<String>,
    /// Working directory inside the container (absolute); created when missing, like `WORKDIR`.
    pub cwd: String,
    /// `user`, `user:group`, `uid` or `uid:gid`, resolved with the rootfs's own `/etc/passwd` and
    /// `/etc/group`. `None` is root.
    pub user: Option<String>,
    /// Hostname in the new UTS namespace.
    pub hostname: String,
    /// Network mode.
    pub network: Network,
    /// Contents for `/etc/resolv.conf` and `/etc/hosts`; generated when `None`.
    pub network_files: NetworkFiles,
    /// Mounts made after `/proc`, `/dev`, `/sys` and the network files, in order.
    pub mounts: Vec<Mount>,
    /// cgroup limits.
    pub limits: Limits,
    /// Resource limits; these replace the defaults for the same resource (default: `RLIMIT_NOFILE`
    /// 1048576).
    pub rlimits: Vec<Rlimit>,
    /// Capability set (bounding, permitted, effective) as a bit mask; default Docker's
    /// ([`crate::DEFAULT_CAPABILITIES`]). Inheritable and ambient are always empty.
    pub capabilities: u64,
    /// Make the root filesystem read-only (the mounts on top keep their own flags).
    pub readonly_rootfs: bool,
    /// Standard input. Ignored when `tty` is set (the pty is stdin then).
    pub stdin: Stdio,
    /// Standard output. Ignored when `tty` is set.
    pub stdout: Stdio,
    /// Standard error. Ignored when `tty` is set.
    pub stderr: Stdio,
    /// Give the process a pseudo-terminal (allocated inside the container's own devpts) as its
    /// stdin, stdout and stderr; the caller gets the master side.
    pub tty: Option<TtySize>,
}

impl SandboxSpec {
    /// A spec with Docker-like defaults: root user, cwd `/`, no network, hostname `kiln`, output
    /// piped, stdin from `/dev/null`.
    pub fn new(rootfs: impl Into<PathBuf>, args: Vec<String>) -> Self {
        SandboxSpec {
            id: None,
            rootfs: rootfs.into(),
            args,
            env: vec![format!("PATH={DEFAULT_PATH}")],
            cwd: "/".to_owned(),
            user: None,
            hostname: "kiln".to_owned(),
            network: Network::None,
            network_files: NetworkFiles::default(),
            mounts: Vec::new(),
            limits: Limits::default(),
            rlimits: Vec::new(),
            capabilities: crate::DEFAULT_CAPABILITIES,
            readonly_rootfs: false,
            stdin: Stdio::Null,
            stdout: Stdio::Pipe,
            stderr: Stdio::Pipe,
            tty: None,
        }
    }
}

/// Network mode of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Network {
    /// A new network namespace with only `lo`, up.
    None,
    /// Share the host's network stack.
    Host,
}

/// Optional contents for the network files bind-mounted (read-only) into the container.
/// `/etc/hostname` is always generated from the hostname.
#[derive(Debug, Clone, Default)]
pub struct NetworkFiles {
    /// `/etc/resolv.conf`; default: the host's.
    pub resolv_conf: Option<Vec<u8>>,
    /// `/etc/hosts`; default: localhost entries and the hostname (network none) or the host's
    /// file (network host).
    pub hosts: Option<Vec<u8>>,
}

/// One mount requested by the caller.
#[derive(Debug, Clone)]
pub struct Mount {
    /// Absolute path inside the container. Resolved inside the rootfs: symlinks never lead out.
    pub target: String,
    /// What to mount there.
    pub kind: MountKind,
}

/// The kinds of caller mounts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum MountKind {
    /// Recursive bind mount of a host file or directory.
    Bind { source: PathBuf, readonly: bool },
    /// A fresh tmpfs.
    Tmpfs { size_bytes: Option<u64>, mode: u32 },
    /// A read-only file with the given contents, mode and owner (secrets, generated
    /// config). It lives in memory (a memfd), never on disk.
    File {
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// cgroup limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Memory limit in bytes (swap included where the kernel can limit it).
    pub memory_bytes: Option<u64>,
    /// CPU bandwidth.
    pub cpu: Option<CpuQuota>,
    /// Maximum number of tasks.
    pub pids: Option<u64>,
}

/// CPU bandwidth: `quota_us` of CPU time per `period_us`.
#[derive(Debug, Clone, Copy)]
pub struct CpuQuota {
    pub quota_us: u64,
    pub period_us: u64,
}

/// One `setrlimit` applied before exec.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    /// A `libc::RLIMIT_*` value.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// Where a standard stream of the process goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// A pipe; the caller takes the other end from [`crate::RunningSandbox`].
    Pipe,
    /// A file descriptor given by the caller (a log file, the caller's own terminal, ...).
    Fd(OwnedFd),
}

/// Terminal size for a pty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
}

/// The end of a sandbox: how its command ended and whether the kernel's OOM killer fired in its
/// cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub outcome: Outcome,
    pub oom_killed: bool,
}

impl ExitStatus {
    /// True for `Exited(0)`.
    pub fn success(&self) -> bool {
        self.outcome == Outcome::Exited(0)
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// The pty master (stdout and stderr together).
    Tty,
}

/// How long [`crate::RunningSandbox::wait_with_output`] may run.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitOptions {
    /// Kill the sandbox and return [`crate::SandboxError::TimedOut`] after this long.
    pub timeout: Option<Duration>,
}
