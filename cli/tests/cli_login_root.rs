//! `kiln login` asking for the user name and password on a real terminal (a pty), as
//! `docker login` does, against a registry with basic (htpasswd) auth; and `--root` given
//! before or after the subcommand, or through `KILN_ROOT`.

mod image_support;
mod pty_support;

use std::os::unix::process::ExitStatusExt as _;
use std::time::Duration;

use image_support::{push, push_with, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry};
use pty_support::{wait_with_timeout, Pty};

const PROMPT_WAIT: Duration = Duration::from_secs(30);

/// A registry where alice/wonderland may pull `private/busybox:1`; its name.
fn basic_auth_registry() -> (TestRegistry, String) {
    let registry = TestRegistry::start_with_htpasswd(&[("alice", "wonderland")]);
    let reference = push_with(
        &registry,
        &registry.admin_client(),
        &busybox_image(),
        "private/busybox:1",
    );
    (registry, reference.to_string())
}

#[test]
fn login_asks_for_user_and_password_on_a_terminal() {
    let (registry, name) = basic_auth_registry();
    let kiln = Kiln::new();
    kiln.fail(&["pull", &name]);

    let pty = Pty::open();
    let mut child = pty.spawn(&mut kiln.command(&["login", registry.address()]));
    pty.wait_for("Username: ", PROMPT_WAIT);
    pty.type_text(b"alice\n");
    pty.wait_for("Password: ", PROMPT_WAIT);
    assert!(!pty.echo_is_on(), "echo must be off at the password prompt");
    pty.type_text(b"wonderland\n");
    let status = wait_with_timeout(&mut child, PROMPT_WAIT);
    let shown = pty.wait_for("Login Succeeded", PROMPT_WAIT);
    assert!(status.success(), "{shown}");
    // The user name was echoed, the password was not.
    assert!(shown.contains("alice"), "{shown}");
    assert!(!shown.contains("wonderland"), "{shown}");
    assert!(pty.echo_is_on(), "the terminal's echo must be back on");

    // The kept credentials work.
    kiln.ok(&["pull", &name]);
    assert_eq!(kiln.image_names(), vec![name]);
}

#[test]
fn login_with_a_user_asks_only_for_the_password_and_a_wrong_one_fails() {
    let (registry, _name) = basic_auth_registry();
    let kiln = Kiln::new();
    let pty = Pty::open();
    let mut child = pty.spawn(&mut kiln.command(&["login", "-u", "alice", registry.address()]));
    pty.wait_for("Password: ", PROMPT_WAIT);
    pty.type_text(b"queen\n");
    let status = wait_with_timeout(&mut child, PROMPT_WAIT);
    let shown = pty.wait_for("error", PROMPT_WAIT);
    assert!(!status.success(), "{shown}");
    assert!(!shown.contains("Username"), "{shown}");
    assert!(shown.contains("logging in"), "{shown}");
    assert!(!shown.contains("queen"), "{shown}");
    assert!(
        pty.echo_is_on(),
        "echo must be restored after a failed login"
    );
    assert!(!kiln.credentials_file().exists());
}

#[test]
fn ctrl_c_at_the_password_prompt_restores_the_terminal() {
    let (registry, _name) = basic_auth_registry();
    let kiln = Kiln::new();
    let pty = Pty::open();
    let mut child = pty.spawn(&mut kiln.command(&["login", registry.address()]));
    pty.wait_for("Username: ", PROMPT_WAIT);
    pty.type_text(b"alice\n");
    pty.wait_for("Password: ", PROMPT_WAIT);
    assert!(!pty.echo_is_on());
    pty.type_text(b"wond\x03");
    let status = wait_with_timeout(&mut child, PROMPT_WAIT);
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "{status:?}: {}",
        pty.output()
    );
    assert!(pty.echo_is_on(), "Ctrl-C must leave the terminal's echo on");
    assert!(!kiln.credentials_file().exists());
}

#[test]
fn login_without_a_terminal_or_credentials_is_a_clear_error() {
    let (registry, _name) = basic_auth_registry();
    let kiln = Kiln::new();
    let run = |args: &[&str]| {
        let output = kiln
            .command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("kiln login");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let no_user = run(&["login", registry.address()]);
    assert!(no_user.contains("not a terminal"), "{no_user}");
    assert!(no_user.contains("-u USER"), "{no_user}");
    let no_password = run(&["login", "-u", "alice", registry.address()]);
    assert!(no_password.contains("not a terminal"), "{no_password}");
    assert!(no_password.contains("--password-stdin"), "{no_password}");
    let stdin_without_user = run(&["login", "--password-stdin", registry.address()]);
    assert!(
        stdin_without_user.contains("-u USER"),
        "{stdin_without_user}"
    );
    // With both on the command line no terminal is needed.
    let output = kiln
        .command(&[
            "login",
            "-u",
            "alice",
            "-p",
            "wonderland",
            registry.address(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("kiln login");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kiln ARGS` with no `KILN_ROOT` (unless `env_root`).
fn kiln_with(kiln: &Kiln, args: &[&str], env_root: Option<&std::path::Path>) -> String {
    let mut command = kiln.command(args);
    command.env_remove("KILN_ROOT");
    if let Some(root) = env_root {
        command.env("KILN_ROOT", root);
    }
    let output = command.output().expect("kiln");
    assert!(
        output.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn root_before_or_after_the_subcommand_and_from_kiln_root() {
    let registry = TestRegistry::start();
    let name = push(&registry, &busybox_image(), "busybox:latest").to_string();
    let kiln = Kiln::new();
    let first = tempfile::tempdir().expect("temp dir");
    let second = tempfile::tempdir().expect("temp dir");
    let unused = tempfile::tempdir().expect("temp dir");
    let first_root = first.path().to_str().expect("utf-8");
    let second_root = second.path().to_str().expect("utf-8");

    // Before the subcommand (and winning over KILN_ROOT).
    kiln_with(
        &kiln,
        &["--root", first_root, "pull", "-q", &name],
        Some(unused.path()),
    );
    let listed = kiln_with(&kiln, &["images", "--root", first_root], None);
    assert!(listed.contains("busybox"), "{listed}");
    let listed = kiln_with(&kiln, &["--root", first_root, "images"], None);
    assert!(listed.contains("busybox"), "{listed}");
    let listed = kiln_with(&kiln, &["images"], Some(first.path()));
    assert!(listed.contains("busybox"), "{listed}");
    // The store KILN_ROOT named instead holds nothing.
    let listed = kiln_with(&kiln, &["images", "-q"], Some(unused.path()));
    assert!(listed.trim().is_empty(), "{listed}");

    // After the subcommand, into a second store.
    kiln_with(
        &kiln,
        &["pull", "-q", "--root", second_root, &name],
        Some(unused.path()),
    );
    let saved = tempfile::tempdir().expect("save dir");
    let saved_path = &saved.path().join("copy.tar").to_string_lossy().into_owned();
    for args in [
        vec!["--root", second_root, "tag", &name, "copy:1"],
        vec!["--root", second_root, "inspect", "copy:1"],
        vec!["inspect", "copy:1", "--root", second_root],
        vec!["--root", second_root, "run", "--rm", "copy:1", "true"],
        vec!["run", "--root", second_root, "--rm", "copy:1", "true"],
        vec!["--root", second_root, "save", "-o", saved_path, "copy:1"],
        vec!["--root", second_root, "rmi", "copy:1"],
        vec!["rmi", "--root", second_root, &name],
    ] {
        kiln_with(&kiln, &args, Some(unused.path()));
    }
    let listed = kiln_with(&kiln, &["--root", second_root, "images", "-q"], None);
    assert!(listed.trim().is_empty(), "{listed}");
    let listed = kiln_with(&kiln, &["--root", first_root, "images", "-q"], None);
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // A build with the root before the subcommand uses that store (its base image is pulled
    // into it).
    let context = tempfile::tempdir().expect("context");
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {name}\nRUN echo built > /built\n"),
    )
    .expect("Dockerfile");
    let context_path = context.path().to_str().expect("utf-8");
    kiln_with(
        &kiln,
        &[
            "--root",
            second_root,
            "build",
            "-t",
            "built:1",
            context_path,
        ],
        Some(unused.path()),
    );
    let listed = kiln_with(&kiln, &["images", "--root", second_root], None);
    assert!(listed.contains("built"), "{listed}");
    let listed = kiln_with(&kiln, &["images", "-q"], Some(unused.path()));
    assert!(listed.trim().is_empty(), "{listed}");
    // The subcommand's own --root wins over the one before it.
    let listed = kiln_with(
        &kiln,
        &["--root", first_root, "images", "--root", second_root],
        None,
    );
    assert!(listed.contains("built"), "{listed}");
}
