//! cgroups: limits, OOM reporting, placement, removal, and cleanup after a killed kiln.
mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, run, sandbox, spec};
use kiln_runner::{
    cleanup_stale, CgroupMode, CpuQuota, Limits, Mount, MountKind, Outcome, Sandbox, SandboxConfig,
    SandboxError,
};

/// (controllers, path) of a process, from the host's view.
fn cgroups_of(pid: i32) -> Vec<(String, String)> {
    fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap()
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            parts.next()?;
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

fn v1_directory(pid: i32, controller: &str) -> PathBuf {
    let (_, path) = cgroups_of(pid)
        .into_iter()
        .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
        .unwrap();
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(path.trim_start_matches('/'))
}

fn is_v1() -> bool {
    Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
}

/// Where a cgroup2 hierarchy is mounted: `/sys/fs/cgroup` on a v2 host, `unified` on a hybrid.
fn cgroup2_mount() -> Option<PathBuf> {
    [
        Path::new("/sys/fs/cgroup/unified"),
        Path::new("/sys/fs/cgroup"),
    ]
    .into_iter()
    .find(|path| path.join("cgroup.procs").exists() && path.join("cgroup.controllers").exists())
    .map(Path::to_path_buf)
}

/// The host directories of the sandbox's own cgroups (`…/kiln/<id>`), whatever the version.
fn sandbox_cgroup_directories(pid: i32, id: &str) -> Vec<PathBuf> {
    let suffix = format!("/kiln/{id}");
    cgroups_of(pid)
        .into_iter()
        .filter(|(_, path)| path.ends_with(&suffix))
        .map(|(controllers, path)| {
            let mount = match controllers.is_empty() {
                true => cgroup2_mount().unwrap(),
                false => Path::new("/sys/fs/cgroup").join(controllers.split(',').next().unwrap()),
            };
            mount.join(path.trim_start_matches('/'))
        })
        .collect()
}

#[test]
fn memory_hog_is_oom_killed_and_reported() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(
        rootfs.path(),
        "dd if=/dev/zero of=/dev/null bs=128M count=1; echo survived",
    );
    spec.limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    let out = run(&test.sandbox, spec);
    assert!(
        out.status.oom_killed,
        "{:?} {} {}",
        out.status, out.stdout, out.stderr
    );
    // dd was killed; the shell reports it and continues
    assert!(out.stdout.contains("survived"));
    let mut spec = spec_with_memory(
        rootfs.path(),
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo ${#x}",
    );
    spec.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "exec dd if=/dev/zero of=/dev/null bs=128M count=1".into(),
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.oom_killed);
    assert_eq!(out.status.outcome, Outcome::Signaled(libc::SIGKILL));
    // within the limit: no OOM
    let out = run(
        &test.sandbox,
        spec_with_memory(
            rootfs.path(),
            "dd if=/dev/zero of=/dev/null bs=4M count=1 2>/dev/null",
        ),
    );
    assert!(out.status.success());
    assert!(!out.status.oom_killed);
}

fn spec_with_memory(rootfs: &Path, script: &str) -> kiln_runner::SandboxSpec {
    let mut spec = spec(rootfs, script);
    spec.limits = Limits {
        memory_bytes: Some(32 << 20),
        ..Limits::default()
    };
    spec
}

#[test]
fn fork_bomb_stops_at_the_pids_limit() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "bomb() { bomb | bomb & }; bomb; sleep 1000");
    spec.limits = Limits {
        pids: Some(20),
        ..Limits::default()
    };
    let mut running = test.sandbox.spawn(spec).unwrap();
    if is_v1() {
        let directory = v1_directory(running.pid(), "pids");
        let deadline = Instant::now() + Duration::from_secs(10);
        // the limit is hit (pids.events counts refused forks) and never exceeded
        loop {
            let current: u64 = fs::read_to_string(directory.join("pids.current"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!(current <= 20, "{current} tasks");
            let events = fs::read_to_string(directory.join("pids.events")).unwrap();
            let refused: u64 = events.split_whitespace().nth(1).unwrap().parse().unwrap();
            if refused > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the fork bomb never reached the limit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    } else {
        std::thread::sleep(Duration::from_millis(500));
    }
    let started = Instant::now();
    running.kill().unwrap();
    assert_eq!(
        running.wait().unwrap().outcome,
        Outcome::Signaled(libc::SIGKILL)
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        fs::read_dir(test.state.path().join("run")).unwrap().count(),
        0
    );
}

#[test]
fn cgroups_are_placed_limited_and_removed() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "sleep 1000");
    spec.limits = Limits {
        memory_bytes: Some(64 << 20),
        cpu: Some(CpuQuota {
            quota_us: 50_000,
            period_us: 100_000,
        }),
        pids: Some(77),
    };
    let mut running = test.sandbox.spawn(spec).unwrap();
    let pid = running.pid();
    let suffix = format!("/kiln/{}", running.id());
    let mut directories = Vec::new();
    if is_v1() {
        for (controller, file, expected) in [
            ("memory", "memory.limit_in_bytes", (64u64 << 20).to_string()),
            ("cpu", "cpu.cfs_quota_us", "50000".to_owned()),
            ("pids", "pids.max", "77".to_owned()),
        ] {
            let directory = v1_directory(pid, controller);
            assert!(
                directory.to_string_lossy().ends_with(&suffix),
                "{}",
                directory.display()
            );
            assert_eq!(
                fs::read_to_string(directory.join(file)).unwrap().trim(),
                expected
            );
            directories.push(directory);
        }
        // nested under this process's own memory cgroup
        let own = v1_directory(std::process::id() as i32, "memory");
        assert!(v1_directory(pid, "memory").starts_with(&own));
    }
    running.kill().unwrap();
    assert_eq!(
        running.wait().unwrap().outcome,
        Outcome::Signaled(libc::SIGKILL)
    );
    for directory in directories {
        assert!(!directory.exists(), "{} left behind", directory.display());
    }
}

#[test]
fn cgroup_v2_hierarchy() {
    let unified = Path::new("/sys/fs/cgroup/unified");
    if !unified.join("cgroup.procs").exists() {
        // a pure v2 host is covered by the Auto tests
        assert!(!is_v1());
        return;
    }
    let rootfs = busybox_rootfs();
    let state = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: state.path().join("run"),
        cgroups: CgroupMode::V2 {
            mount: unified.into(),
        },
    })
    .unwrap();
    assert_eq!(sandbox.cgroup_version(), "v2");
    let mut running = sandbox.spawn(spec(rootfs.path(), "sleep 1000")).unwrap();
    let (_, path) = cgroups_of(running.pid())
        .into_iter()
        .find(|(controllers, _)| controllers.is_empty())
        .unwrap();
    assert!(path.ends_with(&format!("/kiln/{}", running.id())), "{path}");
    let directory = unified.join(path.trim_start_matches('/'));
    assert!(directory.exists());
    running.kill().unwrap();
    running.wait().unwrap();
    assert!(!directory.exists());
    // the hybrid hierarchy has no memory controller: a limit is refused clearly
    let mut limited = spec(rootfs.path(), "true");
    limited.limits.memory_bytes = Some(1 << 20);
    let error = sandbox.spawn(limited).unwrap_err();
    assert!(
        matches!(error, SandboxError::ControllerUnavailable { .. }),
        "{error:?}"
    );
    assert_eq!(fs::read_dir(state.path().join("run")).unwrap().count(), 0);
}

/// A sandbox without limits gets one cgroup of its own, removed afterwards; on a hybrid host
/// (v1 controllers beside a cgroup2 mount) that is a v2 one, entered at clone time
/// (`CLONE_INTO_CGROUP`), with no v1 controller cgroups: moving a process into a cgroup after
/// the fork costs an RCU grace period, 5-20 ms of every `kiln run`.
#[test]
fn unlimited_sandbox_gets_a_cgroup_of_its_own() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut running = test
        .sandbox
        .spawn(spec(rootfs.path(), "sleep 1000"))
        .unwrap();
    let directories = sandbox_cgroup_directories(running.pid(), running.id());
    assert!(!directories.is_empty(), "{:?}", cgroups_of(running.pid()));
    for directory in &directories {
        assert!(directory.exists(), "{}", directory.display());
    }
    let hybrid = is_v1() && Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists();
    if hybrid {
        assert_eq!(directories.len(), 1, "{directories:?}");
        assert!(directories[0].starts_with("/sys/fs/cgroup/unified"));
        // still inside the v1 limits kiln itself runs under
        assert_eq!(
            v1_directory(running.pid(), "memory"),
            v1_directory(std::process::id() as i32, "memory")
        );
    }
    running.kill().unwrap();
    assert_eq!(
        running.wait().unwrap().outcome,
        Outcome::Signaled(libc::SIGKILL)
    );
    for directory in &directories {
        assert!(!directory.exists(), "{} left behind", directory.display());
    }
}

/// Runs in a child process started by `stale_sandboxes_of_a_killed_kiln_are_cleaned`: starts a
/// sandbox, reports it, then waits to be killed.
#[test]
#[ignore]
#[allow(clippy::print_stdout)] // the protocol with the parent test
fn helper_start_and_wait_to_be_killed() {
    let Ok(state_dir) = std::env::var("KILN_TEST_STATE") else {
        return;
    };
    let rootfs = std::env::var("KILN_TEST_ROOTFS").unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: state_dir.into(),
        cgroups: CgroupMode::Auto,
    })
    .unwrap();
    let mut spec = spec(Path::new(&rootfs), "sleep 1000");
    spec.mounts = vec![Mount {
        target: "/stub/dir".into(),
        kind: MountKind::Tmpfs {
            size_bytes: None,
            mode: 0o755,
        },
    }];
    let running = sandbox.spawn(spec).unwrap();
    println!("READY {} {}", running.id(), running.pid());
    std::thread::sleep(Duration::from_secs(1000));
}

/// A sandbox directory is made under a staging name and renamed into place once locked, so a
/// `cleanup_stale` in another process never removes one being made; a staging directory is
/// taken for a killed kiln's leftover only once it is a minute old.
#[test]
fn sandboxes_being_made_are_not_cleaned() {
    let state = tempfile::tempdir().unwrap();
    let staging = state.path().join(".new-run-123");
    fs::create_dir_all(staging.join("files")).unwrap();
    assert_eq!(cleanup_stale(state.path()).unwrap(), Vec::<String>::new());
    assert!(staging.exists());
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::open(&staging).unwrap().set_modified(old).unwrap();
    cleanup_stale(state.path()).unwrap();
    assert!(!staging.exists());
}

#[test]
fn stale_sandboxes_of_a_killed_kiln_are_cleaned() {
    let rootfs = busybox_rootfs();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("run");
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_and_wait_to_be_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("KILN_TEST_STATE", &state_dir)
        .env("KILN_TEST_ROOTFS", rootfs.path())
        .stdout(ProcessStdio::piped())
        .stderr(ProcessStdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(helper.stdout.take().unwrap());
    let mut line = String::new();
    let (id, init_pid) = loop {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "helper ended early"
        );
        // libtest prints "test name ... " on the same line first
        if let Some((_, rest)) = line.trim().split_once("READY ") {
            let mut parts = rest.split(' ');
            break (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().parse::<i32>().unwrap(),
            );
        }
    };
    let cgroup_directories = sandbox_cgroup_directories(init_pid, &id);
    assert!(!cgroup_directories.is_empty());
    assert!(rootfs.path().join("stub/dir").exists());
    // kill -9 the "kiln" process
    helper.kill().unwrap();
    helper.wait().unwrap();
    // its sandbox dies with it (PR_SET_PDEATHSIG on the init)
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{init_pid}")).exists() {
        assert!(Instant::now() < deadline, "sandbox init outlived its kiln");
        std::thread::sleep(Duration::from_millis(10));
    }
    // what it leaked: the state dir entry, the cgroups, the stubs
    assert!(state_dir.join(&id).exists());
    for directory in &cgroup_directories {
        assert!(directory.exists(), "{}", directory.display());
    }
    // a live sandbox in the same state dir is left alone
    let live = Sandbox::new(SandboxConfig {
        state_dir: state_dir.clone(),
        cgroups: CgroupMode::Auto,
    })
    .unwrap();
    let mut running = live.spawn(spec(rootfs.path(), "sleep 1000")).unwrap();
    let cleaned = cleanup_stale(&state_dir).unwrap();
    assert_eq!(cleaned, vec![id.clone()]);
    assert!(state_dir.join(running.id()).exists());
    assert!(!state_dir.join(&id).exists());
    for directory in &cgroup_directories {
        assert!(!directory.exists(), "{} left behind", directory.display());
    }
    assert!(!rootfs.path().join("stub").exists());
    running.kill().unwrap();
    running.wait().unwrap();
    assert_eq!(fs::read_dir(&state_dir).unwrap().count(), 0);
}
