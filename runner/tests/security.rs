//! HOSTILE-INPUTS.md section A: the sandbox against a hostile image or command.
mod common;

use std::fs;
use std::os::unix::fs::symlink;

use common::{busybox_rootfs, run, sandbox, sh, spec};
use kiln_runner::{Mount, MountKind, Outcome, SandboxError, UserError};

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name}:")))
        .map(|value| value.trim().to_owned())
        .unwrap_or_default()
}

/// A.3: Docker's default capability set, inheritable and ambient empty, no_new_privs.
#[test]
fn root_gets_docker_default_capabilities() {
    let status = sh("cat /proc/self/status");
    assert_eq!(status_field(&status, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&status, "CapPrm"), "00000000a80425fb");
    assert_eq!(status_field(&status, "CapBnd"), "00000000a80425fb");
    assert_eq!(status_field(&status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
}

#[test]
fn non_root_user_has_no_effective_capabilities() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "cat /proc/self/status");
    spec.user = Some("app".into());
    let out = run(&test.sandbox, spec);
    assert_eq!(status_field(&out.stdout, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "CapInh"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "CapBnd"), "00000000a80425fb");
}

/// A.2: a host fd leaked without O_CLOEXEC never reaches the container.
#[test]
fn no_fd_above_2_reaches_the_process() {
    // deliberately leak an fd of the host's / without close-on-exec
    let leaked = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(leaked > 2);
    // `[ -e ]` is a shell builtin: it opens nothing, so the shell's own fds are what we see
    let fds = sh(
        "i=0; while [ $i -lt 1100 ]; do [ -e /proc/$$/fd/$i ] && echo -n \"$i \"; i=$((i+1)); done",
    );
    unsafe { libc::close(leaked) };
    assert_eq!(fds.trim(), "0 1 2");
}

/// A.2 (CVE-2024-21626): WORKDIR /proc/self/fd/N must never give a cwd outside the root.
#[test]
fn workdir_through_proc_self_fd_is_refused() {
    let leaked = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    let rootfs = busybox_rootfs();
    let test = sandbox();
    for fd in 3..12 {
        let mut spec = spec(rootfs.path(), "ls /; pwd");
        spec.cwd = format!("/proc/self/fd/{fd}");
        match test.sandbox.spawn(spec) {
            Err(_) => {}
            Ok(mut running) => {
                let mut out = Vec::new();
                let status = running
                    .wait_with_output(Default::default(), |_, bytes| out.extend_from_slice(bytes))
                    .unwrap();
                panic!(
                    "cwd /proc/self/fd/{fd} accepted: {status:?} {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }
    unsafe { libc::close(leaked) };
    // the same through /proc/1/cwd and /proc/self/root/..: all stay inside
    let out = {
        let mut spec = spec(rootfs.path(), "pwd; ls / | tr '\\n' ' '");
        spec.cwd = "/proc/self/root/../../..".into();
        run(&test.sandbox, spec)
    };
    assert_eq!(out.status.outcome, Outcome::Exited(0));
    assert!(out.stdout.contains("bin dev etc"), "{}", out.stdout);
}

/// A.1 (CVE-2019-5736): kiln's binary is never reachable from inside.
#[test]
fn host_binary_is_out_of_reach() {
    let exe = std::env::current_exe().unwrap();
    let before = fs::read(&exe).unwrap();
    let out = sh(
        "for p in /proc/1/exe /proc/1/mem /proc/1/environ /proc/1/root /proc/1/cwd; do \
           if cat $p >/dev/null 2>&1; then echo \"read $p\"; fi; \
         done; \
         if echo x >> /proc/1/exe 2>/dev/null; then echo wrote-exe; fi; \
         if readlink /proc/1/exe >/dev/null 2>&1; then echo readlink-exe; fi; \
         ls /proc/1/fd 2>/dev/null | wc -l; \
         cat /proc/1/status | grep CapEff",
    );
    assert!(!out.contains("read /proc/1/exe"), "{out}");
    assert!(!out.contains("read /proc/1/mem"), "{out}");
    assert!(!out.contains("read /proc/1/environ"), "{out}");
    assert!(!out.contains("wrote-exe"), "{out}");
    assert!(!out.contains("readlink-exe"), "{out}");
    // the init keeps only CAP_KILL
    assert!(out.contains("CapEff:\t0000000000000020"), "{out}");
    assert_eq!(fs::read(&exe).unwrap(), before);
}

/// A.5: masked and read-only paths.
#[test]
fn masked_and_readonly_paths() {
    let out = sh(
        "for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats /proc/timer_stats; do \
           [ -e $f ] && echo \"$f $(wc -c < $f)\"; \
         done; \
         for d in /proc/acpi /proc/scsi /proc/asound /sys/firmware /sys/devices/virtual/powercap; do \
           [ -d $d ] && echo \"$d $(ls -A $d | wc -l)\"; \
         done; \
         for f in /proc/sysrq-trigger /proc/sys/kernel/domainname /proc/sys/vm/drop_caches; do \
           if echo 1 > $f 2>/dev/null; then echo \"writable $f\"; fi; \
         done; \
         if touch /proc/bus/x 2>/dev/null; then echo writable-bus; fi; \
         grep -E ' /proc/(sys|bus|fs|irq|sysrq-trigger) ' /proc/self/mountinfo | awk '{print $5, $6}'",
    );
    for line in out
        .lines()
        .filter(|line| line.starts_with("/proc/") || line.starts_with("/sys/"))
    {
        let mut parts = line.split_whitespace();
        let path = parts.next().unwrap();
        if let Some(size) = parts.next() {
            if size.chars().all(|c| c.is_ascii_digit()) {
                assert_eq!(size, "0", "{path} is not masked: {out}");
            }
        }
    }
    // this kernel has no /proc/kcore or /proc/sysrq-trigger; whatever exists must be masked
    assert!(out.contains("/proc/keys 0"), "{out}");
    assert!(out.contains("/sys/firmware 0"), "{out}");
    assert!(!out.contains("writable"), "{out}");
    let mut readonly = vec!["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"];
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        readonly.push("/proc/sysrq-trigger");
    }
    for path in readonly {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("{path} not mounted: {out}"));
        assert!(line.contains("ro"), "{line}");
    }
}

/// A.6: only the standard devices.
#[test]
fn only_standard_devices() {
    let out = sh("ls -A /dev | tr '\\n' ' '; echo; readlink /dev/ptmx; head -c 7 /dev/urandom | wc -c; echo ok > /dev/null && echo null-ok; \
                  grep -E ' /dev(/pts|/shm|/mqueue)? ' /proc/self/mountinfo | awk '{print $5, $(NF-2)}'; touch /dev/shm/x && echo shm-ok");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first.trim(),
        "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert!(out.contains("pts/ptmx"));
    assert!(out.contains("\n7\n"));
    assert!(out.contains("null-ok"));
    assert!(out.contains("/dev tmpfs"), "{out}");
    assert!(out.contains("/dev/pts devpts"), "{out}");
    assert!(out.contains("/dev/shm tmpfs"), "{out}");
    assert!(out.contains("/dev/mqueue mqueue"), "{out}");
    assert!(out.contains("shm-ok"));
}

/// A.4: /proc, /sys or /dev being a symlink in the image is refused.
#[test]
fn symlinked_system_dirs_are_refused() {
    let test = sandbox();
    for name in ["proc", "sys", "dev"] {
        let rootfs = busybox_rootfs();
        fs::remove_dir(rootfs.path().join(name)).unwrap();
        symlink("/tmp", rootfs.path().join(name)).unwrap();
        let error = test.sandbox.spawn(spec(rootfs.path(), "true")).unwrap_err();
        assert!(
            matches!(error, SandboxError::SystemDirNotOrdinary { .. }),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("must be mounted on ordinary directory"),
            "{error}"
        );
    }
    // missing ones are created (and removed again)
    let rootfs = busybox_rootfs();
    for name in ["proc", "sys", "dev"] {
        fs::remove_dir(rootfs.path().join(name)).unwrap();
    }
    let out = run(&test.sandbox, spec(rootfs.path(), "ls /proc/self/status"));
    assert!(out.status.success(), "{}", out.stderr);
    for name in ["proc", "sys", "dev"] {
        assert!(
            !rootfs.path().join(name).exists(),
            "stub {name} left behind"
        );
    }
    assert_eq!(
        fs::read_dir(test.state.path().join("run")).unwrap().count(),
        0
    );
}

/// A.7: mount targets behind symlinks resolve inside the rootfs, never on the host.
#[test]
fn mount_target_symlinks_resolve_inside_the_root() {
    let rootfs = busybox_rootfs();
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("secret"), "host").unwrap();
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("marker"), "from-source").unwrap();
    // absolute symlink to a host path and a relative one climbing out
    symlink(victim.path(), rootfs.path().join("abs")).unwrap();
    symlink("../../../../../../../../etc", rootfs.path().join("rel")).unwrap();
    let test = sandbox();
    let mut spec = spec(
        rootfs.path(),
        "cat /abs/marker; echo; ls /rel/ | tr '\\n' ' '; echo; cat /etc/passwd | head -1",
    );
    spec.mounts = vec![
        Mount {
            target: "/abs".into(),
            kind: MountKind::Bind {
                source: source.path().into(),
                readonly: true,
            },
        },
        Mount {
            target: "/rel/inner".into(),
            kind: MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o755,
            },
        },
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("from-source"), "{}", out.stdout);
    // /rel/inner landed in the rootfs's /etc
    assert!(out.stdout.contains("inner"), "{}", out.stdout);
    assert!(out.stdout.contains("root:x:0:0"), "{}", out.stdout);
    assert_eq!(
        fs::read_to_string(victim.path().join("secret")).unwrap(),
        "host"
    );
    assert_eq!(fs::read_dir(victim.path()).unwrap().count(), 1);
    assert!(!std::path::Path::new("/etc/inner").exists());
    // the stubs made inside the rootfs are gone again
    assert!(!rootfs.path().join("etc/inner").exists());
    let inside_victim = rootfs.path().join(victim.path().strip_prefix("/").unwrap());
    assert!(
        !inside_victim.exists(),
        "stub {} left behind",
        inside_victim.display()
    );
}

/// A.7 with a race: the target flips between a directory and a symlink to a host directory while
/// sandboxes start; every run either fails or mounts inside the root.
#[test]
fn mount_target_symlink_race() {
    let rootfs = busybox_rootfs();
    let victim = tempfile::tempdir().unwrap();
    fs::write(victim.path().join("secret"), "host").unwrap();
    let source = tempfile::tempdir().unwrap();
    fs::write(source.path().join("marker"), "from-source").unwrap();
    let target = rootfs.path().join("target");
    fs::create_dir(&target).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        let target = target.clone();
        let victim = victim.path().to_path_buf();
        std::thread::spawn(move || {
            let staging = target.with_file_name("target.flip");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = fs::remove_file(&staging);
                let _ = symlink(&victim, &staging);
                let _ = fs::rename(&staging, &target); // fails while target is a non-empty dir
                let _ = fs::remove_file(&target);
                let _ = fs::create_dir(&target);
            }
        })
    };
    let test = sandbox();
    for _ in 0..40 {
        let mut spec = spec(rootfs.path(), "cat /target/marker 2>/dev/null; true");
        spec.mounts = vec![Mount {
            target: "/target".into(),
            kind: MountKind::Bind {
                source: source.path().into(),
                readonly: true,
            },
        }];
        if let Ok(mut running) = test.sandbox.spawn(spec) {
            running
                .wait_with_output(Default::default(), |_, _| {})
                .unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flipper.join().unwrap();
    assert_eq!(
        fs::read_to_string(victim.path().join("secret")).unwrap(),
        "host"
    );
    assert_eq!(fs::read_dir(victim.path()).unwrap().count(), 1);
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(victim.path().to_str().unwrap()));
}

/// A.9 (CVE-2024-23652): stub cleanup re-resolves inside the root and never follows a symlink
/// the command planted.
#[test]
fn stub_cleanup_does_not_follow_planted_symlinks() {
    let rootfs = busybox_rootfs();
    let victim = tempfile::tempdir().unwrap();
    fs::create_dir(victim.path().join("b")).unwrap();
    fs::write(victim.path().join("file"), "").unwrap();
    let test = sandbox();
    let script = format!(
        "mv /a /moved && ln -s {victim} /a && mv /f /f.moved 2>/dev/null; ln -s {victim}/file /f; ls -la / >/dev/null",
        victim = victim.path().display()
    );
    let mut spec = spec(rootfs.path(), &script);
    spec.mounts = vec![
        Mount {
            target: "/a/b".into(),
            kind: MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o755,
            },
        },
        Mount {
            target: "/f".into(),
            kind: MountKind::File {
                contents: b"x".to_vec(),
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        },
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    assert!(
        victim.path().join("b").is_dir(),
        "host directory removed through a planted symlink"
    );
    assert!(
        victim.path().join("file").exists(),
        "host file removed through a planted symlink"
    );
    // the symlinks the command made stay (they are its output); the moved stub stays (not ours)
    assert!(fs::symlink_metadata(rootfs.path().join("a"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn empty_stubs_are_removed_and_non_empty_ones_kept() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "mkdir -p /keep/extra && touch /keep/extra/f");
    spec.mounts = vec![
        Mount {
            target: "/gone/deep/mnt".into(),
            kind: MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o755,
            },
        },
        Mount {
            target: "/keep/mnt".into(),
            kind: MountKind::Tmpfs {
                size_bytes: None,
                mode: 0o755,
            },
        },
    ];
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!rootfs.path().join("gone").exists());
    assert!(!rootfs.path().join("keep/mnt").exists());
    assert!(rootfs.path().join("keep/extra/f").exists());
    assert!(!rootfs.path().join("etc/hostname").exists());
    assert!(!rootfs.path().join("etc/hosts").exists());
    assert!(!rootfs.path().join("etc/resolv.conf").exists());
}

/// A.10: USER is resolved from the image's files, with Docker's rules.
#[test]
fn user_lookup_rules() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let check = |user: &str, env: Option<&str>| {
        let mut spec = spec(
            rootfs.path(),
            "echo $(id -u) $(id -g) $(id -G | tr ' ' ',') $HOME",
        );
        spec.user = Some(user.into());
        if let Some(env) = env {
            spec.env.push(env.into());
        }
        let out = run(&test.sandbox, spec);
        assert!(out.status.success(), "{user}: {}", out.stderr);
        out.stdout.trim().to_owned()
    };
    assert_eq!(check("app", None), "1000 1000 1000,1,29 /home/app");
    assert_eq!(check("app:audio", None), "1000 29 29 /home/app");
    assert_eq!(check("1000", None), "1000 1000 1000,1,29 /home/app");
    assert_eq!(check("4321:8765", None), "4321 8765 8765 /");
    assert_eq!(check("daemon", Some("HOME=/custom")), "1 1 1 /custom");
    assert_eq!(check("root", None), "0 0 0 /root");

    for (user, expected) in [
        (
            "nobody",
            UserError::NoSuchUser {
                name: "nobody".into(),
            },
        ),
        (
            "app:nogroup",
            UserError::NoSuchGroup {
                name: "nogroup".into(),
            },
        ),
    ] {
        let mut spec = spec(rootfs.path(), "true");
        spec.user = Some(user.into());
        match test.sandbox.spawn(spec) {
            Err(SandboxError::User(error)) => assert_eq!(error, expected),
            other => panic!("{user}: {other:?}"),
        }
    }
    for user in ["2147483648", "0:2147483648", "4294967296"] {
        let mut spec = spec(rootfs.path(), "true");
        spec.user = Some(user.into());
        match test.sandbox.spawn(spec) {
            Err(SandboxError::User(UserError::IdOutOfRange { .. })) => {}
            other => panic!("{user}: {other:?}"),
        }
    }
    // the host's NSS is never consulted: a user that exists on the host but not in the image
    let mut spec = spec(rootfs.path(), "true");
    spec.user = Some("sys".into());
    assert!(matches!(
        test.sandbox.spawn(spec),
        Err(SandboxError::User(UserError::NoSuchUser { .. }))
    ));
}

/// A.11: bad sandbox ids are refused; the state dir is private.
#[test]
fn ids_and_state_dir_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let rootfs = busybox_rootfs();
    let test = sandbox();
    for id in ["../escape", "a/b", "-x", ""] {
        let mut spec = spec(rootfs.path(), "true");
        spec.id = Some(id.into());
        assert!(
            matches!(
                test.sandbox.spawn(spec),
                Err(SandboxError::InvalidId { .. })
            ),
            "{id}"
        );
    }
    let mode = fs::metadata(test.state.path().join("run"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// kiln's own command line (which may carry secrets such as `kiln run -e PASSWORD=...`) is not
/// visible in the container through the init's `/proc/1/cmdline`.
#[test]
fn init_does_not_show_kilns_command_line() {
    let own: Vec<String> = std::env::args().collect();
    let cmdline = sh("cat /proc/1/cmdline | tr '\\0' ' '");
    for argument in own.iter().filter(|argument| argument.len() > 3) {
        assert!(
            !cmdline.contains(argument.as_str()),
            "/proc/1/cmdline shows {argument:?}: {cmdline:?}"
        );
    }
}
