//! Authentication against the real registry: token auth (distribution's `auth: token` with
//! the harness's JWT issuer), htpasswd Basic auth, Docker config credentials, login/logout,
//! TLS with an extra root certificate.

use kiln_registry::{
    BlobProgress, BlobPushOutcome, BlobSource, Credential, CredentialStore, RegistryClient,
    RegistryError,
};
use kiln_testsupport::{
    ImageBuilder, LayerBuilder, TestAuth, TestRegistry, TestRegistryOptions, TokenPolicy,
};

fn small_image(marker: &str) -> kiln_testsupport::BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.file("marker", marker.as_bytes(), 0o644);
    ImageBuilder::new().layer_tar(layer.finish()).build()
}

fn client_with_user(registry: &TestRegistry, username: &str, password: &str) -> RegistryClient {
    let mut options = registry.client_options();
    options.credentials.fixed.insert(
        registry.address().to_string(),
        Credential::Basic {
            username: username.into(),
            password: password.into(),
        },
    );
    registry.client_with(options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_anonymous_pull_with_cached_tokens() {
    let registry = TestRegistry::start_with_token_auth(TokenPolicy {
        anonymous_pull: true,
        ..TokenPolicy::default()
    });
    let image = small_image("token");
    let reference = registry.reference("secure/app:1");
    image
        .push(&registry.admin_client(), &reference)
        .await
        .unwrap();

    let token_server = registry.token_server().unwrap();
    let before = token_server.requests().len();
    let anonymous = registry.client();
    let resolved = anonymous.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.digest, image.manifest_digest);
    let mut sink = Vec::new();
    anonymous
        .pull_blob_to_writer(
            &reference,
            &image.layers[0].descriptor,
            BlobProgress::new(),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(sink, image.layers[0].blob);
    anonymous.fetch_manifest(&reference).await.unwrap();

    // One token for the pull scope served all four requests.
    let asked: Vec<_> = token_server.requests()[before..].to_vec();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].user, None);
    assert_eq!(
        asked[0].scopes,
        vec!["repository:secure/app:pull".to_string()]
    );

    // Anonymous push is refused with the registry's message after one token try.
    let error = small_image("nope")
        .push(&anonymous, &registry.reference("secure/other:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("authentication required"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_credentials_and_wrong_credentials() {
    let registry = TestRegistry::start_with_token_auth(
        TokenPolicy::default().with_user("alice", "wonderland"),
    );
    let alice = client_with_user(&registry, "alice", "wonderland");
    let image = small_image("alice");
    let reference = registry.reference("alice/app:1");
    image.push(&alice, &reference).await.unwrap();
    let resolved = alice.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.bytes, image.manifest_bytes);
    let requests = registry.token_server().unwrap().requests();
    assert!(requests
        .iter()
        .any(|request| request.user.as_deref() == Some("alice")
            && request.scopes == vec!["repository:alice/app:pull,push".to_string()]));

    // Wrong password: the token service's 401 message, no loop.
    let before = registry.token_server().unwrap().requests().len();
    let mallory = client_with_user(&registry, "alice", "guess");
    let error = mallory.resolve(&reference, None).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("invalid username or password"),
        "{error}"
    );
    assert_eq!(
        registry.token_server().unwrap().requests().len(),
        before + 1
    );

    // No credentials and no anonymous pull: the token grants nothing, the registry answers
    // 401 again, and that second 401 is the error.
    let error = registry
        .client()
        .resolve(&reference, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("authentication required"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_mount_asks_one_token_for_both_scopes() {
    let registry = TestRegistry::start_with_token_auth(
        TokenPolicy::default()
            .with_user("builder", "pw")
            .with_limited_user("limited", "pw", &["team/target", "team/limited-target"]),
    );
    let image = small_image("mounted");
    let source = registry.reference("team/source:1");
    image.push(&registry.admin_client(), &source).await.unwrap();
    let layer = &image.layers[0];

    let builder = client_with_user(&registry, "builder", "pw");
    let target = registry.reference("team/target:1");
    let outcome = builder
        .push_blob_mounting(
            &target,
            &layer.descriptor,
            BlobSource::Bytes(layer.blob.clone()),
            Some(&source),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::Mounted);
    let requests = registry.token_server().unwrap().requests();
    assert!(
        requests
            .iter()
            .any(|request| request.user.as_deref() == Some("builder")
                && request.scopes
                    == vec![
                        "repository:team/source:pull".to_string(),
                        "repository:team/target:pull,push".to_string()
                    ]),
        "{requests:?}"
    );

    // A user without pull on the source: the mount is refused (401), the client uploads.
    let limited = client_with_user(&registry, "limited", "pw");
    let other_target = registry.reference("team/limited-target:1");
    let outcome = limited
        .push_blob_mounting(
            &other_target,
            &layer.descriptor,
            BlobSource::Bytes(layer.blob.clone()),
            Some(&source),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::Uploaded);
    let mut sink = Vec::new();
    limited
        .pull_blob_to_writer(
            &other_target,
            &layer.descriptor,
            BlobProgress::new(),
            &mut sink,
        )
        .await
        .unwrap();
    assert_eq!(sink, layer.blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth() {
    let registry = TestRegistry::start_with_htpasswd(&[("bob", "builder")]);
    let bob = client_with_user(&registry, "bob", "builder");
    let image = small_image("basic");
    let reference = registry.reference("bob/app:1");
    image.push(&bob, &reference).await.unwrap();
    let resolved = bob.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.digest, image.manifest_digest);

    let error = client_with_user(&registry, "bob", "wrong")
        .resolve(&reference, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    let error = registry
        .client()
        .resolve(&reference, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_config_credentials_are_read() {
    use base64::Engine as _;
    let registry = TestRegistry::start_with_htpasswd(&[("carol", "s3cret"), ("dave", "pw")]);
    let image = small_image("docker config");
    let reference = registry.reference("carol/app:1");
    image
        .push(&registry.admin_client(), &reference)
        .await
        .unwrap();
    let directory = tempfile::tempdir().unwrap();

    // `auth` as base64 user:password, keyed with a scheme and path as `docker login` may.
    let encoded = base64::engine::general_purpose::STANDARD.encode("carol:s3cret");
    std::fs::write(
        directory.path().join("config.json"),
        format!(
            r#"{{"auths":{{"http://{}/v2/":{{"auth":"{encoded}"}}}},"psFormat":"table"}}"#,
            registry.address()
        ),
    )
    .unwrap();
    let mut options = registry.client_options();
    options.credentials = CredentialStore {
        docker_config_dir: Some(directory.path().to_path_buf()),
        ..CredentialStore::default()
    };
    let client = registry.client_with(options.clone());
    client.resolve(&reference, None).await.unwrap();

    // username/password fields.
    std::fs::write(
        directory.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"username":"dave","password":"pw"}}}}}}"#,
            registry.address()
        ),
    )
    .unwrap();
    registry
        .client_with(options.clone())
        .resolve(&reference, None)
        .await
        .unwrap();

    // kiln's own file wins over Docker's.
    let kiln_file = directory.path().join("kiln-credentials.json");
    options.credentials.kiln_file = Some(kiln_file.clone());
    options
        .credentials
        .store(registry.address(), "dave", "not-the-password")
        .unwrap();
    let error = registry
        .client_with(options)
        .resolve(&reference, None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_verifies_then_stores_and_logout_removes() {
    for auth in [
        TestAuth::Token(TokenPolicy::default().with_user("erin", "pw")),
        TestAuth::Htpasswd(vec![("erin".into(), "pw".into())]),
    ] {
        let registry = TestRegistry::start_with(TestRegistryOptions { auth, tls: false });
        let image = small_image("login");
        let reference = registry.reference("erin/app:1");
        image
            .push(&registry.admin_client(), &reference)
            .await
            .unwrap();
        let directory = tempfile::tempdir().unwrap();
        let kiln_file = directory.path().join("kiln/credentials.json");
        let mut options = registry.client_options();
        options.credentials.kiln_file = Some(kiln_file.clone());
        let client = registry.client_with(options.clone());

        let error = client
            .login(registry.address(), "erin", "wrong")
            .await
            .unwrap_err();
        assert!(
            matches!(error, RegistryError::Unauthorized { .. }),
            "{error}"
        );
        assert!(!kiln_file.exists(), "failed login stored credentials");

        client
            .login(registry.address(), "erin", "pw")
            .await
            .unwrap();
        assert!(kiln_file.exists());
        // A fresh client (a later `kiln pull`) finds the stored credentials.
        let later = registry.client_with(options.clone());
        later.resolve(&reference, None).await.unwrap();

        assert!(later.logout(registry.address()).unwrap());
        assert!(!later.logout(registry.address()).unwrap());
        let error = registry
            .client_with(options)
            .resolve(&reference, None)
            .await
            .unwrap_err();
        assert!(
            matches!(error, RegistryError::Unauthorized { .. }),
            "{error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_an_extra_root_certificate() {
    let registry = TestRegistry::start_with(TestRegistryOptions {
        auth: TestAuth::Htpasswd(vec![("frank".into(), "pw".into())]),
        tls: true,
    });
    let image = small_image("tls");
    let reference = registry.reference("frank/app:1");
    let frank = client_with_user(&registry, "frank", "pw");
    assert!(!frank.uses_plain_http(registry.address()));
    image.push(&frank, &reference).await.unwrap();
    frank.resolve(&reference, None).await.unwrap();

    // Without the extra root, the certificate is not trusted.
    let mut options = registry.client_options();
    options.extra_root_certificates_pem.clear();
    let untrusting = registry.client_with(options);
    let error = untrusting.resolve(&reference, None).await.unwrap_err();
    assert!(matches!(error, RegistryError::Transport { .. }), "{error}");
}
