//! The parent side: prepare everything, clone, place the child in its cgroups, wait, tear down.

use std::ffi::{c_char, c_int, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cgroup::{CgroupManager, CgroupMode, SandboxCgroup};
use crate::child::{self, ChildPlan, PlannedKind, PlannedMount, Stage, StubStep, ERROR_RECORD_LEN};
use crate::spec::*;
use crate::state::{self, StateDirectory, StateRecord, Stub};
use crate::user::{resolve_user, ResolvedUser};
use crate::{Result, SandboxError};

/// Docker's default capability set: CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID, SETUID,
/// SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPABILITIES: u64 = 0xa804_25fb;

/// Largest file read from the image for user lookup.
const MAX_ID_FILE_BYTES: u64 = 16 << 20;

/// Settings shared by all sandboxes of one kiln process.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where per-sandbox state lives (`<root>/run`); created mode 0700.
    pub state_dir: PathBuf,
    /// How cgroups are found.
    pub cgroups: CgroupMode,
}

/// Starts sandboxes. Cheap to share (`&Sandbox` from many threads).
#[derive(Debug)]
pub struct Sandbox {
    state_dir: PathBuf,
    cgroups: CgroupManager,
    last_capability: u32,
}

struct CloneRequest {
    plan: *const ChildPlan,
    flags: u64,
    /// A v2 cgroup directory to start the child in (`CLONE_INTO_CGROUP`), or -1.
    cgroup: RawFd,
    reply: mpsc::SyncSender<io::Result<Cloned>>,
}

/// A started child: its pid, its pidfd, and whether it was born in the requested cgroup.
struct Cloned {
    pid: i32,
    pidfd: OwnedFd,
    in_cgroup: bool,
}

/// `clone3` flag: start the child in the cgroup2 directory given by `clone_args.cgroup`
/// (Linux 5.7); libc's constant is not usable on every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

// SAFETY: the plan pointer stays valid until the reply is received; the spawner thread only reads it
unsafe impl Send for CloneRequest {}

/// The thread that performs every clone. It lives as long as the process, so the children's
/// `PR_SET_PDEATHSIG` (which fires when the *thread* that cloned them exits) only fires when kiln
/// itself dies.
fn spawner() -> &'static Mutex<mpsc::Sender<CloneRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<CloneRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel::<CloneRequest>();
        let spawned = std::thread::Builder::new()
            .name("kiln-sandbox-spawner".to_owned())
            .spawn(move || {
                while let Ok(request) = receiver.recv() {
                    // SAFETY: the plan is alive (its owner blocks on the reply)
                    let result =
                        unsafe { clone_child(request.plan, request.flags, request.cgroup) };
                    let _ = request.reply.send(result);
                }
            });
        if let Err(error) = spawned {
            // without a spawner every request fails with this error below (channel closed)
            drop(error);
        }
        Mutex::new(sender)
    })
}

/// clone3 into new namespaces (and into the cgroup `cgroup` when it is an fd); the child runs
/// `init_main` and never returns here. A kernel that refuses `CLONE_INTO_CGROUP` (before 5.7, or
/// a cgroup it cannot start a process in) gets a plain clone; the caller then moves the child.
unsafe fn clone_child(plan: *const ChildPlan, flags: u64, cgroup: RawFd) -> io::Result<Cloned> {
    if cgroup >= 0 {
        // SAFETY: as below
        if let Ok((pid, pidfd)) = unsafe { clone3(plan, flags | CLONE_INTO_CGROUP, cgroup) } {
            return Ok(Cloned {
                pid,
                pidfd,
                in_cgroup: true,
            });
        }
    }
    // SAFETY: as below
    let (pid, pidfd) = unsafe { clone3(plan, flags, -1) }?;
    Ok(Cloned {
        pid,
        pidfd,
        in_cgroup: false,
    })
}

unsafe fn clone3(plan: *const ChildPlan, flags: u64, cgroup: RawFd) -> io::Result<(i32, OwnedFd)> {
    let mut pidfd: c_int = -1;
    // SAFETY: clone_args is plain data
    let mut arguments: libc::clone_args = unsafe { std::mem::zeroed() };
    arguments.flags = flags | libc::CLONE_PIDFD as u64;
    arguments.pidfd = &mut pidfd as *mut c_int as u64;
    arguments.exit_signal = libc::SIGCHLD as u64;
    if cgroup >= 0 {
        arguments.cgroup = cgroup as u64;
    }
    // SAFETY: fork-like clone3 (no stack given); the child only runs raw syscalls on `plan`
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut arguments as *mut libc::clone_args,
            std::mem::size_of::<libc::clone_args>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: we are the fresh child
        unsafe { child::init_main(&*plan) }
    }
    // SAFETY: the kernel gave us this pidfd
    Ok((pid as i32, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

fn cstring(what: &'static str, value: &str) -> Result<CString> {
    CString::new(value).map_err(|_| SandboxError::NulByte {
        what,
        value: value.to_owned(),
    })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    // SAFETY: getrandom into a stack buffer
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..12]
            .copy_from_slice(&(nanos ^ ((std::process::id() as u128) << 64)).to_le_bytes()[..12]);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a sandbox id: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most 128 bytes.
pub fn validate_id(id: &str) -> Result<()> {
    let bytes = id.as_bytes();
    let valid = bytes.len() >= 2
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(SandboxError::InvalidId { id: id.to_owned() })
    }
}

/// Splits an absolute container path into clean components (`..` clamped at the root).
fn container_components(what: &'static str, path: &str) -> Result<Vec<String>> {
    if !path.starts_with('/') {
        return Err(SandboxError::RelativePath {
            what,
            path: path.to_owned(),
        });
    }
    if path.contains('\0') {
        return Err(SandboxError::NulByte {
            what,
            value: path.to_owned(),
        });
    }
    let mut components: Vec<String> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            other => components.push(other.to_owned()),
        }
    }
    Ok(components)
}

fn read_in_root(root: &OwnedFd, relative: &str) -> Result<Option<String>> {
    match state::open_beneath(root, relative, libc::O_RDONLY) {
        Ok(fd) => {
            let mut text = Vec::new();
            File::from(fd)
                .take(MAX_ID_FILE_BYTES)
                .read_to_end(&mut text)
                .map_err(|e| SandboxError::io(format!("reading /{relative} in the rootfs"), e))?;
            Ok(Some(String::from_utf8_lossy(&text).into_owned()))
        }
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOTDIR)
            ) =>
        {
            Ok(None)
        }
        Err(error) => Err(SandboxError::io(
            format!("opening /{relative} in the rootfs"),
            error,
        )),
    }
}

/// Stubs made by live sandboxes of this process, keyed by (rootfs, path), with their user count
/// and the times to restore on their parent. Two sandboxes on the same rootfs share a stub; it is
/// removed when the last one ends (deleting a mount point in one mount namespace would unmount
/// it in the others).
type StubRegistry = std::collections::HashMap<(PathBuf, String), (usize, Option<[i64; 4]>)>;

fn stub_registry() -> &'static Mutex<StubRegistry> {
    static REGISTRY: OnceLock<Mutex<StubRegistry>> = OnceLock::new();
    REGISTRY.get_or_init(|| Mutex::new(StubRegistry::new()))
}

/// Creates the missing components of a mount target inside the rootfs (from the host side, so
/// that symlinks, dangling ones included, are followed *inside* the root as the container would
/// see them) and records every entry it created, by its resolved path, for the cleanup.
fn create_in_root(
    root: &OwnedFd,
    rootfs: &Path,
    registry: &mut StubRegistry,
    components: &[String],
    last_is_dir: bool,
    created: &mut Vec<Stub>,
) -> Result<()> {
    let mut races = 0;
    let mut resolved: Vec<String> = Vec::new();
    let mut pending: std::collections::VecDeque<String> = components.iter().cloned().collect();
    let mut links_followed = 0;
    let display = format!("/{}", components.join("/"));
    let failure =
        |error: io::Error| SandboxError::io(format!("creating mount point {display}"), error);
    while let Some(component) = pending.pop_front() {
        match component.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let parent_path = if resolved.is_empty() {
            ".".to_owned()
        } else {
            resolved.join("/")
        };
        let parent = state::open_beneath(root, &parent_path, libc::O_PATH | libc::O_DIRECTORY)
            .map_err(failure)?;
        let name = cstring("mount target", &component)?;
        // SAFETY: fstatat relative to a directory fd, not following the last component
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        let found = unsafe {
            libc::fstatat(
                parent.as_raw_fd(),
                name.as_ptr(),
                &mut stat,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if found == 0 {
            if stat.st_mode & libc::S_IFMT == libc::S_IFLNK {
                links_followed += 1;
                if links_followed > 40 {
                    return Err(failure(io::Error::from_raw_os_error(libc::ELOOP)));
                }
                let mut target = vec![0u8; 4096];
                // SAFETY: readlinkat into a buffer of the given size
                let length = unsafe {
                    libc::readlinkat(
                        parent.as_raw_fd(),
                        name.as_ptr(),
                        target.as_mut_ptr().cast(),
                        target.len(),
                    )
                };
                if length < 0 {
                    return Err(failure(io::Error::last_os_error()));
                }
                target.truncate(length as usize);
                let target = String::from_utf8_lossy(&target).into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for part in target.split('/').rev() {
                    pending.push_front(part.to_owned());
                }
                continue;
            }
            resolved.push(component);
            // a stub another live sandbox made: share it (removed when the last user is done)
            let path = resolved.join("/");
            let key = (rootfs.to_path_buf(), path.clone());
            if !created.iter().any(|stub| stub.path == path) {
                if let Some((users, parent_times)) = registry.get_mut(&key) {
                    *users += 1;
                    created.push(Stub {
                        path,
                        parent_times: *parent_times,
                    });
                }
            }
            continue;
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ENOENT) {
            return Err(failure(error));
        }
        let make_file = pending.is_empty() && !last_is_dir;
        let parent_is_ours = created.iter().any(|stub| stub.path == parent_path);
        let parent_times = if parent_is_ours {
            None
        } else {
            // SAFETY: fstat of an O_PATH fd into a local
            let mut parent_stat: libc::stat = unsafe { std::mem::zeroed() };
            if unsafe { libc::fstat(parent.as_raw_fd(), &mut parent_stat) } == 0 {
                Some([
                    parent_stat.st_atime,
                    parent_stat.st_atime_nsec,
                    parent_stat.st_mtime,
                    parent_stat.st_mtime_nsec,
                ])
            } else {
                None
            }
        };
        // SAFETY: creating one entry inside a directory fd resolved inside the root
        let result = unsafe {
            if make_file {
                let fd = libc::openat(
                    parent.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o644,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
                fd
            } else {
                libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), 0o755)
            }
        };
        if result < 0 {
            let error = io::Error::last_os_error();
            // made by someone else meanwhile: look again
            if error.raw_os_error() == Some(libc::EEXIST) && races < 10 {
                races += 1;
                pending.push_front(component);
                continue;
            }
            return Err(failure(error));
        }
        resolved.push(component);
        let path = resolved.join("/");
        registry.insert((rootfs.to_path_buf(), path.clone()), (1, parent_times));
        created.push(Stub { path, parent_times });
    }
    Ok(())
}

fn stub_steps(components: &[String]) -> Result<Vec<StubStep>> {
    let mut steps = Vec::with_capacity(components.len());
    for depth in 1..=components.len() {
        let parent = if depth == 1 {
            ".".to_owned()
        } else {
            components[..depth - 1].join("/")
        };
        steps.push(StubStep {
            path: cstring("mount target", &components[..depth].join("/"))?,
            parent: cstring("mount target", &parent)?,
            name: cstring("mount target", &components[depth - 1])?,
        });
    }
    Ok(steps)
}

/// Docker's 1048576, unless this process may not raise its hard limit that far (no
/// `CAP_SYS_RESOURCE`, as on some CI machines): then the current hard limit.
fn default_nofile_limit() -> u64 {
    const CAP_SYS_RESOURCE: u32 = 24;
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit into a local
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } < 0
        || current.rlim_max >= DEFAULT_NOFILE_LIMIT
    {
        return DEFAULT_NOFILE_LIMIT;
    }
    let effective = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0);
    if effective & (1 << CAP_SYS_RESOURCE) != 0 {
        DEFAULT_NOFILE_LIMIT
    } else {
        current.rlim_max
    }
}

fn env_value<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find_map(|entry| entry.strip_prefix(key)?.strip_prefix('='))
}

fn exec_candidates(program: &str, path: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    path.split(':')
        .map(|directory| {
            let directory = if directory.is_empty() { "." } else { directory };
            format!("{}/{program}", directory.trim_end_matches('/'))
        })
        .collect()
}

/// Everything allocated for one sandbox that must be undone; dropping it undoes it.
struct Resources {
    state: StateDirectory,
    record: StateRecord,
    cgroup: Option<SandboxCgroup>,
}

impl Resources {
    fn teardown(&mut self) -> io::Result<()> {
        let mut first_error = None;
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(error) = cgroup.remove() {
                first_error.get_or_insert(error);
            }
        }
        if !self.record.stubs.is_empty() {
            let mut registry = stub_registry()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut unused = Vec::new();
            for stub in &self.record.stubs {
                let key = (self.record.rootfs.clone(), stub.path.clone());
                match registry.get_mut(&key) {
                    Some((users, _)) if *users > 1 => *users -= 1,
                    Some(_) => {
                        registry.remove(&key);
                        unused.push(stub.clone());
                    }
                    None => unused.push(stub.clone()),
                }
            }
            if let Err(error) = state::remove_stubs(&self.record.rootfs, &unused) {
                first_error.get_or_insert(error);
            }
        }
        self.record.stubs.clear();
        if let Err(error) = self.state.remove() {
            first_error.get_or_insert(error);
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}

impl Sandbox {
    /// Creates the state directory and detects cgroups.
    pub fn new(config: SandboxConfig) -> Result<Sandbox> {
        state::create_private_dir(&config.state_dir).map_err(|e| {
            SandboxError::io(
                format!("creating state directory {}", config.state_dir.display()),
                e,
            )
        })?;
        let cgroups = CgroupManager::new(&config.cgroups)
            .map_err(|e| SandboxError::io("detecting cgroups", e))?;
        let last_capability = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(40);
        Ok(Sandbox {
            state_dir: config.state_dir,
            cgroups,
            last_capability,
        })
    }

    /// The cgroup version in use: "v1", "v2" or "disabled".
    pub fn cgroup_version(&self) -> &'static str {
        self.cgroups.version()
    }

    /// Cleans sandboxes left by killed kiln processes (see [`crate::cleanup_stale`]).
    pub fn cleanup_stale(&self) -> Result<Vec<String>> {
        state::cleanup_stale(&self.state_dir)
            .map_err(|e| SandboxError::io("cleaning stale sandboxes", e))
    }

    /// Runs a spec to the end, streaming output to `on_output` as it comes.
    pub fn run(
        &self,
        spec: SandboxSpec,
        options: WaitOptions,
        on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus> {
        let mut running = self.spawn(spec)?;
        running.wait_with_output(options, on_output)
    }

    /// Starts the command. Returns once it is executing (or with the setup error).
    pub fn spawn(&self, mut spec: SandboxSpec) -> Result<RunningSandbox> {
        let id = match spec.id.take() {
            Some(id) => {
                validate_id(&id)?;
                id
            }
            None => random_id(),
        };
        if spec.args.is_empty() {
            return Err(SandboxError::EmptyCommand);
        }
        let workdir_components = container_components("working directory", &spec.cwd)?;
        let rootfs_c = cstring("rootfs", &spec.rootfs.to_string_lossy())?;
        let root: OwnedFd = File::open(&spec.rootfs)
            .ok()
            .filter(|file| file.metadata().map(|m| m.is_dir()).unwrap_or(false))
            .ok_or_else(|| SandboxError::RootfsNotDirectory {
                path: spec.rootfs.clone(),
            })?
            .into();
        for name in ["proc", "sys", "dev"] {
            if let Ok(metadata) = std::fs::symlink_metadata(spec.rootfs.join(name)) {
                if !metadata.is_dir() {
                    return Err(SandboxError::SystemDirNotOrdinary { name });
                }
            }
        }

        // identity and environment
        let passwd = read_in_root(&root, "etc/passwd")?;
        let group = read_in_root(&root, "etc/group")?;
        let user: ResolvedUser =
            resolve_user(spec.user.as_deref(), passwd.as_deref(), group.as_deref())?;
        let mut env = spec.env.clone();
        if env_value(&env, "PATH").is_none() {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if env_value(&env, "HOME").is_none() {
            env.push(format!("HOME={}", user.home));
        }
        let search_path = env_value(&env, "PATH").unwrap_or(DEFAULT_PATH).to_owned();

        // state directory first, so that a crash from here on leaves a record
        let state_directory = StateDirectory::create(&self.state_dir, &id)
            .map_err(|e| SandboxError::io(format!("creating state for sandbox {id}"), e))?;
        let mut resources = Resources {
            state: state_directory,
            record: StateRecord {
                id: id.clone(),
                rootfs: spec.rootfs.clone(),
                stubs: Vec::new(),
                cgroups: self.cgroups.planned_directories(&id),
            },
            cgroup: None,
        };

        // the mount plan: system mounts, network files, caller mounts
        let mut child_side: Vec<OwnedFd> = Vec::new();
        let mut mounts: Vec<PlannedMount> = Vec::new();
        let mut stubs: Vec<Stub> = Vec::new();
        let mut registry = stub_registry()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let planning = (|| -> Result<()> {
            let mut add_mount = |target: &str,
                                 target_is_dir: bool,
                                 no_symlinks: bool,
                                 kind: PlannedKind,
                                 stubs: &mut Vec<Stub>|
             -> Result<()> {
                let components = container_components("mount target", target)?;
                if components.is_empty() {
                    return Err(SandboxError::RelativePath {
                        what: "mount target (not the root itself)",
                        path: target.to_owned(),
                    });
                }
                create_in_root(
                    &root,
                    &spec.rootfs,
                    &mut registry,
                    &components,
                    target_is_dir,
                    stubs,
                )?;
                mounts.push(PlannedMount {
                    steps: stub_steps(&components)?,
                    target_is_dir,
                    no_symlinks,
                    kind,
                });
                Ok(())
            };
            add_mount("/proc", true, true, PlannedKind::Proc, &mut stubs)?;
            add_mount("/dev", true, true, PlannedKind::Dev, &mut stubs)?;
            add_mount("/sys", true, true, PlannedKind::Sys, &mut stubs)?;

            let hosts = match (&spec.network_files.hosts, spec.network) {
                (Some(hosts), _) => hosts.clone(),
                (None, Network::Host) => std::fs::read("/etc/hosts").unwrap_or_default(),
                (None, _) => format!(
                    "127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                    hostname = spec.hostname
                )
                .into_bytes(),
            };
            let resolv_conf = match &spec.network_files.resolv_conf {
                Some(contents) => contents.clone(),
                None => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
            };
            let hostname_file = format!("{}\n", spec.hostname).into_bytes();
            // file mounts are written by the child into a tmpfs of its own (never on disk)
            let files_dir = resources.state.path().join("files");
            let mut file_count = 0usize;
            let mut file_mount =
                |contents: &[u8], mode: u32, owner: (u32, u32)| -> Result<PlannedKind> {
                    file_count += 1;
                    let source = files_dir.join(file_count.to_string());
                    Ok(PlannedKind::File {
                        source: cstring("file mount source", &source.to_string_lossy())?,
                        contents: contents.to_vec(),
                        mode,
                        uid: owner.0,
                        gid: owner.1,
                    })
                };
            for (target, contents) in [
                ("/etc/hostname", &hostname_file),
                ("/etc/hosts", &hosts),
                ("/etc/resolv.conf", &resolv_conf),
            ] {
                let kind = file_mount(contents, 0o644, (0, 0))?;
                add_mount(target, false, false, kind, &mut stubs)?;
            }
            for mount in &spec.mounts {
                match &mount.kind {
                    MountKind::Bind { source, readonly } => {
                        let metadata = std::fs::metadata(source).map_err(|e| {
                            SandboxError::io(
                                format!("opening bind mount source {}", source.display()),
                                e,
                            )
                        })?;
                        let source_c = cstring("bind mount source", &source.to_string_lossy())?;
                        add_mount(
                            &mount.target,
                            metadata.is_dir(),
                            false,
                            PlannedKind::Bind {
                                source: source_c,
                                readonly: *readonly,
                            },
                            &mut stubs,
                        )?;
                    }
                    MountKind::Tmpfs { size_bytes, mode } => {
                        let mut data = format!("mode={:o}", mode & 0o7777);
                        if let Some(size) = size_bytes {
                            data.push_str(&format!(",size={size}"));
                        }
                        add_mount(
                            &mount.target,
                            true,
                            false,
                            PlannedKind::Tmpfs {
                                data: cstring("tmpfs options", &data)?,
                            },
                            &mut stubs,
                        )?;
                    }
                    MountKind::File {
                        contents,
                        mode,
                        uid,
                        gid,
                    } => {
                        let kind = file_mount(contents, *mode, (*uid, *gid))?;
                        add_mount(&mount.target, false, false, kind, &mut stubs)?;
                    }
                }
            }
            Ok(())
        })();
        drop(registry);
        // record the stubs made so far even when planning failed, so they are removed
        resources.record.stubs = stubs;
        planning?;
        resources
            .state
            .write_record(&resources.record)
            .map_err(|e| SandboxError::io("writing sandbox state", e))?;
        resources.cgroup = Some(self.cgroups.create(&id, &spec.limits)?);

        // pipes and stdio
        let (sync_read, sync_write) = pipe().map_err(|e| SandboxError::io("creating a pipe", e))?;
        let (error_read, error_write) =
            pipe().map_err(|e| SandboxError::io("creating a pipe", e))?;
        let (status_read, status_write) =
            pipe().map_err(|e| SandboxError::io("creating a pipe", e))?;
        let mut stdio_fds: [c_int; 3] = [-1; 3];
        let mut parent_ends: [Option<File>; 3] = [None, None, None];
        let mut pty_sockets: Option<(OwnedFd, OwnedFd)> = None;
        if spec.tty.is_some() {
            let mut fds = [0; 2];
            // SAFETY: socketpair fills two fds
            if unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            } < 0
            {
                return Err(SandboxError::io(
                    "creating a socket pair",
                    io::Error::last_os_error(),
                ));
            }
            // SAFETY: fresh fds
            pty_sockets =
                Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) });
        }
        let streams = [
            std::mem::take(&mut spec.stdin),
            std::mem::take(&mut spec.stdout),
            std::mem::take(&mut spec.stderr),
        ];
        for (index, stream) in streams.into_iter().enumerate() {
            let child_end: OwnedFd = match stream {
                Stdio::Null => File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map_err(|e| SandboxError::io("opening /dev/null", e))?
                    .into(),
                Stdio::Fd(fd) => fd,
                Stdio::Pipe => {
                    let (read_end, write_end) =
                        pipe().map_err(|e| SandboxError::io("creating a pipe", e))?;
                    if index == 0 {
                        parent_ends[0] = Some(write_end.into());
                        read_end
                    } else {
                        parent_ends[index] = Some(read_end.into());
                        write_end
                    }
                }
            };
            stdio_fds[index] = child_end.as_raw_fd();
            child_side.push(child_end);
        }

        // the plan
        let mut strings: Vec<CString> = Vec::new();
        let mut argv: Vec<*const c_char> = Vec::new();
        for argument in &spec.args {
            let value = cstring("argument", argument)?;
            argv.push(value.as_ptr());
            strings.push(value);
        }
        argv.push(std::ptr::null());
        let mut envp: Vec<*const c_char> = Vec::new();
        for entry in &env {
            let value = cstring("environment entry", entry)?;
            envp.push(value.as_ptr());
            strings.push(value);
        }
        envp.push(std::ptr::null());
        let nofile = default_nofile_limit();
        let mut rlimits: Vec<(u32, libc::rlimit)> = vec![(
            libc::RLIMIT_NOFILE,
            libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            },
        )];
        for limit in &spec.rlimits {
            rlimits.retain(|(resource, _)| *resource != limit.resource);
            rlimits.push((
                limit.resource,
                libc::rlimit {
                    rlim_cur: limit.soft,
                    rlim_max: limit.hard,
                },
            ));
        }
        let workdir = format!("/{}", workdir_components.join("/"));
        let mut workdir_prefixes = Vec::new();
        for depth in 1..=workdir_components.len() {
            workdir_prefixes.push(cstring(
                "working directory",
                &format!("/{}", workdir_components[..depth].join("/")),
            )?);
        }
        let exec_candidates = exec_candidates(&spec.args[0], &search_path)
            .iter()
            .map(|candidate| cstring("executable path", candidate))
            .collect::<Result<Vec<_>>>()?;
        let plan = ChildPlan {
            rootfs: rootfs_c,
            sync_read: sync_read.as_raw_fd(),
            error_write: error_write.as_raw_fd(),
            status_write: status_write.as_raw_fd(),
            pty_socket: pty_sockets
                .as_ref()
                .map(|(_, child)| child.as_raw_fd())
                .unwrap_or(-1),
            stdio: stdio_fds,
            hostname: cstring("hostname", &spec.hostname)?,
            loopback_up: spec.network == Network::None,
            readonly_rootfs: spec.readonly_rootfs,
            mounts,
            files_dir: cstring(
                "file mount directory",
                &resources.state.path().join("files").to_string_lossy(),
            )?,
            workdir: cstring("working directory", &workdir)?,
            workdir_prefixes,
            uid: user.uid,
            gid: user.gid,
            groups: user.additional_gids.clone(),
            rlimits,
            last_cap: self.last_capability,
            capabilities: spec.capabilities,
            argv,
            envp,
            exec_candidates,
            _strings: strings,
            cmdline_area: crate::child::own_cmdline_area(),
        };
        let mut flags =
            (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC)
                as u64;
        if spec.network == Network::None {
            flags |= libc::CLONE_NEWNET as u64;
        }

        let (reply_sender, reply_receiver) = mpsc::sync_channel(1);
        let sent = spawner()
            .lock()
            .map_err(|_| {
                SandboxError::io(
                    "starting the sandbox",
                    io::Error::other("spawner lock poisoned"),
                )
            })?
            .send(CloneRequest {
                plan: &plan,
                flags,
                cgroup: resources
                    .cgroup
                    .as_ref()
                    .and_then(SandboxCgroup::clone_target)
                    .unwrap_or(-1),
                reply: reply_sender,
            });
        if sent.is_err() {
            return Err(SandboxError::io(
                "starting the sandbox",
                io::Error::other("the spawner thread is not running"),
            ));
        }
        let Cloned {
            pid,
            pidfd,
            in_cgroup,
        } = reply_receiver
            .recv()
            .map_err(|_| {
                SandboxError::io(
                    "starting the sandbox",
                    io::Error::other("the spawner thread is gone"),
                )
            })?
            .map_err(|e| SandboxError::io("cloning the sandbox process", e))?;
        drop(plan);
        drop(child_side);
        drop(sync_read);
        drop(error_write);
        drop(status_write);
        let pty_socket = pty_sockets.map(|(parent, _child)| parent);

        let mut running = RunningSandbox {
            id,
            pid,
            pidfd: Arc::new(pidfd),
            status_read: Some(status_read),
            stdin: parent_ends[0].take(),
            stdout: parent_ends[1].take(),
            stderr: parent_ends[2].take(),
            pty: None,
            resources: Some(resources),
            finished: None,
        };

        // place the child in its cgroups (those it was not born in), then let it go
        let joined = running
            .resources
            .as_mut()
            .and_then(|r| r.cgroup.as_mut())
            .map(|c| c.add_process(pid, in_cgroup))
            .unwrap_or(Ok(()));
        if let Err(error) = joined {
            drop(running);
            return Err(error);
        }
        let mut sync_file = File::from(sync_write);
        if let Err(error) = io::Write::write_all(&mut sync_file, &[1]) {
            drop(running);
            return Err(SandboxError::io("starting the sandbox", error));
        }
        drop(sync_file);

        if let Some(socket) = pty_socket {
            if let Ok(master) = receive_fd(&socket) {
                if let Some(size) = spec.tty {
                    let _ = set_window_size(master.as_raw_fd(), size);
                }
                running.pty = Some(master.into());
            }
        }

        // EOF on the error pipe: the command is executing
        let mut record = Vec::with_capacity(ERROR_RECORD_LEN);
        let read = File::from(error_read).read_to_end(&mut record);
        if let Err(error) = read {
            drop(running);
            return Err(SandboxError::io("reading the sandbox setup result", error));
        }
        if record.len() >= ERROR_RECORD_LEN {
            let stage_code = u32::from_ne_bytes([record[0], record[1], record[2], record[3]]);
            let index = u32::from_ne_bytes([record[4], record[5], record[6], record[7]]);
            let errno = i32::from_ne_bytes([record[8], record[9], record[10], record[11]]);
            let error = setup_error(&spec, stage_code, index, errno);
            drop(running);
            return Err(error);
        }
        if running.pty.is_none() && spec.tty.is_some() {
            drop(running);
            return Err(SandboxError::Setup {
                step: "receiving the pty".to_owned(),
                source: io::Error::from_raw_os_error(libc::EPIPE),
            });
        }
        Ok(running)
    }
}

fn mount_description(spec: &SandboxSpec, index: u32) -> String {
    let index = index as usize;
    let system = [
        "/proc",
        "/dev",
        "/sys",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/resolv.conf",
    ];
    match system.get(index) {
        Some(target) => target.to_string(),
        None => spec
            .mounts
            .get(index - system.len())
            .map(|m| m.target.clone())
            .unwrap_or_default(),
    }
}

fn setup_error(spec: &SandboxSpec, stage_code: u32, index: u32, errno: i32) -> SandboxError {
    let source = io::Error::from_raw_os_error(errno);
    let program = spec.args.first().cloned().unwrap_or_default();
    let Some(stage) = Stage::from_code(stage_code) else {
        return SandboxError::Setup {
            step: format!("an unknown step {stage_code}"),
            source,
        };
    };
    let step = match stage {
        Stage::SystemDirNotOrdinary => {
            let name = match index {
                0 => "proc",
                1 => "dev",
                _ => "sys",
            };
            return SandboxError::SystemDirNotOrdinary { name };
        }
        Stage::ExecNotFound => return SandboxError::ExecutableNotFound { program },
        Stage::Exec => return SandboxError::Exec { program, source },
        Stage::WorkdirOutsideRoot => {
            return SandboxError::WorkdirOutsideRoot {
                cwd: spec.cwd.clone(),
            }
        }
        Stage::ResolveMountTarget => {
            format!("resolving mount target {}", mount_description(spec, index))
        }
        Stage::CreateMountTarget => {
            format!("creating mount point {}", mount_description(spec, index))
        }
        Stage::Mount => format!("mounting {}", mount_description(spec, index)),
        Stage::MountReadonly => format!("making {} read-only", mount_description(spec, index)),
        Stage::DevSetup => "populating /dev".to_owned(),
        Stage::MaskPath => format!(
            "masking {}",
            child::MASKED_PATHS
                .get(index as usize)
                .map(|p| p.to_string_lossy())
                .unwrap_or_default()
        ),
        Stage::ReadonlyPath => format!(
            "making {} read-only",
            child::READONLY_PATHS
                .get(index as usize)
                .map(|p| p.to_string_lossy())
                .unwrap_or_default()
        ),
        Stage::Chdir => format!("changing to working directory {}", spec.cwd),
        Stage::CreateWorkdir => format!("creating working directory {}", spec.cwd),
        other => format!("{other:?}").to_lowercase(),
    };
    SandboxError::Setup { step, source }
}

fn receive_fd(socket: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: recvmsg into stack buffers
    unsafe {
        let mut payload = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control);
        let received = libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_CMSG_CLOEXEC);
        if received <= 0 {
            return Err(io::Error::from_raw_os_error(libc::EPIPE));
        }
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() || (*header).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::from_raw_os_error(libc::EPROTO));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<c_int>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn set_window_size(fd: RawFd, size: TtySize) -> io::Result<()> {
    let window = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &window) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_signal(pidfd: &OwnedFd, signal: c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on our own pidfd
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        // already exited: nothing to signal
        if error.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(error);
    }
    Ok(())
}

struct SharedFd(Arc<OwnedFd>);

impl AsRawFd for SharedFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A handle that can kill a running sandbox from another thread or task.
#[derive(Debug, Clone)]
pub struct SandboxKiller {
    pidfd: Arc<OwnedFd>,
}

impl SandboxKiller {
    /// Kills the whole sandbox (its init, and with it every process of the pid namespace).
    pub fn kill(&self) -> io::Result<()> {
        send_signal(&self.pidfd, libc::SIGKILL)
    }
}

/// A started sandbox. Dropping it kills it and cleans up.
#[derive(Debug)]
pub struct RunningSandbox {
    id: String,
    pid: i32,
    pidfd: Arc<OwnedFd>,
    status_read: Option<OwnedFd>,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    pty: Option<File>,
    resources: Option<Resources>,
    finished: Option<ExitStatus>,
}

impl std::fmt::Debug for Resources {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Resources")
            .field("state", &self.state.path)
            .finish()
    }
}

fn decode_wait_status(status: c_int) -> Outcome {
    if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    }
}

impl RunningSandbox {
    /// The sandbox id (also the name of its cgroup and state directory).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Host pid of the sandbox's init (pid 1 inside).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The write end of the process's stdin, when `Stdio::Pipe` was asked for.
    pub fn take_stdin(&mut self) -> Option<File> {
        self.stdin.take()
    }

    /// The read end of stdout, when `Stdio::Pipe` was asked for.
    pub fn take_stdout(&mut self) -> Option<File> {
        self.stdout.take()
    }

    /// The read end of stderr, when `Stdio::Pipe` was asked for.
    pub fn take_stderr(&mut self) -> Option<File> {
        self.stderr.take()
    }

    /// The pty master (read output, write input), when a tty was asked for. Reading it returns
    /// `EIO` once every process has closed the terminal.
    pub fn take_pty(&mut self) -> Option<File> {
        self.pty.take()
    }

    /// Resizes the pty (the kernel sends SIGWINCH to the foreground process group).
    pub fn resize_pty(&self, pty: &File, size: TtySize) -> io::Result<()> {
        set_window_size(pty.as_raw_fd(), size)
    }

    /// Sends a signal to the command (the init forwards it).
    pub fn signal(&self, signal: i32) -> io::Result<()> {
        send_signal(&self.pidfd, signal)
    }

    /// Kills the sandbox; `wait` then reports `Signaled(9)`.
    pub fn kill(&self) -> io::Result<()> {
        send_signal(&self.pidfd, libc::SIGKILL)
    }

    /// A cloneable handle to kill this sandbox from elsewhere (cancellation).
    pub fn killer(&self) -> SandboxKiller {
        SandboxKiller {
            pidfd: Arc::clone(&self.pidfd),
        }
    }

    /// The pidfd of the init: readable once the sandbox has ended (for event loops).
    pub fn pidfd(&self) -> RawFd {
        self.pidfd.as_raw_fd()
    }

    fn poll_exit(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut poll = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let milliseconds = timeout
            .map(|t| t.as_millis().min(i32::MAX as u128) as c_int)
            .unwrap_or(-1);
        loop {
            // SAFETY: poll on one fd
            let result = unsafe { libc::poll(&mut poll, 1, milliseconds) };
            if result < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
            return Ok(result > 0);
        }
    }

    /// Reaps the init (it must have exited), reads the command's status and tears everything down.
    fn finish(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.finished {
            return Ok(status);
        }
        // SAFETY: waitid on our pidfd
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: as above
            let result = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.pidfd.as_raw_fd() as libc::id_t,
                    &mut info,
                    libc::WEXITED,
                )
            };
            if result == 0 {
                break;
            }
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SandboxError::io("waiting for the sandbox", error));
        }
        // SAFETY: filled by waitid
        let (code, value) = unsafe { (info.si_code, info.si_status()) };
        let init_outcome = if code == libc::CLD_EXITED {
            Outcome::Exited(value)
        } else {
            Outcome::Signaled(value)
        };
        let mut outcome = init_outcome;
        if let Some(status_read) = self.status_read.take() {
            let mut bytes = Vec::new();
            let _ = File::from(status_read).read_to_end(&mut bytes);
            if bytes.len() == 4 {
                outcome = decode_wait_status(i32::from_ne_bytes([
                    bytes[0], bytes[1], bytes[2], bytes[3],
                ]));
            }
        }
        let mut oom_killed = false;
        let mut teardown = Ok(());
        if let Some(mut resources) = self.resources.take() {
            oom_killed = resources
                .cgroup
                .as_ref()
                .map(|c| c.oom_killed())
                .unwrap_or(false);
            teardown = resources.teardown();
        }
        let status = ExitStatus {
            outcome,
            oom_killed,
        };
        self.finished = Some(status);
        teardown.map_err(|e| SandboxError::io(format!("cleaning up sandbox {}", self.id), e))?;
        Ok(status)
    }

    /// Waits for the command to end, then cleans up.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        self.poll_exit(None)
            .map_err(|e| SandboxError::io("waiting for the sandbox", e))?;
        self.finish()
    }

    /// Waits at most `timeout`; on expiry kills the sandbox, cleans up and returns `TimedOut`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let exited = self
            .poll_exit(Some(timeout))
            .map_err(|e| SandboxError::io("waiting for the sandbox", e))?;
        if !exited {
            self.kill()
                .map_err(|e| SandboxError::io("killing the sandbox", e))?;
            self.finish()?;
            return Err(SandboxError::TimedOut { after: timeout });
        }
        self.finish()
    }

    /// Waits for the end without blocking the async runtime (a tokio reactor must be running).
    pub async fn wait_async(&mut self) -> Result<ExitStatus> {
        if self.finished.is_none() {
            // SAFETY: the AsyncFd owns a clone of the Arc, so the fd stays open while registered
            let pidfd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    SharedFd(Arc::clone(&self.pidfd)),
                    tokio::io::Interest::READABLE,
                )
            }
            .map_err(|e| {
                SandboxError::io("registering the sandbox with the runtime", e.into_parts().1)
            })?;
            let _ready = pidfd
                .readable()
                .await
                .map_err(|e| SandboxError::io("waiting for the sandbox", e))?;
        }
        self.finish()
    }

    /// Streams the piped stdout/stderr (or the pty) to `on_output` as it arrives, in arrival
    /// order per stream, until the command has ended and every stream is drained; then cleans up.
    pub fn wait_with_output(
        &mut self,
        options: WaitOptions,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus> {
        let started = Instant::now();
        let mut streams: Vec<(Stream, File)> = Vec::new();
        if let Some(file) = self.stdout.take() {
            streams.push((Stream::Stdout, file));
        }
        if let Some(file) = self.stderr.take() {
            streams.push((Stream::Stderr, file));
        }
        if let Some(file) = self.pty.take() {
            streams.push((Stream::Tty, file));
        }
        let mut exited = self.finished.is_some();
        let mut buffer = vec![0u8; 64 * 1024];
        while !exited || !streams.is_empty() {
            let mut fds: Vec<libc::pollfd> = streams
                .iter()
                .map(|(_, file)| libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            if !exited {
                fds.push(libc::pollfd {
                    fd: self.pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            let wait_ms = match options.timeout {
                Some(timeout) if !exited => {
                    let left = timeout.saturating_sub(started.elapsed());
                    if left.is_zero() {
                        self.kill()
                            .map_err(|e| SandboxError::io("killing the sandbox", e))?;
                        self.finish()?;
                        return Err(SandboxError::TimedOut { after: timeout });
                    }
                    left.as_millis().clamp(1, i32::MAX as u128) as c_int
                }
                _ => -1,
            };
            // SAFETY: poll on our fds
            let result =
                unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
            if result < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(SandboxError::io("waiting for sandbox output", error));
            }
            let mut closed = Vec::new();
            for (index, (stream, file)) in streams.iter_mut().enumerate() {
                if fds[index].revents == 0 {
                    continue;
                }
                match file.read(&mut buffer) {
                    Ok(0) => closed.push(index),
                    Ok(count) => on_output(*stream, &buffer[..count]),
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    // EIO: the pty's slave side is closed everywhere
                    Err(_) => closed.push(index),
                }
            }
            for index in closed.into_iter().rev() {
                streams.remove(index);
            }
            if !exited && fds.last().map(|fd| fd.revents != 0).unwrap_or(false) {
                exited = true;
            }
        }
        self.finish()
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        if self.finished.is_none() {
            let _ = self.kill();
            let _ = self.finish();
        }
    }
}

/// Cleans what killed kiln processes left in `state_dir` (see [`Sandbox::cleanup_stale`]).
pub fn cleanup_stale(state_dir: &Path) -> Result<Vec<String>> {
    state::cleanup_stale(state_dir).map_err(|e| SandboxError::io("cleaning stale sandboxes", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_can_cross_threads() {
        assert_send_sync::<Sandbox>();
        assert_send_sync::<SandboxKiller>();
        assert_send_sync::<RunningSandbox>();
    }

    #[test]
    fn ids_are_validated() {
        for good in ["ab", "a1", "build-1.step_2", "Z9"] {
            assert!(validate_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "a",
            "-ab",
            ".ab",
            "a/b",
            "a b",
            "../x",
            &"a".repeat(129),
        ] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
        assert!(validate_id(&random_id()).is_ok());
    }

    #[test]
    fn container_paths_are_cleaned() {
        assert_eq!(
            container_components("x", "/a/./b/../c//").unwrap(),
            vec!["a", "c"]
        );
        assert_eq!(
            container_components("x", "/../../etc").unwrap(),
            vec!["etc"]
        );
        assert!(container_components("x", "relative").is_err());
    }

    #[test]
    fn executable_lookup_candidates() {
        assert_eq!(
            exec_candidates("sh", "/usr/bin:/bin/"),
            vec!["/usr/bin/sh", "/bin/sh"]
        );
        assert_eq!(exec_candidates("./run", "/bin"), vec!["./run"]);
        assert_eq!(exec_candidates("x", ":/bin"), vec!["./x", "/bin/x"]);
    }
}
