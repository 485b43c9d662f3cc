//! Namespaces and mounts: what the command can see of the host.
mod common;

use std::fs;
use std::process::Command;

use common::{busybox_rootfs, run, sandbox, spec, MountGuard};
use kiln_runner::{Mount, MountKind, Network, NetworkFiles};

#[test]
fn only_the_containers_processes_are_visible() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let out = run(
        &test.sandbox,
        spec(
            rootfs.path(),
            "ps -o pid,comm | awk 'NR>1 {print $1}' | sort -n | tr '\\n' ' '",
        ),
    );
    let pids: Vec<u32> = out
        .stdout
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids[0], 1, "{}", out.stdout);
    assert!(
        pids.iter().all(|pid| *pid < 10),
        "host processes visible: {}",
        out.stdout
    );
}

#[test]
fn network_none_has_only_loopback_up() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let out = run(
        &test.sandbox,
        spec(
            rootfs.path(),
            "ls /sys/class/net | tr '\\n' ' '; echo; cat /sys/class/net/lo/flags; \
        ping -c1 -W2 127.0.0.1 | grep -c 'bytes from'",
        ),
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0].trim(), "lo", "{}", out.stdout);
    let flags = u32::from_str_radix(lines[1].trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & libc::IFF_UP as u32, libc::IFF_UP as u32);
    assert_eq!(
        lines[2], "1",
        "loopback traffic failed: {} {}",
        out.stdout, out.stderr
    );
}

#[test]
fn network_host_shares_the_stack_and_gets_the_files() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "ls /sys/class/net | sort | tr '\\n' ' '; echo; cat /etc/resolv.conf /etc/hosts /etc/hostname; \
        if echo x >> /etc/hosts 2>/dev/null; then echo hosts-writable; fi");
    spec.network = Network::Host;
    spec.hostname = "buildbox".into();
    spec.network_files = NetworkFiles {
        resolv_conf: Some(b"nameserver 127.0.0.53\n".to_vec()),
        hosts: Some(b"127.0.0.1 localhost custom\n".to_vec()),
    };
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(out.stdout.lines().next().unwrap().trim(), host.join(" "));
    assert!(
        out.stdout
            .contains("nameserver 127.0.0.53\n127.0.0.1 localhost custom\nbuildbox\n"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("hosts-writable"));
}

#[test]
fn own_hostname_and_ipc() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let host_name = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let mut spec = spec(
        rootfs.path(),
        "hostname; cat /etc/hostname; hostname other && hostname; ipcs -q | wc -l",
    );
    spec.hostname = "sandboxed".into();
    let out = run(&test.sandbox, spec);
    assert!(
        out.stdout.starts_with("sandboxed\nsandboxed\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host_name
    );
}

#[test]
fn proc_sys_and_sys_are_read_only() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let out = run(&test.sandbox, spec(rootfs.path(), "echo 1 > /proc/sys/vm/drop_caches; echo $?; echo x > /proc/sys/kernel/hostname; echo $?; touch /sys/x; echo $?; mount -t tmpfs none /mnt; echo $?"));
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    for (index, line) in out.stdout.lines().enumerate() {
        assert_ne!(line, "0", "write {index} succeeded: {}", out.stdout);
    }
}

#[test]
fn caller_mounts() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let shared = tempfile::tempdir().unwrap();
    fs::write(shared.path().join("in"), "from-host").unwrap();
    let readonly = tempfile::tempdir().unwrap();
    fs::write(readonly.path().join("ro-file"), "ro").unwrap();
    let single = tempfile::NamedTempFile::new().unwrap();
    fs::write(single.path(), "single-file").unwrap();
    let mut spec = spec(
        rootfs.path(),
        "cat /shared/in; echo; echo out > /shared/out; cat /ro/ro-file; echo; touch /ro/x 2>/dev/null || echo ro-refused; \
         cat /etc/single; echo; stat -c '%a' /scratch; df -k /scratch | awk 'NR==2 {print $2}'; \
         cat /run/secrets/token; echo; stat -c '%a %u:%g' /run/secrets/token; awk '$2 == \"/run/secrets/token\" {print $3}' /proc/mounts; echo y > /run/secrets/token 2>/dev/null || echo secret-ro",
    );
    spec.mounts = vec![
        Mount {
            target: "/shared".into(),
            kind: MountKind::Bind {
                source: shared.path().into(),
                readonly: false,
            },
        },
        Mount {
            target: "/ro".into(),
            kind: MountKind::Bind {
                source: readonly.path().into(),
                readonly: true,
            },
        },
        Mount {
            target: "/etc/single".into(),
            kind: MountKind::Bind {
                source: single.path().into(),
                readonly: true,
            },
        },
        Mount {
            target: "/scratch".into(),
            kind: MountKind::Tmpfs {
                size_bytes: Some(4 << 20),
                mode: 0o1777,
            },
        },
        Mount {
            target: "/run/secrets/token".into(),
            kind: MountKind::File {
                contents: b"s3cret".to_vec(),
                mode: 0o400,
                uid: 1000,
                gid: 1001,
            },
        },
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "from-host\nro\nro-refused\nsingle-file\n1777\n4096\ns3cret\n400 1000:1001\ntmpfs\nsecret-ro\n"
    );
    assert_eq!(
        fs::read_to_string(shared.path().join("out")).unwrap(),
        "out\n"
    );
    assert!(!rootfs.path().join("run").exists());
}

#[test]
fn mount_targets_inside_a_tmpfs_mount() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "cat /run/secrets/a; ls /run");
    spec.mounts = vec![
        Mount {
            target: "/run".into(),
            kind: MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o755,
            },
        },
        Mount {
            target: "/run/secrets/a".into(),
            kind: MountKind::File {
                contents: b"nested".to_vec(),
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        },
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "nestedsecrets\n");
    assert!(!rootfs.path().join("run").exists());
}

#[test]
fn readonly_rootfs() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "touch /x 2>/dev/null && echo wrote; touch /tmp/y 2>/dev/null && echo wrote-tmp; touch /scratch/z && echo scratch-ok");
    spec.readonly_rootfs = true;
    spec.mounts = vec![Mount {
        target: "/scratch".into(),
        kind: MountKind::Tmpfs {
            size_bytes: None,
            mode: 0o755,
        },
    }];
    let out = run(&test.sandbox, spec);
    assert_eq!(out.stdout, "scratch-ok\n", "{}", out.stderr);
}

/// The usual case: the rootfs is an overlayfs mount; the command's writes land in the upper dir
/// and kiln's own stubs do not.
#[test]
fn works_on_overlayfs() {
    let lower = busybox_rootfs();
    let work = tempfile::tempdir().unwrap();
    for sub in ["upper", "work", "merged"] {
        fs::create_dir(work.path().join(sub)).unwrap();
    }
    let merged = work.path().join("merged");
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.path().display(),
        work.path().join("upper").display(),
        work.path().join("work").display()
    );
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(status.success());
    let _guard = MountGuard(merged.clone());
    let test = sandbox();
    let mut spec = spec(
        &merged,
        "echo built > /built.txt; rm /bin/vi; cat /etc/hostname",
    );
    spec.mounts = vec![Mount {
        target: "/cache/dir".into(),
        kind: MountKind::Tmpfs {
            size_bytes: None,
            mode: 0o755,
        },
    }];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    let mut upper: Vec<String> = walk(&work.path().join("upper"));
    upper.sort();
    // the new file and the whiteout of /bin/vi; no stub of /etc/hostname, /cache or /proc. /etc
    // was copied up by the stub of /etc/hostname, but its times are restored, so it is unchanged
    assert_eq!(
        upper,
        vec!["bin", "bin/vi", "built.txt", "etc"],
        "{upper:?}"
    );
    let lower_etc = fs::metadata(lower.path().join("etc")).unwrap();
    let upper_etc = fs::metadata(work.path().join("upper/etc")).unwrap();
    assert_eq!(lower_etc.modified().unwrap(), upper_etc.modified().unwrap());
    assert_eq!(
        fs::read_dir(work.path().join("upper/etc")).unwrap().count(),
        0
    );
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        mountinfo.matches(merged.to_str().unwrap()).count(),
        1,
        "mounts propagated to the host"
    );
}

fn walk(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            found.push(
                entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            }
        }
    }
    found
}
