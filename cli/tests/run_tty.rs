//! `kiln run -t` / `-i` and signals: the container gets a pty with `-t`, kiln's standard
//! input with `-i`, and a Ctrl-C (SIGINT to kiln, or the ^C key on a terminal) reaches the
//! container's process, whose exit code kiln exits with; what a `kiln run` killed with SIGKILL
//! leaves is cleaned by the next one.

mod image_support;
mod pty_support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdout, Stdio};
use std::time::Duration;

use image_support::{push, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry};
use pty_support::{wait_with_timeout, Pty};

const WAIT: Duration = Duration::from_secs(60);

/// A store holding busybox as `box:1`.
fn kiln_with_busybox() -> Kiln {
    let registry = TestRegistry::start();
    let name = push(&registry, &busybox_image(), "busybox:latest").to_string();
    let kiln = Kiln::new();
    kiln.ok(&["pull", "-q", &name]);
    kiln.ok(&["tag", &name, "box:1"]);
    kiln
}

/// The trap script: says it is ready, then loops until SIGINT makes it exit with 3.
const TRAP_SCRIPT: &str = "trap 'echo got-int; exit 3' INT; echo ready; \
                           while true; do sleep 1; done";

#[test]
fn tty_gives_the_container_a_pty() {
    let kiln = kiln_with_busybox();
    // kiln's own stdio are not terminals here: the pty is the container's.
    let output = kiln
        .command(&[
            "run",
            "--rm",
            "-t",
            "box:1",
            "sh",
            "-c",
            "tty; test -t 0 && echo stdin-is-a-tty; test -t 1 && echo stdout-is-a-tty; \
             stty size",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("kiln run -t");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{shown}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = shown
        .lines()
        .map(|line| line.trim_end_matches('\r'))
        .collect();
    assert!(
        lines[0].starts_with("/dev/pts/") && lines[0]["/dev/pts/".len()..].parse::<u32>().is_ok(),
        "{shown:?}"
    );
    assert!(lines.contains(&"stdin-is-a-tty"), "{shown:?}");
    assert!(lines.contains(&"stdout-is-a-tty"), "{shown:?}");
    // A pty line discipline turns \n into \r\n, as docker -t shows.
    assert!(shown.contains("\r\n"), "{shown:?}");

    // Without -t: no terminal.
    let output = kiln
        .command(&[
            "run",
            "--rm",
            "box:1",
            "sh",
            "-c",
            "tty; test -t 0 || echo no-tty",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("kiln run");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("not a tty"), "{shown}");
    assert!(shown.contains("no-tty"), "{shown}");
}

#[test]
fn interactive_passes_standard_input() {
    let kiln = kiln_with_busybox();
    let mut child = kiln
        .command(&["run", "--rm", "-i", "box:1", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln run -i");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"data\nmore data\n").expect("writing");
    drop(stdin);
    let output = child.wait_with_output().expect("kiln run -i");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "data\nmore data\n");

    // Without -i the container's stdin is empty.
    let output = kiln
        .command(&["run", "--rm", "box:1", "cat"])
        .stdin(Stdio::piped())
        .output()
        .expect("kiln run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stdout.is_empty(),
        "stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kiln run --rm box:1 sh -c SCRIPT` started, once the script printed its first line, `ready`.
fn run_until_ready(kiln: &Kiln, script: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = kiln
        .command(&["run", "--rm", "box:1", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln run");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading");
    assert_eq!(line, "ready\n");
    (child, stdout)
}

/// Regression: kiln installed its signal handlers only after the container had started, so a
/// SIGINT right after the container's first output killed kiln (leaving the container to its
/// parent-death signal) instead of reaching the container.
#[test]
fn sigint_to_kiln_reaches_the_container_and_its_exit_code_is_kiln_s() {
    let kiln = kiln_with_busybox();
    let (mut child, mut stdout) = run_until_ready(&kiln, TRAP_SCRIPT);
    let pid = i32::try_from(child.id()).expect("pid");
    // SAFETY: a signal to the kiln process this test started
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = wait_with_timeout(&mut child, WAIT);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("reading");
    assert_eq!(rest, "got-int\n");
    assert_eq!(status.code(), Some(3), "{status:?}");
}

/// Regression: only `kiln build` cleaned the sandbox state directories and cgroups of killed
/// kiln processes, so those of a killed `kiln run` stayed until the next build.
#[test]
fn leftovers_of_a_killed_kiln_run_are_cleaned_by_the_next_run() {
    let kiln = kiln_with_busybox();
    let (mut child, _stdout) = run_until_ready(&kiln, "echo ready; sleep 1000");
    child.kill().expect("SIGKILL to kiln");
    wait_with_timeout(&mut child, WAIT);
    let state_dir = kiln.root().join("run");
    let left: Vec<_> = std::fs::read_dir(&state_dir)
        .expect("the state directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    kiln.ok(&["run", "--rm", "box:1", "true"]);
    let left: Vec<_> = std::fs::read_dir(&state_dir)
        .expect("the state directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn ctrl_c_on_a_terminal_with_it_reaches_the_container() {
    let kiln = kiln_with_busybox();
    let pty = Pty::open();
    let mut child =
        pty.spawn(&mut kiln.command(&["run", "--rm", "-it", "box:1", "sh", "-c", TRAP_SCRIPT]));
    pty.wait_for("ready", WAIT);
    // While kiln runs, its terminal is raw: the ^C byte goes to the container's pty, whose
    // line discipline sends SIGINT to the container's foreground processes.
    let raw = pty.termios();
    assert_eq!(raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
    pty.type_text(b"\x03");
    let status = wait_with_timeout(&mut child, WAIT);
    let shown = pty.wait_for("got-int", WAIT);
    assert_eq!(status.code(), Some(3), "{status:?}: {shown}");
    // The terminal is put back.
    let restored = pty.termios();
    assert_ne!(restored.c_lflag & libc::ICANON, 0);
    assert_ne!(restored.c_lflag & libc::ECHO, 0);

    // Typed input reaches the container through its pty.
    let pty = Pty::open();
    let mut child = pty.spawn(&mut kiln.command(&[
        "run",
        "--rm",
        "-it",
        "box:1",
        "sh",
        "-c",
        "echo ready; read line; echo \"got:$line\"",
    ]));
    pty.wait_for("ready", WAIT);
    pty.type_text(b"hello\r");
    let status = wait_with_timeout(&mut child, WAIT);
    let shown = pty.wait_for("got:hello", WAIT);
    assert!(status.success(), "{shown}");
}
