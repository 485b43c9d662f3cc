//! First light: a command runs and its output and status come back.
mod common;

#[test]
fn echo_runs() {
    let out = common::sh("echo hello; id; cat /proc/self/status | grep Cap; ls /dev; ls -l /proc/self/fd; hostname; pwd; cat /proc/1/cmdline | tr '\\0' ' '");
    eprintln!("{out}");
    assert!(out.contains("hello"));
}
