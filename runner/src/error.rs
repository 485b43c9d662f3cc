//! Errors returned by the sandbox.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while preparing, running or tearing down a sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// A sandbox id did not match `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
    #[error(
        "invalid sandbox id {id:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]+ and be at most 128 bytes"
    )]
    InvalidId { id: String },
    /// The spec has an empty argument list.
    #[error("no command given")]
    EmptyCommand,
    /// A string that must reach the kernel contains a NUL byte.
    #[error("{what} {value:?} contains a NUL byte")]
    NulByte { what: &'static str, value: String },
    /// A path inside the container that must be absolute is not.
    #[error("{what} {path:?} must be an absolute path")]
    RelativePath { what: &'static str, path: String },
    /// The rootfs is missing or is not a directory.
    #[error("rootfs {path} is not a directory")]
    RootfsNotDirectory { path: PathBuf },
    /// `/proc`, `/sys` or `/dev` in the rootfs is a symlink (or not a directory).
    #[error("/{name} in the rootfs must be mounted on ordinary directory")]
    SystemDirNotOrdinary { name: &'static str },
    /// A resource limit was asked for but the cgroup controller is not available.
    #[error("cannot apply the {limit} limit: cgroup controller {controller} is not available")]
    ControllerUnavailable {
        limit: &'static str,
        controller: &'static str,
    },
    /// A `user` field could not be resolved against the rootfs's own `/etc/passwd` and `/etc/group`.
    #[error(transparent)]
    User(#[from] crate::user::UserError),
    /// An operation on the host failed; `action` says which.
    #[error("{action}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    /// A setup step inside the new namespaces failed before the command was started.
    #[error("sandbox setup failed while {step}")]
    Setup {
        step: String,
        #[source]
        source: io::Error,
    },
    /// The command could not be found in the container's `PATH`.
    #[error("{program:?}: executable file not found in $PATH")]
    ExecutableNotFound { program: String },
    /// The command could not be executed.
    #[error("cannot execute {program:?}")]
    Exec {
        program: String,
        #[source]
        source: io::Error,
    },
    /// The working directory resolved outside the container root.
    #[error("working directory {cwd:?} is outside the container root")]
    WorkdirOutsideRoot { cwd: String },
    /// The sandbox ran longer than its timeout and was killed.
    #[error("sandbox timed out after {after:?} and was killed")]
    TimedOut { after: Duration },
}

impl SandboxError {
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Self {
        SandboxError::Io {
            action: action.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = SandboxError> = std::result::Result<T, E>;
