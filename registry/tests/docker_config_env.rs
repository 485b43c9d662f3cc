//! `DOCKER_CONFIG` and `KILN_CREDENTIALS_FILE` pick the credential files, and credential
//! helpers run from PATH. Alone in its test binary because it sets environment variables.

use kiln_registry::{Credential, CredentialStore};

/// One test function, so nothing reads the environment while it is changed.
#[test]
fn environment_and_credential_helpers() {
    environment_chooses_the_credential_files();
    credential_helpers_are_run();
}

fn environment_chooses_the_credential_files() {
    let directory = tempfile::tempdir().unwrap();
    let docker = directory.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnB3"},"reg.example:5000":{"username":"u","password":"p"}}}"#,
    )
    .unwrap();
    let kiln_file = directory.path().join("kiln.json");
    std::env::set_var("DOCKER_CONFIG", &docker);
    std::env::set_var("KILN_CREDENTIALS_FILE", &kiln_file);
    let store = CredentialStore::from_environment();
    assert_eq!(store.docker_config_dir.as_deref(), Some(docker.as_path()));
    assert_eq!(store.kiln_file.as_deref(), Some(kiln_file.as_path()));
    assert_eq!(
        store.lookup("docker.io").unwrap(),
        Some(Credential::Basic {
            username: "hub".into(),
            password: "pw".into()
        })
    );
    assert_eq!(
        store.lookup("reg.example:5000").unwrap(),
        Some(Credential::Basic {
            username: "u".into(),
            password: "p".into()
        })
    );
    assert_eq!(store.lookup("other.example").unwrap(), None);
    store
        .store("reg.example:5000", "kiln-user", "kiln-pw")
        .unwrap();
    assert_eq!(
        store.lookup("reg.example:5000").unwrap(),
        Some(Credential::Basic {
            username: "kiln-user".into(),
            password: "kiln-pw".into()
        })
    );
}

/// `credsStore` / `credHelpers` run `docker-credential-<name> get` with the server on stdin.
fn credential_helpers_are_run() {
    use std::os::unix::fs::PermissionsExt as _;
    let directory = tempfile::tempdir().unwrap();
    let helper = directory.path().join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\ncase \"$server\" in\n  helped.example) echo '{\"ServerURL\":\"helped.example\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}' ;;\n  token.example) echo '{\"Username\":\"<token>\",\"Secret\":\"refresh\"}' ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = directory.path().join("docker");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        r#"{"credHelpers":{"helped.example":"kilntest","token.example":"kilntest","none.example":"kilntest"},"auths":{"none.example":{"auth":"YTpi"}}}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        directory.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);
    let store = CredentialStore {
        docker_config_dir: Some(config),
        ..CredentialStore::default()
    };
    assert_eq!(
        store.lookup("helped.example").unwrap(),
        Some(Credential::Basic {
            username: "helper-user".into(),
            password: "helper-secret".into()
        })
    );
    assert_eq!(
        store.lookup("token.example").unwrap(),
        Some(Credential::IdentityToken("refresh".into()))
    );
    // The helper has nothing: fall back to `auths`.
    assert_eq!(
        store.lookup("none.example").unwrap(),
        Some(Credential::Basic {
            username: "a".into(),
            password: "b".into()
        })
    );
}
