//! The sandbox: run a process in an isolated container (namespaces, pivot_root, caps, cgroups).
//!
//! Every RUN step of a build and every `kiln run` executes here, with no external runtime
//! (no runc or crun).
//!
//! # Process model
//!
//! kiln's main process is a multi-threaded tokio program. Forking such a process and then doing
//! anything that is not async-signal-safe in the child (allocating, taking a lock, touching
//! std's or glibc's internal state) is undefined behaviour: another thread may have held the lock
//! at the moment of the fork, and it is gone in the child (youki #3011, #3027). kiln therefore
//! uses the "prepare, then only raw syscalls" model:
//!
//! 1. The parent prepares *everything* the child will need before the clone: every path as a
//!    `CString`, the mount plan (target components, tmpfs option strings, fds of bind sources and
//!    of file-mount contents), `argv`/`envp` pointer arrays, the candidate paths of the `PATH`
//!    lookup, uid/gid/supplementary groups (already resolved from the image's own `/etc/passwd`
//!    and `/etc/group`), rlimits and the capability mask. See `child::ChildPlan`.
//! 2. A dedicated, long-lived "spawner" thread calls `clone3` (fork-like, with the new mount, pid,
//!    uts, ipc and, for network none, net namespaces, and `CLONE_PIDFD`). It is long-lived because
//!    `PR_SET_PDEATHSIG` fires when the cloning *thread* exits.
//! 3. The child (`child::init_main`) runs only raw system calls on that plan: no allocation, no
//!    locks, no std I/O; integers are formatted into stack buffers; credentials are changed with
//!    raw `setresuid`/`setgroups` syscalls (glibc's wrappers would try to synchronise threads that
//!    do not exist in the child). It waits for the parent to put it into its cgroups, unshares the
//!    cgroup namespace, makes `/` recursively private, mounts `/proc`, a fresh `/dev`, `/sys`, the
//!    network files and the caller's mounts (targets resolved with `openat2(RESOLVE_IN_ROOT)` and
//!    mounted through `/proc/self/fd/N`), pivots into the rootfs and detaches the old root, masks
//!    paths, sets the hostname and brings `lo` up.
//! 4. That child is pid 1 of the new pid namespace and stays as a tiny init (like tini): it forks
//!    the worker (raw `clone`), drops to `CAP_KILL` only, closes every fd but its status pipe,
//!    marks itself non-dumpable (so `/proc/1/exe`, `/proc/1/mem` and `/proc/1/fd` are out of reach
//!    of the container, CVE-2019-5736), and then waits for signals: SIGCHLD reaps zombies, other
//!    signals are forwarded to the command. When the command exits, the init writes its wait
//!    status to the parent and exits, which makes the kernel kill every process left in the pid
//!    namespace, so background processes never hang a RUN.
//! 5. The worker sets up stdio (pipes, or a pty allocated inside the container's own devpts and
//!    handed to the parent over `SCM_RIGHTS`), closes every fd above 3 for real (fd 3 is the
//!    close-on-exec error pipe), creates and enters the working directory and verifies with
//!    `getcwd` that it is inside the root (CVE-2024-21626), drops the bounding set to Docker's
//!    defaults, changes uid/gids, sets permitted/effective, clears inheritable and ambient, sets
//!    `no_new_privs` and `execve`s the command. kiln's own binary is never executed inside the
//!    container.
//!
//! Setup failures travel back as a fixed-size record on a close-on-exec error pipe; EOF on that
//! pipe means the command is executing. The alternative (a single-threaded zygote forked before
//! the runtime starts, or re-executing a sealed memfd copy of kiln) was rejected: it needs a
//! serialisation protocol and a long-lived helper process, and re-exec brings back the
//! CVE-2019-5736 concerns; the plan above keeps all the logic in one place and is sound as long as
//! the child code stays allocation-free (every function in `child` is written to that rule).
//!
//! Costs of this model: the init is a copy-on-write image of the kiln process, so while a sandbox
//! runs, the pages kiln modifies afterwards are duplicated (the init itself touches almost
//! nothing); `/proc/1/cmdline` inside is blanked (the init zeroes its copy of kiln's arguments).
//!
//! Not implemented yet: seccomp (Docker's default profile), AppArmor/SELinux labels, user
//! namespaces, a cgroup mount inside the container (`/sys/fs/cgroup`), port publishing.
//!
//! # cgroups
//!
//! v2 when `/sys/fs/cgroup` is a cgroup2 mount, else the v1 hierarchies found in mountinfo
//! (`CgroupMode::V2 { mount }` picks a cgroup2 mount explicitly, e.g. the `unified` one of a
//! hybrid host). A sandbox's cgroup is `kiln/<id>` *under the cgroup kiln itself runs in* (per
//! controller on v1), so containers stay inside whatever limits kiln was given; on v2, when kiln's
//! own cgroup cannot hand controllers down (it holds processes), `<mount>/kiln/<id>` is used.
//! Memory (swap included where possible), CPU bandwidth and pids limits; the OOM killer is
//! reported from `memory.oom_control`/`memory.events`.
//!
//! A v2 cgroup is entered at birth (`clone3` with `CLONE_INTO_CGROUP`); a v1 one by writing the
//! pid to `cgroup.procs` after the clone, which waits for an RCU grace period in the kernel
//! (5-20 ms, measured: most of a `kiln run --rm busybox true`). So on a hybrid host (v1
//! controllers beside a cgroup2 mount, such as `/sys/fs/cgroup/unified`) a sandbox without
//! limits gets only a v2 `kiln/<id>` there: tracking and kill-all, no controllers, and it stays
//! in the v1 cgroups of kiln itself; the v1 controller cgroups are made when a limit is asked
//! (and an OOM kill is then reported only for a sandbox with a memory limit). A pure v1 host
//! always uses its v1 controllers.
//!
//! # Resources and cleanup
//!
//! Each sandbox gets `<state_dir>/<id>/` (mode 0700) holding a lock, a record of its cgroups and
//! of the mount-point stubs it created in the rootfs, and the contents of file mounts. After the
//! command ends (success, failure, timeout, `kill()`, or the `RunningSandbox` being dropped) the
//! cgroups are emptied and removed, stubs that are still empty are removed (re-resolved inside
//! the rootfs, never following a planted symlink, CVE-2024-23652) and the directory is deleted.
//! Mounts need no cleanup: they only exist in the sandbox's private mount namespace, which dies
//! with its last process. What a killed kiln leaves is removed by [`cleanup_stale`] (`kiln build`
//! and `kiln run` call it at start). A sandbox directory is made under a staging name and
//! renamed into place only once its lock is held, so a cleanup in another process never takes
//! a sandbox that is starting.

mod cgroup;
mod child;
mod error;
mod sandbox;
mod spec;
mod state;
pub mod user;

pub use cgroup::CgroupMode;
pub use error::{Result, SandboxError};
pub use sandbox::{
    cleanup_stale, validate_id, RunningSandbox, Sandbox, SandboxConfig, SandboxKiller,
    DEFAULT_CAPABILITIES,
};
pub use spec::{
    CpuQuota, ExitStatus, Limits, Mount, MountKind, Network, NetworkFiles, Outcome, Rlimit,
    SandboxSpec, Stdio, Stream, TtySize, WaitOptions, DEFAULT_NOFILE_LIMIT, DEFAULT_PATH,
};
pub use user::{ResolvedUser, UserError};
