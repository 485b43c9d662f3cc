//! RUN: the input snapshot prepared as an overlay, the command run in the sandbox with the
//! step's mounts, and the upper committed as the step's snapshot.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use kiln_frontend::dag::{self, ExecOp, MountKind, NetworkMode, SecurityMode};
use kiln_runner::{Mount, Network, Outcome, SandboxSpec, Stream, WaitOptions};
use kiln_snapshotter::CommitOptions;
use kiln_solver::{ExecContext, LogStream, WorkerError};
use kiln_types::Digest;

use crate::build::{BuildError, BuildWorker};
use crate::value::Value;

/// BuildKit's hostname for RUN steps.
pub const BUILD_HOSTNAME: &str = "buildkitsandbox";

/// Things that must stay alive (mounted, locked) while the command runs.
#[derive(Default)]
struct Holds {
    views: Vec<kiln_snapshotter::SnapshotView>,
    actives: Vec<kiln_snapshotter::ActiveSnapshot>,
    temps: Vec<tempfile::TempDir>,
    locks: Vec<tokio::sync::OwnedMutexGuard<()>>,
    files: Vec<std::fs::File>,
}

/// Runs an exec op and returns its root output.
pub async fn run(
    worker: &BuildWorker,
    exec: &ExecOp,
    inputs: &[Value],
    context: &ExecContext,
) -> Result<Value, WorkerError> {
    let root_mount = exec
        .mounts
        .iter()
        .find(|mount| mount.dest == "/")
        .ok_or_else(|| BuildError::Other("exec op without a root mount".into()))?;
    let root_top = match root_mount
        .input
        .and_then(|index| inputs.get(index as usize))
    {
        Some(Value::Snapshot { top }) => top.clone(),
        None => None,
        Some(Value::Context { .. }) => {
            return Err(BuildError::Other("RUN cannot run on the build context".into()).into())
        }
    };
    if exec.security == SecurityMode::Insecure && !worker.settings.allow_insecure {
        return Err(BuildError::InsecureNotAllowed.into());
    }
    let snapshotter = worker.store.snapshotter();
    let active =
        tokio::task::block_in_place(|| snapshotter.prepare(&worker.lease, root_top.as_ref()))
            .map_err(|source| BuildError::Store {
                operation: "preparing the RUN snapshot".into(),
                source,
            })?;

    let mut holds = Holds::default();
    let mut spec = SandboxSpec::new(active.mountpoint(), exec.args.clone());
    spec.env = exec.env.clone();
    spec.env.extend(exec.proxy_env.iter().cloned());
    for secret in &exec.secret_env {
        match worker.settings.secrets.get(&secret.id) {
            Some(value) => spec.env.push(format!(
                "{}={}",
                secret.name,
                String::from_utf8_lossy(value)
            )),
            None if secret.required => {
                return Err(BuildError::MissingSecret {
                    id: secret.id.clone(),
                }
                .into())
            }
            None => {}
        }
    }
    spec.cwd = if exec.cwd.is_empty() {
        "/".into()
    } else {
        exec.cwd.clone()
    };
    spec.user = (!exec.user.is_empty()).then(|| exec.user.clone());
    spec.hostname = exec
        .hostname
        .clone()
        .unwrap_or_else(|| BUILD_HOSTNAME.to_string());
    spec.network = match exec.network {
        NetworkMode::Default => worker.settings.default_network,
        NetworkMode::None => Network::None,
        NetworkMode::Host => Network::Host,
    };
    if exec.security == SecurityMode::Insecure {
        spec.capabilities = u64::MAX;
    }
    for mount in exec.mounts.iter().filter(|mount| mount.dest != "/") {
        if let Some(runner_mount) = prepare_mount(worker, mount, inputs, &mut holds).await? {
            spec.mounts.push(runner_mount);
        }
    }

    let status = run_sandbox(worker, spec, context).await;
    drop(holds);
    let status = match status {
        Ok(status) => status,
        Err(error) => {
            let _ = tokio::task::block_in_place(|| snapshotter.remove(active));
            return Err(error);
        }
    };
    if !status.success() {
        let _ = tokio::task::block_in_place(|| snapshotter.remove(active));
        let outcome = match status.outcome {
            Outcome::Exited(code) if status.oom_killed => {
                format!("exit code: {code} (out of memory)")
            }
            Outcome::Exited(code) => format!("exit code: {code}"),
            Outcome::Signaled(signal) => format!("killed by signal {signal}"),
        };
        return Err(BuildError::ProcessFailed {
            command: display_command(exec),
            outcome,
        }
        .into());
    }
    tokio::task::block_in_place(|| prune_copy_ups(&active.upper_dir(), active.lower_dirs()))?;
    let id = tokio::task::block_in_place(|| snapshotter.commit(active, CommitOptions::default()))
        .map_err(|source| BuildError::Store {
        operation: "committing the RUN snapshot".into(),
        source,
    })?;
    Ok(Value::snapshot(id))
}

/// The command as BuildKit's error message shows it.
fn display_command(exec: &ExecOp) -> String {
    exec.args.join(" ")
}

async fn run_sandbox(
    worker: &BuildWorker,
    spec: SandboxSpec,
    context: &ExecContext,
) -> Result<kiln_runner::ExitStatus, WorkerError> {
    let mut running = worker.sandbox.spawn(spec)?;
    let killer = running.killer();
    let log_context = context.clone();
    let mut waiter = tokio::task::spawn_blocking(move || {
        running.wait_with_output(WaitOptions::default(), |stream, data| {
            let stream = match stream {
                Stream::Stderr => LogStream::Stderr,
                Stream::Stdout | Stream::Tty => LogStream::Stdout,
            };
            log_context.log(stream, data);
        })
    });
    tokio::select! {
        result = &mut waiter => Ok(result??),
        () = context.cancel.cancelled() => {
            let _ = killer.kill();
            let _ = waiter.await;
            Err("canceled".into())
        }
    }
}

/// Turns one of the op's mounts into a sandbox mount, keeping what it needs alive in `holds`.
async fn prepare_mount(
    worker: &BuildWorker,
    mount: &dag::Mount,
    inputs: &[Value],
    holds: &mut Holds,
) -> Result<Option<Mount>, WorkerError> {
    let input = mount.input.and_then(|index| inputs.get(index as usize));
    let kind = match &mount.kind {
        MountKind::Bind => {
            let source = match input {
                Some(value) => input_path(worker, value, &mount.selector, !mount.readonly, holds)?,
                None => empty_dir(holds)?,
            };
            // Writes to a read-write bind without output are discarded: the source is a
            // throwaway overlay (or the context, which is mounted read-only regardless).
            let readonly = mount.readonly || matches!(input, Some(Value::Context { .. }));
            Mount {
                target: mount.dest.clone(),
                kind: bind_mount(source, readonly),
            }
        }
        MountKind::Cache(cache) => {
            let path = cache_mount_dir(worker, cache, input, &mount.selector, holds).await?;
            Mount {
                target: mount.dest.clone(),
                kind: bind_mount(path, false),
            }
        }
        MountKind::Tmpfs { size } => Mount {
            target: mount.dest.clone(),
            kind: kiln_runner::MountKind::Tmpfs {
                size_bytes: (*size > 0).then_some(*size),
                mode: 0o1777,
            },
        },
        MountKind::Secret(secret) => match worker.settings.secrets.get(&secret.id) {
            Some(contents) => Mount {
                target: mount.dest.clone(),
                kind: kiln_runner::MountKind::File {
                    contents: contents.clone(),
                    mode: secret.mode,
                    uid: secret.uid,
                    gid: secret.gid,
                },
            },
            None if secret.required => {
                return Err(BuildError::MissingSecret {
                    id: secret.id.clone(),
                }
                .into())
            }
            None => return Ok(None),
        },
        MountKind::Ssh(ssh) => match worker.settings.ssh_agents.get(&ssh.id) {
            Some(socket) => Mount {
                target: mount.dest.clone(),
                kind: bind_mount(socket.clone(), false),
            },
            None if ssh.required => {
                return Err(BuildError::MissingSsh { id: ssh.id.clone() }.into())
            }
            None => return Ok(None),
        },
    };
    Ok(Some(kind))
}

fn bind_mount(source: PathBuf, readonly: bool) -> kiln_runner::MountKind {
    kiln_runner::MountKind::Bind { source, readonly }
}

fn empty_dir(holds: &mut Holds) -> Result<PathBuf, WorkerError> {
    let temp = tempfile::tempdir()?;
    let path = temp.path().to_path_buf();
    holds.temps.push(temp);
    Ok(path)
}

/// The host path of `selector` inside an input, mounted as needed.
fn input_path(
    worker: &BuildWorker,
    value: &Value,
    selector: &str,
    writable: bool,
    holds: &mut Holds,
) -> Result<PathBuf, WorkerError> {
    let snapshotter = worker.store.snapshotter();
    let base = match value {
        Value::Context { dir, .. } => dir.clone(),
        Value::Snapshot { top: None } => empty_dir(holds)?,
        Value::Snapshot { top: Some(top) } if writable => {
            let active =
                tokio::task::block_in_place(|| snapshotter.prepare(&worker.lease, Some(top)))
                    .map_err(|source| BuildError::Store {
                        operation: "preparing a bind mount".into(),
                        source,
                    })?;
            let path = active.mountpoint();
            holds.actives.push(active);
            path
        }
        Value::Snapshot { top: Some(top) } => {
            let view = tokio::task::block_in_place(|| snapshotter.view(&worker.lease, top))
                .map_err(|source| BuildError::Store {
                    operation: "mounting a bind source".into(),
                    source,
                })?;
            let path = view.mountpoint().to_path_buf();
            holds.views.push(view);
            path
        }
    };
    resolve_inside(&base, selector)
}

/// Resolves `path` inside `root`, following symlinks only within it (as a chroot would).
pub(crate) fn resolve_inside(root: &Path, path: &str) -> Result<PathBuf, WorkerError> {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<String> = Path::new(path)
        .components()
        .filter_map(|component| match component {
            Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        match std::fs::symlink_metadata(root.join(&candidate)) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!("too many levels of symbolic links in {path}").into());
                }
                let target = std::fs::read_link(root.join(&candidate))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for component in target.components().rev() {
                    match component {
                        Component::Normal(part) => {
                            pending.push(part.to_string_lossy().into_owned())
                        }
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The store's id of the cache mount a Dockerfile names `id` (hashed: any text is a valid
/// cache id, not every text is a valid directory name).
pub fn cache_mount_store_id(id: &str) -> String {
    format!("c{}", &Digest::of_bytes(id.as_bytes()).hex()[..31])
}

/// The directory of a cache mount, honouring its sharing mode.
async fn cache_mount_dir(
    worker: &BuildWorker,
    cache: &dag::CacheMount,
    input: Option<&Value>,
    selector: &str,
    holds: &mut Holds,
) -> Result<PathBuf, WorkerError> {
    let store_id = cache_mount_store_id(&cache.id);
    let path = tokio::task::block_in_place(|| worker.store.cache_mount(&worker.lease, &store_id))
        .map_err(|source| BuildError::Store {
        operation: format!("opening cache mount {:?}", cache.id),
        source,
    })?;
    match cache.sharing {
        dag::CacheSharing::Shared => {}
        dag::CacheSharing::Locked => {
            // One build at a time, in this process and in others.
            let lock = worker.cache_mount_lock(&store_id).lock_owned().await;
            holds.locks.push(lock);
            let file = lock_file(&path, true)?;
            holds
                .files
                .push(file.expect("blocking lock always returns a file"));
        }
        dag::CacheSharing::Private => {
            // Busy elsewhere: this RUN gets a fresh, private directory instead.
            match lock_file(&path, false)? {
                Some(file) => holds.files.push(file),
                None => return empty_dir(holds),
            }
        }
    }
    let dir = path.join("data");
    if !dir.exists() {
        crate::remote_cache::restore_cache_mount(worker, &store_id, &path).await;
    }
    if !dir.exists() {
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        if let Some(value) = input {
            let source = input_path(worker, value, selector, false, holds)?;
            seed_cache(&source, &dir)?;
        }
    }
    Ok(dir)
}

fn seed_cache(source: &Path, dir: &Path) -> Result<(), WorkerError> {
    if !source.is_dir() {
        return Ok(());
    }
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", source.display()))
        .arg(dir)
        .status()?;
    if !status.success() {
        return Err(format!("seeding cache mount from {} failed", source.display()).into());
    }
    Ok(())
}

/// Takes an exclusive `flock` on `<dir>.lock`; `None` if not blocking and busy.
fn lock_file(dir: &Path, block: bool) -> Result<Option<std::fs::File>, WorkerError> {
    use std::os::fd::AsRawFd;
    let lock_path = dir.with_extension("lock");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    let flags = if block {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    let result = tokio::task::block_in_place(|| {
        // SAFETY: flock on an fd we own
        unsafe { libc::flock(file.as_raw_fd(), flags) }
    });
    if result != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(error.into());
    }
    let _ = file.flush();
    Ok(Some(file))
}

/// Removes from a RUN's upper the directories overlayfs only copied up (a mount-point stub
/// made inside them and removed again): same mode, owner and times as below, not opaque, and
/// nothing left inside. Without this every RUN layer would carry `/etc` (BuildKit's differ
/// skips such directories too).
fn prune_copy_ups(upper: &Path, lowers: &[PathBuf]) -> Result<(), WorkerError> {
    prune_directory(upper, Path::new(""), lowers)?;
    Ok(())
}

/// Prunes below `relative`; returns whether the directory itself is now empty.
fn prune_directory(upper: &Path, relative: &Path, lowers: &[PathBuf]) -> Result<bool, WorkerError> {
    use std::os::unix::fs::MetadataExt;
    let directory = upper.join(relative);
    let mut empty = true;
    for entry in std::fs::read_dir(&directory)? {
        let entry = entry?;
        let child = relative.join(entry.file_name());
        let metadata = entry.metadata()?;
        if !metadata.is_dir() {
            empty = false;
            continue;
        }
        if !prune_directory(upper, &child, lowers)? || is_opaque(&upper.join(&child)) {
            empty = false;
            continue;
        }
        let Some(lower) = lowers
            .iter()
            .map(|lower| lower.join(&child))
            .find(|path| path.symlink_metadata().is_ok())
        else {
            empty = false;
            continue;
        };
        let Ok(below) = lower.symlink_metadata() else {
            empty = false;
            continue;
        };
        let same = below.is_dir()
            && below.mode() == metadata.mode()
            && below.uid() == metadata.uid()
            && below.gid() == metadata.gid()
            && below.mtime() == metadata.mtime()
            && below.mtime_nsec() == metadata.mtime_nsec();
        if same {
            std::fs::remove_dir(upper.join(&child))?;
        } else {
            empty = false;
        }
    }
    Ok(empty)
}

fn is_opaque(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    let mut value = [0u8; 4];
    for attribute in [
        &b"trusted.overlay.opaque\0"[..],
        &b"user.overlay.opaque\0"[..],
    ] {
        // SAFETY: lgetxattr into a stack buffer with NUL-terminated names
        let read = unsafe {
            libc::lgetxattr(
                name.as_ptr(),
                attribute.as_ptr().cast(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if read > 0 {
            return true;
        }
    }
    false
}
