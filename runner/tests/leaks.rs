//! No leaks: after 200 sandboxes in a row, the host's mounts, the kiln cgroup tree, this
//! process's open fds and the state dir are as before.
mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::{busybox_rootfs, sandbox, spec};
use kiln_runner::{Mount, MountKind, Outcome, SandboxError, WaitOptions};

fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

fn mountinfo_lines() -> usize {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count()
}

/// Every `kiln` cgroup directory and what is in it.
fn kiln_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(directory) = stack.pop() {
        let Ok(entries) = fs::read_dir(&directory) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let path = entry.path();
            if path.components().any(|c| c.as_os_str() == "kiln") {
                found.push(path.clone());
            }
            stack.push(path);
        }
    }
    found.sort();
    found
}

fn state_entries(state: &Path) -> usize {
    fs::read_dir(state)
        .map(|entries| entries.count())
        .unwrap_or(0)
}

#[test]
fn two_hundred_sandboxes_leak_nothing() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let state = test.state.path().join("run");
    // warm up: the kiln cgroup parents and the spawner thread exist from here on
    let mut warm = spec(rootfs.path(), "true");
    warm.limits.pids = Some(100);
    assert!(common::run(&test.sandbox, warm).status.success());

    let fds = open_fds();
    let mounts = mountinfo_lines();
    let cgroups = kiln_cgroups();
    let started = std::time::Instant::now();
    for round in 0..200 {
        let mut spec = spec(rootfs.path(), "echo $1 >/dev/null");
        spec.limits.pids = Some(100);
        spec.limits.memory_bytes = Some(256 << 20);
        spec.mounts = vec![
            Mount {
                target: "/scratch/dir".into(),
                kind: MountKind::Tmpfs {
                    size_bytes: None,
                    mode: 0o755,
                },
            },
            Mount {
                target: "/run/secret".into(),
                kind: MountKind::File {
                    contents: b"x".to_vec(),
                    mode: 0o444,
                    uid: 0,
                    gid: 0,
                },
            },
        ];
        match round % 4 {
            // success
            0 => assert!(common::run(&test.sandbox, spec).status.success()),
            // failure of the command
            1 => {
                spec.args = vec!["/bin/sh".into(), "-c".into(), "exit 3".into()];
                assert_eq!(
                    common::run(&test.sandbox, spec).status.outcome,
                    Outcome::Exited(3)
                );
            }
            // failure to start
            2 => {
                spec.args = vec!["/no/such/binary".into()];
                assert!(matches!(
                    test.sandbox.spawn(spec),
                    Err(SandboxError::ExecutableNotFound { .. })
                ));
            }
            // killed by a timeout
            _ => {
                spec.args = vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "sleep 100 & sleep 100".into(),
                ];
                let result = test.sandbox.run(
                    spec,
                    WaitOptions {
                        timeout: Some(std::time::Duration::from_millis(20)),
                    },
                    |_, _| {},
                );
                assert!(matches!(result, Err(SandboxError::TimedOut { .. })));
            }
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(open_fds(), fds, "fds leaked");
    assert_eq!(mountinfo_lines(), mounts, "mounts leaked");
    assert_eq!(kiln_cgroups(), cgroups, "cgroups leaked");
    assert_eq!(state_entries(&state), 0, "state leaked");
    for stub in [
        "scratch",
        "run",
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
    ] {
        assert!(!rootfs.path().join(stub).exists(), "stub {stub} leaked");
    }
    // generous: about 3 s in a release build on an idle machine
    assert!(
        elapsed < std::time::Duration::from_secs(120),
        "200 sandboxes took {elapsed:?}"
    );
}
