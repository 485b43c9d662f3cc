//! Shared helpers for the sandbox tests: a busybox rootfs, a sandbox per test, output capture.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_runner::{
    CgroupMode, ExitStatus, Outcome, Sandbox, SandboxConfig, SandboxSpec, Stream, WaitOptions,
};

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
app:x:1000:1000:App:/home/app:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\n\
daemon:x:1:app\n\
tty:x:5:\n\
audio:x:29:app\n\
app:x:1000:\n";

/// A temporary busybox rootfs with /etc/passwd and /etc/group.
pub struct Rootfs {
    pub dir: tempfile::TempDir,
}

impl Rootfs {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn busybox_rootfs() -> Rootfs {
    let dir = tempfile::Builder::new()
        .prefix("kiln-rootfs-")
        .tempdir()
        .expect("tempdir");
    let root = dir.path();
    for sub in [
        "bin", "etc", "proc", "sys", "dev", "tmp", "root", "home/app", "usr/bin", "sbin",
    ] {
        fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod tmp");
    fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("busybox-static must be installed (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = symlink("busybox", root.join("bin").join(applet));
        }
    }
    fs::write(root.join("etc/passwd"), PASSWD).expect("passwd");
    fs::write(root.join("etc/group"), GROUP).expect("group");
    Rootfs { dir }
}

/// A sandbox with its own state dir.
pub struct TestSandbox {
    pub sandbox: Sandbox,
    pub state: tempfile::TempDir,
}

pub fn sandbox() -> TestSandbox {
    let state = tempfile::Builder::new()
        .prefix("kiln-state-")
        .tempdir()
        .expect("tempdir");
    let sandbox = Sandbox::new(SandboxConfig {
        state_dir: state.path().join("run"),
        cgroups: CgroupMode::Auto,
    })
    .expect("sandbox");
    TestSandbox { sandbox, state }
}

pub fn spec(rootfs: &Path, script: &str) -> SandboxSpec {
    SandboxSpec::new(rootfs, vec!["/bin/sh".into(), "-c".into(), script.into()])
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(sandbox: &Sandbox, spec: SandboxSpec) -> Output {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let status = sandbox
        .run(spec, WaitOptions::default(), |stream, bytes| match stream {
            Stream::Stderr => stderr.extend_from_slice(bytes),
            _ => stdout.extend_from_slice(bytes),
        })
        .expect("sandbox run");
    Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Runs a shell script as root in a fresh busybox rootfs and returns its stdout, asserting success.
pub fn sh(script: &str) -> String {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let output = run(&test.sandbox, spec(rootfs.path(), script));
    assert_eq!(
        output.status.outcome,
        Outcome::Exited(0),
        "script failed: {script}\nstdout: {}\nstderr: {}",
        output.stdout,
        output.stderr
    );
    output.stdout
}

/// Unmounts a path when dropped.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
