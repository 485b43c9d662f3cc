//! Pulls from a token-auth registry: with `kiln login`, and with Docker's config.json.

mod image_support;

use std::io::Write as _;

use image_support::{push_with, Kiln};
use kiln_testsupport::{busybox_image, TestRegistry, TokenPolicy};

fn private_registry() -> (TestRegistry, String) {
    let policy = TokenPolicy {
        anonymous_pull: false,
        ..TokenPolicy::default()
    }
    .with_user("alice", "wonderland");
    let registry = TestRegistry::start_with_token_auth(policy);
    let reference = push_with(
        &registry,
        &registry.admin_client(),
        &busybox_image(),
        "private/busybox:1",
    );
    (registry, reference.to_string())
}

#[test]
fn login_pull_logout() {
    let (registry, name) = private_registry();
    let kiln = Kiln::new();
    let refused = kiln.fail(&["pull", &name]);
    assert!(refused.contains("pulling"), "{refused}");

    let wrong = kiln.fail(&["login", "-u", "alice", "-p", "queen", registry.address()]);
    assert!(wrong.contains("logging in"), "{wrong}");

    let mut login = kiln
        .command(&[
            "login",
            "-u",
            "alice",
            "--password-stdin",
            registry.address(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln login");
    login
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"wonderland\n")
        .expect("password");
    let output = login.wait_with_output().expect("kiln login");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("Login Succeeded"));
    assert!(kiln.credentials_file().exists());

    kiln.ok(&["pull", &name]);
    assert_eq!(kiln.image_names(), vec![name.clone()]);

    let out = kiln.ok(&["logout", registry.address()]);
    assert!(out.contains("Removing login credentials"), "{out}");
    let again = kiln.ok(&["logout", registry.address()]);
    assert!(again.contains("Not logged in"), "{again}");
    kiln.ok(&["rmi", &name]);
    kiln.fail(&["pull", &name]);
}

#[test]
fn docker_config_credentials_are_used() {
    let (registry, name) = private_registry();
    let kiln = Kiln::new();
    // base64("alice:wonderland")
    let config = serde_json::json!({
        "auths": { registry.address(): { "auth": "YWxpY2U6d29uZGVybGFuZA==" } }
    });
    std::fs::write(
        kiln.docker_config_dir().join("config.json"),
        serde_json::to_vec(&config).expect("json"),
    )
    .expect("config.json");
    kiln.ok(&["pull", &name]);
    assert_eq!(kiln.image_names(), vec![name]);
}
