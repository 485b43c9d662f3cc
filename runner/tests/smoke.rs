//! First light: a command runs and its output and status come back.
mod common;

#[test]
fn echo_runs() {
    let out = common::sh("echo hello; id -u; hostname; pwd; cat /proc/1/comm");
    assert_eq!(out, "hello\n0\nkiln\n/\nkiln-init\n");
}
