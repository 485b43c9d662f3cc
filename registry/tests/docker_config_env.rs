//! `DOCKER_CONFIG` and `KILN_CREDENTIALS_FILE` pick the credential files. Alone in its test
//! binary because it sets environment variables.

use kiln_registry::{Credential, CredentialStore};

#[test]
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
    // The only test in this binary: no other thread reads the environment meanwhile.
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
