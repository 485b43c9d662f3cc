//! The command's life: exit statuses, signals, output streaming, stdin, tty, kill, timeout.
mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, run, sandbox, spec};
use kiln_runner::{Outcome, SandboxError, SandboxSpec, Stdio, Stream, TtySize, WaitOptions};

#[test]
fn exit_codes_and_signals_are_exact() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    for (script, expected) in [
        ("exit 0", Outcome::Exited(0)),
        ("exit 1", Outcome::Exited(1)),
        ("exit 42", Outcome::Exited(42)),
        ("exit 255", Outcome::Exited(255)),
        ("kill -TERM $$", Outcome::Signaled(libc::SIGTERM)),
        ("kill -KILL $$", Outcome::Signaled(libc::SIGKILL)),
        ("kill -SEGV $$", Outcome::Signaled(libc::SIGSEGV)),
        ("kill -USR1 $$", Outcome::Signaled(libc::SIGUSR1)),
    ] {
        let out = run(&test.sandbox, spec(rootfs.path(), script));
        assert_eq!(out.status.outcome, expected, "{script}");
        assert!(!out.status.oom_killed);
    }
}

#[test]
fn executable_lookup_follows_the_container_path() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    // found through PATH
    let mut spec1 = SandboxSpec::new(rootfs.path(), vec!["echo".into(), "found".into()]);
    spec1.env = vec!["PATH=/nowhere:/bin".into()];
    let out = run(&test.sandbox, spec1);
    assert_eq!(out.stdout, "found\n");
    // no PATH in env: Docker's default is used and added
    let mut spec2 = SandboxSpec::new(
        rootfs.path(),
        vec!["sh".into(), "-c".into(), "echo $PATH".into()],
    );
    spec2.env = vec![];
    let out = run(&test.sandbox, spec2);
    assert_eq!(out.stdout.trim(), kiln_runner::DEFAULT_PATH);
    // not found
    let error = test
        .sandbox
        .spawn(SandboxSpec::new(rootfs.path(), vec!["no-such-tool".into()]))
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::ExecutableNotFound { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains("executable file not found in $PATH"));
    let error = test
        .sandbox
        .spawn(SandboxSpec::new(rootfs.path(), vec!["/bin/missing".into()]))
        .unwrap_err();
    assert!(
        matches!(error, SandboxError::ExecutableNotFound { .. }),
        "{error:?}"
    );
    // not executable
    std::fs::write(rootfs.path().join("bin/data"), "x").unwrap();
    let error = test
        .sandbox
        .spawn(SandboxSpec::new(rootfs.path(), vec!["/bin/data".into()]))
        .unwrap_err();
    assert!(matches!(error, SandboxError::Exec { .. }), "{error:?}");
    // a failed start leaves nothing behind
    assert_eq!(
        std::fs::read_dir(test.state.path().join("run"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn env_and_workdir() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(
        rootfs.path(),
        "pwd; echo $FOO; echo $HOME; ls -ld /work/sub | cut -c1-10",
    );
    spec.env.push("FOO=bar baz".into());
    spec.cwd = "/work/../work/sub/".into();
    let out = run(&test.sandbox, spec);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, "/work/sub\nbar baz\n/root\ndrwxr-xr-x\n");
    // WORKDIR stays, like Docker's
    assert!(rootfs.path().join("work/sub").is_dir());
}

#[test]
fn background_processes_do_not_hang_the_run() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let started = Instant::now();
    // the background sleeps hold stdout and stderr open; they die with the pid namespace
    let out = run(
        &test.sandbox,
        spec(rootfs.path(), "sleep 1000 & (sleep 1000 >&2 &); echo done"),
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, "done\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn init_is_pid_1_and_reaps_zombies() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    // orphans are reparented to pid 1 and reaped: no zombie accumulates
    let script = "echo $$; for i in 1 2 3 4 5; do (sh -c 'exit 0' &) ; done; sleep 0.3; \
                  ps -o pid,stat,comm | awk 'NR>1 {print $2}' | grep -c Z; ls /proc | grep -E '^[0-9]+$' | wc -l";
    let out = run(&test.sandbox, spec(rootfs.path(), script));
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0], "2",
        "the command should be pid 2 under the init: {}",
        out.stdout
    );
    assert_eq!(lines[1], "0", "zombies left: {}", out.stdout);
    // init, sh, ls and grep at most
    assert!(
        lines[2].trim().parse::<u32>().unwrap() <= 5,
        "{}",
        out.stdout
    );
}

#[test]
fn output_is_streamed_in_order() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let started = Instant::now();
    let mut chunks: Vec<(Stream, String, Duration)> = Vec::new();
    let status = test
        .sandbox
        .run(
            spec(
                rootfs.path(),
                "echo a; sleep 0.3; echo b >&2; sleep 0.3; echo c",
            ),
            WaitOptions::default(),
            |stream, bytes| {
                chunks.push((
                    stream,
                    String::from_utf8_lossy(bytes).into_owned(),
                    started.elapsed(),
                ))
            },
        )
        .unwrap();
    let finished = started.elapsed();
    assert!(status.success());
    let seen: Vec<(Stream, &str)> = chunks
        .iter()
        .map(|(s, text, _)| (*s, text.as_str()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (Stream::Stdout, "a\n"),
            (Stream::Stderr, "b\n"),
            (Stream::Stdout, "c\n")
        ]
    );
    // the first chunk arrived while the command was still running
    assert!(
        finished - chunks[0].2 >= Duration::from_millis(400),
        "{chunks:?} {finished:?}"
    );
}

#[test]
fn stdin_is_passed_through() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(rootfs.path(), "tr a-z A-Z");
    spec.stdin = Stdio::Pipe;
    let mut running = test.sandbox.spawn(spec).unwrap();
    let mut stdin = running.take_stdin().unwrap();
    let mut stdout = running.take_stdout().unwrap();
    stdin.write_all(b"hello sandbox\n").unwrap();
    drop(stdin);
    let mut text = String::new();
    stdout.read_to_string(&mut text).unwrap();
    assert_eq!(text, "HELLO SANDBOX\n");
    assert!(running.wait().unwrap().success());
}

#[test]
fn tty_is_a_real_terminal_inside() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut spec = spec(
        rootfs.path(),
        "tty; stty size; [ -t 0 ] && [ -t 1 ] && echo is-a-tty; read line; echo got:$line",
    );
    spec.tty = Some(TtySize {
        rows: 33,
        cols: 101,
    });
    let mut running = test.sandbox.spawn(spec).unwrap();
    let mut pty = running.take_pty().unwrap();
    pty.write_all(b"typed\n").unwrap();
    let mut output = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match pty.read(&mut buffer) {
            Ok(0) | Err(_) => break, // EIO once the terminal is closed
            Ok(count) => output.extend_from_slice(&buffer[..count]),
        }
    }
    let text = String::from_utf8_lossy(&output).replace('\r', "");
    assert!(running.wait().unwrap().success(), "{text}");
    assert!(text.contains("/dev/pts/0\n"), "{text}");
    assert!(text.contains("33 101\n"), "{text}");
    assert!(text.contains("is-a-tty"), "{text}");
    assert!(text.contains("got:typed"), "{text}");
}

#[test]
fn kill_from_another_thread_and_cleanup() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut running = test
        .sandbox
        .spawn(spec(rootfs.path(), "sleep 1000"))
        .unwrap();
    let killer = running.killer();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        killer.kill().unwrap();
    });
    let status = running.wait().unwrap();
    thread.join().unwrap();
    assert_eq!(status.outcome, Outcome::Signaled(libc::SIGKILL));
    assert_eq!(
        std::fs::read_dir(test.state.path().join("run"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn timeout_kills_and_cleans_up() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let started = Instant::now();
    let error = test
        .sandbox
        .run(
            spec(rootfs.path(), "sleep 1000"),
            WaitOptions {
                timeout: Some(Duration::from_millis(300)),
            },
            |_, _| {},
        )
        .unwrap_err();
    assert!(matches!(error, SandboxError::TimedOut { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        std::fs::read_dir(test.state.path().join("run"))
            .unwrap()
            .count(),
        0
    );
    let mut running = test
        .sandbox
        .spawn(spec(rootfs.path(), "sleep 1000"))
        .unwrap();
    assert!(matches!(
        running.wait_timeout(Duration::from_millis(100)),
        Err(SandboxError::TimedOut { .. })
    ));
}

#[test]
fn signals_are_forwarded_to_the_command() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let mut running = test
        .sandbox
        .spawn(spec(
            rootfs.path(),
            "trap 'echo term; exit 7' TERM; echo ready; while true; do sleep 0.05; done",
        ))
        .unwrap();
    let mut stdout = running.take_stdout().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    running.signal(libc::SIGTERM).unwrap();
    let status = running.wait().unwrap();
    assert_eq!(status.outcome, Outcome::Exited(7));
}

#[test]
fn dropping_a_running_sandbox_cleans_up() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let running = test
        .sandbox
        .spawn(spec(rootfs.path(), "sleep 1000"))
        .unwrap();
    let pid = running.pid();
    drop(running);
    assert_eq!(
        std::fs::read_dir(test.state.path().join("run"))
            .unwrap()
            .count(),
        0
    );
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn async_wait() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut running = test
        .sandbox
        .spawn(spec(rootfs.path(), "sleep 0.2; exit 3"))
        .unwrap();
    let status = runtime.block_on(async {
        let waited = tokio::time::timeout(Duration::from_millis(50), running.wait_async()).await;
        assert!(waited.is_err(), "finished too early");
        running.wait_async().await
    });
    assert_eq!(status.unwrap().outcome, Outcome::Exited(3));
}

#[test]
fn many_sandboxes_at_once() {
    let rootfs = busybox_rootfs();
    let test = sandbox();
    std::thread::scope(|scope| {
        for index in 0..6 {
            let test = &test;
            let rootfs = &rootfs;
            scope.spawn(move || {
                for round in 0..5 {
                    let out = run(
                        &test.sandbox,
                        spec(rootfs.path(), &format!("echo {index}-{round}; hostname")),
                    );
                    assert_eq!(out.stdout, format!("{index}-{round}\nkiln\n"));
                }
            });
        }
    });
    assert_eq!(
        std::fs::read_dir(test.state.path().join("run"))
            .unwrap()
            .count(),
        0
    );
}
