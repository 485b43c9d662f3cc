//! The code that runs between `clone3` and `execve`: raw system calls on data prepared before the
//! clone, no allocation, no locks, nothing from Rust's std that could take one.
//!
//! Two processes run this code. The clone (`init_main`) becomes pid 1 of the new pid namespace: it
//! sets up the mounts, pivots into the rootfs, forks the worker and then stays as a tiny init that
//! reaps zombies and forwards signals. The worker (`worker_main`) sets up stdio, the working
//! directory, the user and the capabilities, then executes the command. Every failure is written
//! to the error pipe as a fixed-size record `[stage, index, errno]` and the process exits.
//!
//! Safety contract of everything here: it may only be called in a freshly cloned child whose
//! memory is a private copy of the parent's, and it may only read the `ChildPlan` (which the
//! parent keeps alive and unchanged until the clone returned).

use std::ffi::{c_char, c_int, c_ulong, CStr, CString};
use std::mem;
use std::ptr;

/// Which setup step failed; sent to the parent in the error record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    WaitParent = 1,
    CgroupNamespace,
    PrivateRoot,
    BindRootfs,
    OpenRootfs,
    SystemDirNotOrdinary,
    ResolveMountTarget,
    CreateMountTarget,
    Mount,
    MountReadonly,
    DevSetup,
    ReadonlyRootfs,
    PivotRoot,
    MaskPath,
    ReadonlyPath,
    Hostname,
    Loopback,
    Pty,
    ForkWorker,
    Stdio,
    Rlimit,
    CreateWorkdir,
    Chdir,
    WorkdirOutsideRoot,
    CloseFds,
    Capabilities,
    Groups,
    SetUser,
    NoNewPrivs,
    ExecNotFound,
    Exec,
}

impl Stage {
    pub(crate) fn from_code(code: u32) -> Option<Stage> {
        use Stage::*;
        const ALL: [Stage; 31] = [
            WaitParent,
            CgroupNamespace,
            PrivateRoot,
            BindRootfs,
            OpenRootfs,
            SystemDirNotOrdinary,
            ResolveMountTarget,
            CreateMountTarget,
            Mount,
            MountReadonly,
            DevSetup,
            ReadonlyRootfs,
            PivotRoot,
            MaskPath,
            ReadonlyPath,
            Hostname,
            Loopback,
            Pty,
            ForkWorker,
            Stdio,
            Rlimit,
            CreateWorkdir,
            Chdir,
            WorkdirOutsideRoot,
            CloseFds,
            Capabilities,
            Groups,
            SetUser,
            NoNewPrivs,
            ExecNotFound,
            Exec,
        ];
        ALL.into_iter().find(|stage| *stage as u32 == code)
    }
}

/// Size of the error record: stage, index, errno.
pub(crate) const ERROR_RECORD_LEN: usize = 12;

/// One path component to create when a mount target is missing.
pub(crate) struct StubStep {
    /// Path of this component relative to the root ("a/b").
    pub path: CString,
    /// Path of its parent relative to the root ("a", or "." for the root).
    pub parent: CString,
    /// Its name ("b").
    pub name: CString,
}

pub(crate) enum PlannedKind {
    Proc,
    Sys,
    Dev,
    /// `source` is a host path, resolved in the child's copy of the host mounts (a bind source
    /// opened in the parent belongs to the parent's mount namespace and cannot be bound here).
    Bind {
        source: CString,
        readonly: bool,
    },
    Tmpfs {
        data: CString,
    },
    /// A file written by the child into its own tmpfs (mounted on `ChildPlan::files_dir` in the
    /// child's mount namespace only, so the bytes never reach a disk and vanish with the
    /// sandbox), then bound read-only onto the target.
    File {
        /// `<files_dir>/<n>`
        source: CString,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

pub(crate) struct PlannedMount {
    /// Components of the target, root first; the last one is the target itself.
    pub steps: Vec<StubStep>,
    /// Create the target as a directory (else as an empty file) when it is missing.
    pub target_is_dir: bool,
    /// Refuse symlinks anywhere on the way (`/proc`, `/sys`, `/dev`).
    pub no_symlinks: bool,
    pub kind: PlannedKind,
}

/// Everything the child needs, prepared by the parent before the clone.
pub(crate) struct ChildPlan {
    pub rootfs: CString,
    pub sync_read: c_int,
    pub error_write: c_int,
    pub status_write: c_int,
    /// Unix socket to send the pty master through; -1 without a tty.
    pub pty_socket: c_int,
    /// stdin, stdout, stderr for the worker (ignored with a tty).
    pub stdio: [c_int; 3],
    pub hostname: CString,
    pub loopback_up: bool,
    pub readonly_rootfs: bool,
    pub mounts: Vec<PlannedMount>,
    /// An empty host directory the child mounts its file-mount tmpfs on (see
    /// [`PlannedKind::File`]).
    pub files_dir: CString,
    pub workdir: CString,
    pub workdir_prefixes: Vec<CString>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<libc::gid_t>,
    pub rlimits: Vec<(u32, libc::rlimit)>,
    pub last_cap: u32,
    pub capabilities: u64,
    pub argv: Vec<*const c_char>,
    pub envp: Vec<*const c_char>,
    pub exec_candidates: Vec<CString>,
    /// Owners of the strings `argv` and `envp` point into.
    pub _strings: Vec<CString>,
    /// kiln's own command line in memory (`arg_start`, `arg_end` of /proc/self/stat): the
    /// init zeroes its copy so `/proc/1/cmdline` in the container shows nothing of kiln's
    /// arguments (which may hold secrets such as `-e PASSWORD=...`).
    pub cmdline_area: (usize, usize),
}

/// `arg_start` and `arg_end` of this process (fields 48 and 49 of /proc/self/stat).
pub(crate) fn own_cmdline_area() -> (usize, usize) {
    static AREA: std::sync::OnceLock<(usize, usize)> = std::sync::OnceLock::new();
    *AREA.get_or_init(|| {
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return (0, 0);
        };
        // The command name (field 2) may contain spaces: fields after it follow the last ')'.
        let Some(rest) = stat.rfind(')').map(|index| &stat[index + 1..]) else {
            return (0, 0);
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3, so field N is at index N - 3.
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|value| value.parse::<usize>().ok())
        };
        match (field(48), field(49)) {
            (Some(start), Some(end)) if end > start && end - start < (1 << 20) => (start, end),
            _ => (0, 0),
        }
    })
}

/// Paths masked like runc and containerd do.
pub(crate) const MASKED_PATHS: [&CStr; 11] = [
    c"/proc/acpi",
    c"/proc/asound",
    c"/proc/kcore",
    c"/proc/keys",
    c"/proc/latency_stats",
    c"/proc/timer_list",
    c"/proc/timer_stats",
    c"/proc/sched_debug",
    c"/proc/scsi",
    c"/sys/firmware",
    c"/sys/devices/virtual/powercap",
];

/// Paths made read-only like runc and containerd do.
pub(crate) const READONLY_PATHS: [&CStr; 5] = [
    c"/proc/bus",
    c"/proc/fs",
    c"/proc/irq",
    c"/proc/sys",
    c"/proc/sysrq-trigger",
];

const DEVICES: [(&CStr, &CStr); 6] = [
    (c"/dev/null", c"null"),
    (c"/dev/zero", c"zero"),
    (c"/dev/full", c"full"),
    (c"/dev/random", c"random"),
    (c"/dev/urandom", c"urandom"),
    (c"/dev/tty", c"tty"),
];

const DEV_SYMLINKS: [(&CStr, &CStr); 5] = [
    (c"pts/ptmx", c"ptmx"),
    (c"/proc/self/fd", c"fd"),
    (c"/proc/self/fd/0", c"stdin"),
    (c"/proc/self/fd/1", c"stdout"),
    (c"/proc/self/fd/2", c"stderr"),
];

const MOUNT_ATTR_RDONLY: u64 = 0x0000_0001;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
const CAP_KILL: u32 = 5;

/// A NUL-terminated path built on the stack: "/proc/self/fd/<fd>" plus an optional "/suffix".
struct PathBuffer {
    bytes: [u8; 96],
    len: usize,
}

impl PathBuffer {
    fn new() -> Self {
        PathBuffer {
            bytes: [0; 96],
            len: 0,
        }
    }

    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            // keep one byte for the terminating NUL; longer paths are cut (never used here)
            if self.len + 1 < self.bytes.len() {
                self.bytes[self.len] = byte;
                self.len += 1;
            }
        }
        self.bytes[self.len] = 0;
    }

    fn push_number(&mut self, mut number: u64) {
        let mut digits = [0u8; 20];
        let mut count = 0;
        loop {
            digits[count] = b'0' + (number % 10) as u8;
            count += 1;
            number /= 10;
            if number == 0 {
                break;
            }
        }
        while count > 0 {
            count -= 1;
            self.push(&digits[count..count + 1]);
        }
    }

    fn fd_path(fd: c_int, suffix: &CStr) -> Self {
        let mut path = PathBuffer::new();
        path.push(b"/proc/self/fd/");
        path.push_number(fd as u64);
        if !suffix.is_empty() {
            path.push(b"/");
            path.push(suffix.to_bytes());
        }
        path
    }

    fn as_ptr(&self) -> *const c_char {
        self.bytes.as_ptr().cast()
    }
}

fn errno() -> c_int {
    // SAFETY: reading the calling thread's errno
    unsafe { *libc::__errno_location() }
}

/// Reports a failed step to the parent and exits.
unsafe fn fail(plan: &ChildPlan, stage: Stage, index: u32, error: c_int) -> ! {
    let mut record = [0u8; ERROR_RECORD_LEN];
    record[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&index.to_ne_bytes());
    record[8..12].copy_from_slice(&error.to_ne_bytes());
    // SAFETY: plain write and exit
    unsafe {
        libc::write(plan.error_write, record.as_ptr().cast(), record.len());
        libc::_exit(127)
    }
}

unsafe fn openat2(dirfd: c_int, path: *const c_char, flags: c_int, resolve: u64) -> c_int {
    // SAFETY: open_how is plain data
    let mut how: libc::open_how = unsafe { mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = resolve;
    // SAFETY: valid pointers for the duration of the call
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path,
            &how as *const libc::open_how,
            mem::size_of::<libc::open_how>(),
        ) as c_int
    }
}

unsafe fn mount_setattr_readonly(fd: c_int, recursive: bool) -> c_int {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: valid pointers for the duration of the call
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            mem::size_of::<MountAttr>(),
        ) as c_int
    }
}

/// Opens the target of a mount inside the root, creating missing components; returns an O_PATH fd.
unsafe fn resolve_target(
    plan: &ChildPlan,
    rootfd: c_int,
    index: u32,
    planned: &PlannedMount,
) -> c_int {
    let resolve = libc::RESOLVE_IN_ROOT
        | libc::RESOLVE_NO_MAGICLINKS
        | if planned.no_symlinks {
            libc::RESOLVE_NO_SYMLINKS
        } else {
            0
        };
    let last = planned.steps.len().saturating_sub(1);
    for (position, step) in planned.steps.iter().enumerate() {
        let flags = libc::O_PATH | libc::O_CLOEXEC;
        // SAFETY: raw syscalls on prepared strings
        unsafe {
            let mut fd = openat2(rootfd, step.path.as_ptr(), flags, resolve);
            if fd < 0 {
                let error = errno();
                if error == libc::ELOOP && planned.no_symlinks {
                    fail(plan, Stage::SystemDirNotOrdinary, index, error);
                }
                if error != libc::ENOENT {
                    fail(plan, Stage::ResolveMountTarget, index, error);
                }
                let parent = openat2(
                    rootfd,
                    step.parent.as_ptr(),
                    libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    resolve,
                );
                if parent < 0 {
                    fail(plan, Stage::ResolveMountTarget, index, errno());
                }
                let created = if position == last && !planned.target_is_dir {
                    let file = libc::openat(
                        parent,
                        step.name.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o644,
                    );
                    if file >= 0 {
                        libc::close(file);
                    }
                    file
                } else {
                    libc::mkdirat(parent, step.name.as_ptr(), 0o755)
                };
                if created < 0 && errno() != libc::EEXIST {
                    fail(plan, Stage::CreateMountTarget, index, errno());
                }
                libc::close(parent);
                fd = openat2(rootfd, step.path.as_ptr(), flags, resolve);
                if fd < 0 {
                    let error = errno();
                    if error == libc::ELOOP && planned.no_symlinks {
                        fail(plan, Stage::SystemDirNotOrdinary, index, error);
                    }
                    fail(plan, Stage::ResolveMountTarget, index, error);
                }
            }
            if position == last {
                return fd;
            }
            libc::close(fd);
        }
    }
    // a target always has at least one component; the root itself is never a mount target
    // SAFETY: reporting
    unsafe { fail(plan, Stage::ResolveMountTarget, index, libc::EINVAL) }
}

unsafe fn reopen_target(
    plan: &ChildPlan,
    rootfd: c_int,
    index: u32,
    planned: &PlannedMount,
) -> c_int {
    let resolve = libc::RESOLVE_IN_ROOT
        | libc::RESOLVE_NO_MAGICLINKS
        | if planned.no_symlinks {
            libc::RESOLVE_NO_SYMLINKS
        } else {
            0
        };
    let Some(step) = planned.steps.last() else {
        // SAFETY: reporting
        unsafe { fail(plan, Stage::ResolveMountTarget, index, libc::EINVAL) }
    };
    // SAFETY: raw syscall on prepared strings
    let fd = unsafe {
        openat2(
            rootfd,
            step.path.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
            resolve,
        )
    };
    if fd < 0 {
        // SAFETY: reporting
        unsafe { fail(plan, Stage::ResolveMountTarget, index, errno()) }
    }
    fd
}

unsafe fn mount_at(
    source: *const c_char,
    target: &PathBuffer,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_char,
) -> c_int {
    // SAFETY: NUL-terminated strings
    unsafe { libc::mount(source, target.as_ptr(), fstype, flags, data.cast()) }
}

unsafe fn setup_dev(plan: &ChildPlan, devfd: c_int, index: u32) {
    // SAFETY: raw syscalls inside the fresh tmpfs we own; nothing there can be a symlink we did not make
    unsafe {
        for (host, name) in DEVICES {
            let file = libc::openat(
                devfd,
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            if file < 0 {
                fail(plan, Stage::DevSetup, index, errno());
            }
            libc::close(file);
            let target = PathBuffer::fd_path(devfd, name);
            if mount_at(
                host.as_ptr(),
                &target,
                ptr::null(),
                libc::MS_BIND,
                ptr::null(),
            ) < 0
            {
                fail(plan, Stage::DevSetup, index, errno());
            }
        }
        let directories: [(&CStr, libc::mode_t); 3] =
            [(c"pts", 0o755), (c"shm", 0o1777), (c"mqueue", 0o1777)];
        for (name, mode) in directories {
            if libc::mkdirat(devfd, name.as_ptr(), mode) < 0 {
                fail(plan, Stage::DevSetup, index, errno());
            }
        }
        let pts = PathBuffer::fd_path(devfd, c"pts");
        if mount_at(
            c"devpts".as_ptr(),
            &pts,
            c"devpts".as_ptr(),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            c"newinstance,ptmxmode=0666,mode=0620,gid=5".as_ptr(),
        ) < 0
        {
            fail(plan, Stage::DevSetup, index, errno());
        }
        let shm = PathBuffer::fd_path(devfd, c"shm");
        if mount_at(
            c"shm".as_ptr(),
            &shm,
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            c"mode=1777,size=65536k".as_ptr(),
        ) < 0
        {
            fail(plan, Stage::DevSetup, index, errno());
        }
        let mqueue = PathBuffer::fd_path(devfd, c"mqueue");
        if mount_at(
            c"mqueue".as_ptr(),
            &mqueue,
            c"mqueue".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            ptr::null(),
        ) < 0
        {
            fail(plan, Stage::DevSetup, index, errno());
        }
        for (link_target, name) in DEV_SYMLINKS {
            if libc::symlinkat(link_target.as_ptr(), devfd, name.as_ptr()) < 0 {
                fail(plan, Stage::DevSetup, index, errno());
            }
        }
    }
}

/// Mounts the tmpfs for file mounts on `plan.files_dir` (in this mount namespace only) and
/// writes one file there; fails the child on any error.
unsafe fn write_file_mount(
    plan: &ChildPlan,
    index: u32,
    files_mounted: &mut bool,
    source: &CString,
    contents: &[u8],
    owner: (u32, u32),
    mode: u32,
) {
    // SAFETY: raw syscalls on prepared strings and buffers
    unsafe {
        if !*files_mounted {
            if libc::mount(
                c"tmpfs".as_ptr(),
                plan.files_dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=700".as_ptr().cast(),
            ) < 0
            {
                fail(plan, Stage::Mount, index, errno());
            }
            *files_mounted = true;
        }
        let fd = libc::open(
            source.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            0o600,
        );
        if fd < 0 {
            fail(plan, Stage::Mount, index, errno());
        }
        let mut written = 0usize;
        while written < contents.len() {
            let result = libc::write(
                fd,
                contents[written..].as_ptr().cast(),
                contents.len() - written,
            );
            if result < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                fail(plan, Stage::Mount, index, errno());
            }
            written += result as usize;
        }
        if libc::fchown(fd, owner.0, owner.1) < 0 || libc::fchmod(fd, mode & 0o7777) < 0 {
            fail(plan, Stage::Mount, index, errno());
        }
        libc::close(fd);
    }
}

unsafe fn do_mounts(plan: &ChildPlan, rootfd: c_int) {
    let mut files_mounted = false;
    for (position, planned) in plan.mounts.iter().enumerate() {
        let index = position as u32;
        // SAFETY: raw syscalls on prepared data
        unsafe {
            let targetfd = resolve_target(plan, rootfd, index, planned);
            let target = PathBuffer::fd_path(targetfd, c"");
            let result = match &planned.kind {
                PlannedKind::Proc => mount_at(
                    c"proc".as_ptr(),
                    &target,
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    ptr::null(),
                ),
                PlannedKind::Sys => mount_at(
                    c"sysfs".as_ptr(),
                    &target,
                    c"sysfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
                    ptr::null(),
                ),
                PlannedKind::Dev => mount_at(
                    c"tmpfs".as_ptr(),
                    &target,
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_STRICTATIME,
                    c"mode=755,size=65536k".as_ptr(),
                ),
                PlannedKind::Tmpfs { data } => mount_at(
                    c"tmpfs".as_ptr(),
                    &target,
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    data.as_ptr(),
                ),
                PlannedKind::Bind { source, .. } => mount_at(
                    source.as_ptr(),
                    &target,
                    ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    ptr::null(),
                ),
                PlannedKind::File {
                    source,
                    contents,
                    mode,
                    uid,
                    gid,
                } => {
                    write_file_mount(
                        plan,
                        index,
                        &mut files_mounted,
                        source,
                        contents,
                        (*uid, *gid),
                        *mode,
                    );
                    mount_at(
                        source.as_ptr(),
                        &target,
                        ptr::null(),
                        libc::MS_BIND,
                        ptr::null(),
                    )
                }
            };
            if result < 0 {
                fail(plan, Stage::Mount, index, errno());
            }
            libc::close(targetfd);
            match &planned.kind {
                PlannedKind::Dev => {
                    let devfd = reopen_target(plan, rootfd, index, planned);
                    setup_dev(plan, devfd, index);
                    libc::close(devfd);
                }
                PlannedKind::Bind { readonly: true, .. } | PlannedKind::File { .. } => {
                    let mounted = reopen_target(plan, rootfd, index, planned);
                    if mount_setattr_readonly(mounted, true) < 0 {
                        fail(plan, Stage::MountReadonly, index, errno());
                    }
                    libc::close(mounted);
                }
                _ => {}
            }
        }
    }
}

unsafe fn mask_paths(plan: &ChildPlan) {
    for (position, path) in MASKED_PATHS.iter().enumerate() {
        // SAFETY: raw syscalls on static strings, after pivot_root
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if fd < 0 {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(plan, Stage::MaskPath, position as u32, errno());
            }
            let mut stat: libc::stat = mem::zeroed();
            if libc::fstat(fd, &mut stat) < 0 {
                fail(plan, Stage::MaskPath, position as u32, errno());
            }
            let target = PathBuffer::fd_path(fd, c"");
            let result = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                mount_at(
                    c"tmpfs".as_ptr(),
                    &target,
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    c"size=0".as_ptr(),
                )
            } else {
                mount_at(
                    c"/dev/null".as_ptr(),
                    &target,
                    ptr::null(),
                    libc::MS_BIND,
                    ptr::null(),
                )
            };
            if result < 0 {
                fail(plan, Stage::MaskPath, position as u32, errno());
            }
            libc::close(fd);
        }
    }
    for (position, path) in READONLY_PATHS.iter().enumerate() {
        // SAFETY: raw syscalls on static strings, after pivot_root
        unsafe {
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                ptr::null(),
            ) < 0
            {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(plan, Stage::ReadonlyPath, position as u32, errno());
            }
            let fd = libc::open(
                path.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            );
            if fd < 0 || mount_setattr_readonly(fd, true) < 0 {
                fail(plan, Stage::ReadonlyPath, position as u32, errno());
            }
            libc::close(fd);
        }
    }
}

unsafe fn loopback_up(plan: &ChildPlan) {
    // SAFETY: ioctl on a socket with a zeroed ifreq
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            fail(plan, Stage::Loopback, 0, errno());
        }
        let mut request: libc::ifreq = mem::zeroed();
        request.ifr_name[0] = b'l' as c_char;
        request.ifr_name[1] = b'o' as c_char;
        if libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request) < 0 {
            fail(plan, Stage::Loopback, 1, errno());
        }
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket, libc::SIOCSIFFLAGS, &mut request) < 0 {
            fail(plan, Stage::Loopback, 2, errno());
        }
        libc::close(socket);
    }
}

/// Allocates the pty inside the container's devpts, binds its slave on /dev/console, sends the
/// master to the parent and writes the slave's path into `slave_path`.
unsafe fn setup_pty(plan: &ChildPlan, slave_path: &mut PathBuffer) {
    // SAFETY: raw syscalls after pivot_root
    unsafe {
        let master = libc::open(
            c"/dev/pts/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if master < 0 {
            fail(plan, Stage::Pty, 0, errno());
        }
        let unlock: c_int = 0;
        if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) < 0 {
            fail(plan, Stage::Pty, 1, errno());
        }
        let mut number: libc::c_uint = 0;
        if libc::ioctl(master, libc::TIOCGPTN, &mut number) < 0 {
            fail(plan, Stage::Pty, 2, errno());
        }
        slave_path.push(b"/dev/pts/");
        slave_path.push_number(number as u64);
        let console = libc::open(
            c"/dev/console".as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        );
        if console < 0 {
            fail(plan, Stage::Pty, 3, errno());
        }
        libc::close(console);
        if libc::mount(
            slave_path.as_ptr(),
            c"/dev/console".as_ptr(),
            ptr::null(),
            libc::MS_BIND,
            ptr::null(),
        ) < 0
        {
            fail(plan, Stage::Pty, 4, errno());
        }
        // send the master with SCM_RIGHTS
        let mut payload = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: payload.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(mem::size_of::<c_int>() as u32) as usize;
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(mem::size_of::<c_int>() as u32) as usize;
        ptr::write_unaligned(libc::CMSG_DATA(header).cast::<c_int>(), master);
        if libc::sendmsg(plan.pty_socket, &message, 0) < 0 {
            fail(plan, Stage::Pty, 5, errno());
        }
        libc::close(master);
    }
}

unsafe fn reset_signals() {
    // SAFETY: resetting dispositions and the mask of this single-threaded process
    unsafe {
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut action: libc::sigaction = mem::zeroed();
            action.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &action, ptr::null_mut());
        }
    }
}

unsafe fn set_signal_mask(how: c_int, block_all: bool) {
    // SAFETY: rt_sigprocmask with a full or empty 64-signal mask
    unsafe {
        let mask: u64 = if block_all { !0 } else { 0 };
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            how,
            &mask as *const u64,
            ptr::null_mut::<u64>(),
            8,
        );
    }
}

unsafe fn capset(effective: u64, permitted: u64, inheritable: u64) -> c_int {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        CapData {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: capset with valid header and data
    unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) as c_int }
}

unsafe fn drop_bounding(last_cap: u32, keep: u64) -> c_int {
    for capability in 0..=last_cap {
        if keep & (1u64 << capability) == 0 {
            // SAFETY: prctl
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as c_ulong, 0, 0, 0) } < 0 {
                let error = errno();
                if error != libc::EINVAL {
                    return -1;
                }
            }
        }
    }
    0
}

/// Entry point of the cloned child (pid 1 of the new pid namespace). Never returns.
///
/// # Safety
/// Must only be called right after `clone3` returned 0, with `plan` valid.
pub(crate) unsafe fn init_main(plan: &ChildPlan) -> ! {
    // SAFETY: the whole function runs raw syscalls on prepared data in a single-threaded process
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"kiln-init".as_ptr() as c_ulong, 0, 0, 0);
        let (start, end) = plan.cmdline_area;
        if end > start {
            // our own (copy-on-write) stack pages: kiln's arguments never reach the container
            core::ptr::write_bytes(start as *mut u8, 0, end - start);
        }
        libc::umask(0);

        // wait until the parent has put us into our cgroups (EOF: the parent is gone)
        let mut byte = [0u8; 1];
        loop {
            let count = libc::read(plan.sync_read, byte.as_mut_ptr().cast(), 1);
            if count == 1 {
                break;
            }
            if count < 0 && errno() == libc::EINTR {
                continue;
            }
            fail(
                plan,
                Stage::WaitParent,
                0,
                if count == 0 { libc::EPIPE } else { errno() },
            );
        }
        libc::close(plan.sync_read);

        if libc::unshare(libc::CLONE_NEWCGROUP) < 0 {
            fail(plan, Stage::CgroupNamespace, 0, errno());
        }
        if libc::mount(
            ptr::null(),
            c"/".as_ptr(),
            ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            ptr::null(),
        ) < 0
        {
            fail(plan, Stage::PrivateRoot, 0, errno());
        }
        if libc::mount(
            plan.rootfs.as_ptr(),
            plan.rootfs.as_ptr(),
            ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            ptr::null(),
        ) < 0
        {
            fail(plan, Stage::BindRootfs, 0, errno());
        }
        let rootfd = libc::open(
            plan.rootfs.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if rootfd < 0 {
            fail(plan, Stage::OpenRootfs, 0, errno());
        }
        do_mounts(plan, rootfd);
        if plan.readonly_rootfs && mount_setattr_readonly(rootfd, false) < 0 {
            fail(plan, Stage::ReadonlyRootfs, 0, errno());
        }

        if libc::fchdir(rootfd) < 0 {
            fail(plan, Stage::PivotRoot, 0, errno());
        }
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0 {
            fail(plan, Stage::PivotRoot, 1, errno());
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) < 0 {
            fail(plan, Stage::PivotRoot, 2, errno());
        }
        if libc::chdir(c"/".as_ptr()) < 0 {
            fail(plan, Stage::PivotRoot, 3, errno());
        }
        libc::close(rootfd);

        mask_paths(plan);
        let hostname = plan.hostname.to_bytes();
        if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) < 0 {
            fail(plan, Stage::Hostname, 0, errno());
        }
        if plan.loopback_up {
            loopback_up(plan);
        }
        let mut slave_path = PathBuffer::new();
        if plan.pty_socket >= 0 {
            setup_pty(plan, &mut slave_path);
        }

        reset_signals();
        set_signal_mask(libc::SIG_SETMASK, true);
        let worker = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if worker < 0 {
            fail(plan, Stage::ForkWorker, 0, errno());
        }
        if worker == 0 {
            worker_main(plan, &slave_path);
        }
        let worker = worker as libc::pid_t;

        // init: keep only the status pipe, drop everything but CAP_KILL (to forward signals)
        let status_fd = plan.status_write;
        if status_fd > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, (status_fd - 1) as u32, 0u32);
        }
        libc::syscall(
            libc::SYS_close_range,
            (status_fd + 1) as u32,
            u32::MAX,
            0u32,
        );
        let kill_only = 1u64 << CAP_KILL;
        drop_bounding(plan.last_cap, kill_only);
        capset(kill_only, kill_only, 0);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);

        let mut all: libc::sigset_t = mem::zeroed();
        libc::sigfillset(&mut all);
        loop {
            let mut info: libc::siginfo_t = mem::zeroed();
            let signal = libc::sigwaitinfo(&all, &mut info);
            if signal < 0 {
                continue;
            }
            if signal != libc::SIGCHLD {
                libc::kill(worker, signal);
                continue;
            }
            loop {
                let mut status: c_int = 0;
                let reaped = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if reaped <= 0 {
                    break;
                }
                if reaped == worker {
                    let bytes = status.to_ne_bytes();
                    libc::write(status_fd, bytes.as_ptr().cast(), bytes.len());
                    // exiting kills every other process of the pid namespace
                    libc::_exit(0);
                }
            }
        }
    }
}

unsafe fn worker_main(plan: &ChildPlan, slave_path: &PathBuffer) -> ! {
    // SAFETY: raw syscalls on prepared data in a single-threaded process
    unsafe {
        set_signal_mask(libc::SIG_SETMASK, false);
        libc::umask(0o022);
        // keep the error pipe away from 0..=3 while stdio is arranged
        let error_fd = libc::fcntl(plan.error_write, libc::F_DUPFD_CLOEXEC, 10);
        if error_fd < 0 {
            fail(plan, Stage::Stdio, 0, errno());
        }
        if libc::setsid() < 0 {
            fail_on(error_fd, Stage::Stdio, 0, errno());
        }
        if plan.pty_socket >= 0 {
            let slave = libc::open(slave_path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if slave < 0 {
                fail_on(error_fd, Stage::Pty, 6, errno());
            }
            if libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                fail_on(error_fd, Stage::Pty, 7, errno());
            }
            for target in 0..3 {
                if libc::dup2(slave, target) < 0 {
                    fail_on(error_fd, Stage::Stdio, 1, errno());
                }
            }
        } else {
            // first move every source above 2, then put them in place
            let mut moved = [-1; 3];
            for (position, source) in plan.stdio.iter().enumerate() {
                moved[position] = libc::fcntl(*source, libc::F_DUPFD_CLOEXEC, 10);
                if moved[position] < 0 {
                    fail_on(error_fd, Stage::Stdio, 2, errno());
                }
            }
            for (target, source) in moved.iter().enumerate() {
                if libc::dup2(*source, target as c_int) < 0 {
                    fail_on(error_fd, Stage::Stdio, 3, errno());
                }
            }
        }
        // the error pipe goes to fd 3 (close-on-exec); every other fd is closed for real, so no
        // host fd can be reached through /proc/self/fd while choosing the working directory
        if libc::dup3(error_fd, 3, libc::O_CLOEXEC) < 0 {
            fail_on(error_fd, Stage::CloseFds, 0, errno());
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) < 0 {
            fail_on(3, Stage::CloseFds, 1, errno());
        }

        for (position, limit) in plan.rlimits.iter().enumerate() {
            if libc::setrlimit(limit.0, &limit.1) < 0 {
                fail_on(3, Stage::Rlimit, position as u32, errno());
            }
        }

        for prefix in &plan.workdir_prefixes {
            if libc::mkdir(prefix.as_ptr(), 0o755) < 0 && errno() != libc::EEXIST {
                fail_on(3, Stage::CreateWorkdir, 0, errno());
            }
        }
        if libc::chdir(plan.workdir.as_ptr()) < 0 {
            fail_on(3, Stage::Chdir, 0, errno());
        }
        let mut cwd = [0u8; 4096];
        let length = libc::syscall(libc::SYS_getcwd, cwd.as_mut_ptr(), cwd.len());
        if length < 0 {
            fail_on(3, Stage::WorkdirOutsideRoot, 0, errno());
        }
        if cwd[0] != b'/' {
            fail_on(3, Stage::WorkdirOutsideRoot, 0, libc::EPERM);
        }

        if drop_bounding(plan.last_cap, plan.capabilities) < 0 {
            fail_on(3, Stage::Capabilities, 0, errno());
        }
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            fail_on(3, Stage::Capabilities, 1, errno());
        }
        if libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) < 0 {
            fail_on(3, Stage::Groups, 0, errno());
        }
        if libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) < 0 {
            fail_on(3, Stage::SetUser, 0, errno());
        }
        if libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) < 0 {
            fail_on(3, Stage::SetUser, 1, errno());
        }
        if capset(plan.capabilities, plan.capabilities, 0) < 0 {
            fail_on(3, Stage::Capabilities, 2, errno());
        }
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong,
            0,
            0,
            0,
        ) < 0
        {
            fail_on(3, Stage::Capabilities, 3, errno());
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail_on(3, Stage::NoNewPrivs, 0, errno());
        }

        let mut saw_permission_error = false;
        for candidate in &plan.exec_candidates {
            libc::execve(candidate.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => saw_permission_error = true,
                other => fail_on(3, Stage::Exec, 0, other),
            }
        }
        if saw_permission_error {
            fail_on(3, Stage::Exec, 0, libc::EACCES);
        }
        fail_on(3, Stage::ExecNotFound, 0, libc::ENOENT)
    }
}

/// Like `fail`, with the error pipe at a known fd.
unsafe fn fail_on(error_fd: c_int, stage: Stage, index: u32, error: c_int) -> ! {
    let mut record = [0u8; ERROR_RECORD_LEN];
    record[0..4].copy_from_slice(&(stage as u32).to_ne_bytes());
    record[4..8].copy_from_slice(&index.to_ne_bytes());
    record[8..12].copy_from_slice(&error.to_ne_bytes());
    // SAFETY: plain write and exit
    unsafe {
        libc::write(error_fd, record.as_ptr().cast(), record.len());
        libc::_exit(127)
    }
}
