//! Shared helpers for the store tests: temporary roots that unmount what they hold, and
//! child processes that run a named role of the test binary itself.
#![allow(dead_code, clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A temporary kiln root; on drop every mount under it is detached and the tree removed.
pub struct TestRoot {
    directory: tempfile::TempDir,
    path: PathBuf,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        Self::with_prefix_len(0)
    }

    /// A root below a chain of long directory names making its path at least `length` bytes.
    pub fn with_prefix_len(length: usize) -> TestRoot {
        let directory = tempfile::Builder::new()
            .prefix("kiln-store-test-")
            .tempdir()
            .expect("create temp dir");
        let mut path = directory.path().to_path_buf();
        while path.as_os_str().len() < length {
            path.push("a-rather-long-directory-name-to-push-the-root-path-beyond-what-fits");
        }
        path.push("root");
        std::fs::create_dir_all(&path).expect("create root");
        TestRoot { directory, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        unmount_all_under(self.directory.path());
    }
}

/// Detaches every mount under `prefix`, deepest first.
pub fn unmount_all_under(prefix: &Path) {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(field.replace("\\040", " ")))
        .filter(|path| path.starts_with(prefix))
        .collect();
    points.sort_by_key(|path| std::cmp::Reverse(path.components().count()));
    for point in points {
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mount points under `prefix` right now.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|path| path.starts_with(prefix))
        .collect()
}

pub const ROLE_VARIABLE: &str = "KILN_STORE_TEST_ROLE";
pub const ROOT_VARIABLE: &str = "KILN_STORE_TEST_ROOT";

/// A child process running `role` (dispatched by the test named `entry` of this binary).
pub struct RoleChild {
    pub child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl RoleChild {
    pub fn spawn(entry: &str, role: &str, root: &Path, extra: &[(&str, String)]) -> RoleChild {
        let mut command = Command::new(std::env::current_exe().expect("current exe"));
        command
            .args([entry, "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE_VARIABLE, role)
            .env(ROOT_VARIABLE, root)
            .stdout(Stdio::piped());
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn role child");
        let stdout = child.stdout.take().expect("child stdout");
        RoleChild {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// Waits for the child to print a line starting with `marker`; returns the rest.
    pub fn wait_for(&mut self, marker: &str) -> String {
        for line in self.lines.by_ref() {
            let line = line.expect("read child output");
            // libtest may print "test name ... " before the child's own output.
            if let Some(position) = line.find(marker) {
                return line[position + marker.len()..].trim().to_string();
            }
        }
        panic!("child exited before printing {marker}");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit; whether it succeeded.
    pub fn wait_success(&mut self) -> bool {
        for _ in self.lines.by_ref() {}
        self.child
            .wait()
            .map(|status| status.success())
            .unwrap_or(false)
    }
}

impl Drop for RoleChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The role this process was started for, with its root, if it is a role child.
pub fn current_role() -> Option<(String, PathBuf)> {
    let role = std::env::var(ROLE_VARIABLE).ok()?;
    let root = std::env::var(ROOT_VARIABLE).ok()?;
    Some((role, PathBuf::from(root)))
}

/// Deterministic pseudo-random bytes.
pub fn pattern_bytes(length: usize, seed: u8) -> Vec<u8> {
    let mut state = (seed as u32).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}
