//! Answers no well-behaved registry gives, from scripted in-test servers: schema1,
//! media-type disagreements, wrong digests, oversized manifests, redirects across hosts.
//! (distribution 2.8 refuses schema1 pushes, so schema1 cannot come from the real one.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use kiln_registry::{
    BlobProgress, ClientOptions, Credential, CredentialStore, Reference, RegistryClient,
    RegistryError,
};
use kiln_testsupport::{HttpResponse, HttpServer, ImageBuilder, LayerBuilder, Reply};
use kiln_types::media_type::{DOCKER_MANIFEST, DOCKER_MANIFEST_SCHEMA1_SIGNED, OCI_MANIFEST};
use kiln_types::{Descriptor, Digest};

fn client_with(credentials: CredentialStore) -> RegistryClient {
    RegistryClient::with_options(ClientOptions {
        credentials,
        retry_base_delay: std::time::Duration::from_millis(10),
        ..ClientOptions::default()
    })
    .unwrap()
}

fn client() -> RegistryClient {
    client_with(CredentialStore::empty())
}

/// A server answering every manifest GET with `content_type` and `body`.
fn manifest_server(content_type: &'static str, body: Vec<u8>) -> HttpServer {
    HttpServer::start("127.0.0.1", move |request| {
        if request.path().contains("/manifests/") {
            HttpResponse::new(200)
                .header("Content-Type", content_type)
                .body(body.clone())
                .into()
        } else {
            HttpResponse::new(404).into()
        }
    })
    .unwrap()
}

fn sample_manifest(media_type_field: &str) -> Vec<u8> {
    let image = ImageBuilder::new().build();
    let mut manifest = serde_json::to_value(&image.manifest).unwrap();
    manifest["mediaType"] = serde_json::Value::String(media_type_field.to_string());
    serde_json::to_vec(&manifest).unwrap()
}

fn reference_on(server: &HttpServer, name: &str) -> Reference {
    Reference::parse(&format!("{}/{name}", server.address())).unwrap()
}

#[tokio::test]
async fn schema1_is_refused_with_a_clear_message() {
    let schema1 = br#"{"schemaVersion":1,"name":"old/image","tag":"latest","architecture":"amd64","fsLayers":[{"blobSum":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],"history":[{"v1Compatibility":"{}"}],"signatures":[]}"#.to_vec();
    for content_type in [DOCKER_MANIFEST_SCHEMA1_SIGNED, "application/json"] {
        let server = manifest_server(content_type, schema1.clone());
        let error = client()
            .resolve(&reference_on(&server, "old/image:latest"), None)
            .await
            .unwrap_err();
        assert!(matches!(error, RegistryError::Schema1 { .. }), "{error}");
        assert!(
            error.to_string().contains(
                "schema1 manifests are not supported; push the image again with a current client"
            ),
            "{error}"
        );
    }
}

#[tokio::test]
async fn media_type_disagreeing_with_content_type_is_refused() {
    let server = manifest_server(OCI_MANIFEST, sample_manifest(DOCKER_MANIFEST));
    let error = client()
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap_err();
    match error {
        RegistryError::MediaTypeMismatch {
            content_type,
            media_type,
            ..
        } => {
            assert_eq!(content_type, OCI_MANIFEST);
            assert_eq!(media_type, DOCKER_MANIFEST);
        }
        other => panic!("expected a media type mismatch, got {other}"),
    }
    // Content-Type parameters do not count as a disagreement.
    let server = manifest_server(
        "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
        sample_manifest(OCI_MANIFEST),
    );
    client()
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap();
}

#[tokio::test]
async fn manifest_digest_must_match_the_requested_digest() {
    let body = sample_manifest(OCI_MANIFEST);
    let server = manifest_server(OCI_MANIFEST, body.clone());
    let asked = Digest::of_bytes(b"another manifest");
    let reference = reference_on(&server, &format!("a/b@{asked}"));
    match client().fetch_manifest(&reference).await.unwrap_err() {
        RegistryError::DigestMismatch { expected, found } => {
            assert_eq!(expected, asked);
            assert_eq!(found, Digest::of_bytes(&body));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    // The right digest passes.
    let reference = reference_on(&server, &format!("a/b@{}", Digest::of_bytes(&body)));
    client().fetch_manifest(&reference).await.unwrap();
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let mut body = sample_manifest(OCI_MANIFEST);
    // Valid JSON padded with whitespace past 4 MiB.
    body.truncate(body.len() - 1);
    body.extend(std::iter::repeat_n(b' ', 4 * 1024 * 1024));
    body.push(b'}');
    let server = manifest_server(OCI_MANIFEST, body);
    let error = client()
        .fetch_manifest(&reference_on(&server, "big/manifest:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            RegistryError::ManifestTooLarge { limit: 4194304, .. }
        ),
        "{error}"
    );
}

/// The blob server behind a redirect records what it was sent.
#[tokio::test]
async fn redirect_to_another_host_drops_authorization() {
    let mut layer = LayerBuilder::new();
    layer.file("f", b"redirected", 0o644);
    let image = ImageBuilder::new().layer_tar(layer.finish()).build();
    let blob = image.layers[0].blob.clone();
    let descriptor = image.layers[0].descriptor.clone();

    // Object storage on another loopback address.
    let storage_blob = blob.clone();
    let storage = HttpServer::start("127.0.0.2", move |_| {
        HttpResponse::new(200).body(storage_blob.to_vec()).into()
    })
    .unwrap();
    let storage_url = format!("{}/bucket/blob?signature=abc", storage.url());

    // The registry wants Basic auth; with it, blobs redirect to storage, and one path
    // redirects within the registry.
    let registry = HttpServer::start("127.0.0.1", move |request| {
        if request.header("authorization").is_none() {
            return HttpResponse::registry_error(401, "UNAUTHORIZED", "authentication required")
                .header("WWW-Authenticate", "Basic realm=\"test\"")
                .into();
        }
        if request.path().starts_with("/v2/a/b/blobs/") {
            return HttpResponse::new(307)
                .header("Location", &storage_url)
                .into();
        }
        HttpResponse::new(404).into()
    })
    .unwrap();
    let mut credentials = CredentialStore::empty();
    credentials.fixed.insert(
        registry.address(),
        Credential::Basic {
            username: "user".into(),
            password: "secret".into(),
        },
    );
    let client = client_with(credentials);
    let reference = reference_on(&registry, "a/b:c");
    let mut sink = Vec::new();
    client
        .pull_blob_to_writer(&reference, &descriptor, BlobProgress::new(), &mut sink)
        .await
        .unwrap();
    assert_eq!(sink, blob);

    let registry_requests = registry.requests();
    assert_eq!(registry_requests.len(), 2, "challenge, then authorized");
    assert!(registry_requests[1].header("authorization").is_some());
    let storage_requests = storage.requests();
    assert_eq!(storage_requests.len(), 1);
    assert_eq!(storage_requests[0].target, "/bucket/blob?signature=abc");
    assert_eq!(
        storage_requests[0].header("authorization"),
        None,
        "credentials leaked to another host"
    );
}

#[tokio::test]
async fn redirect_loops_stop_after_ten() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let server = HttpServer::start("127.0.0.1", move |request| {
        let count = counter.fetch_add(1, Ordering::SeqCst);
        HttpResponse::new(302)
            .header("Location", &format!("{}?hop={count}", request.path()))
            .into()
    })
    .unwrap();
    let error = client()
        .fetch_manifest(&reference_on(&server, "loop/image:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::TooManyRedirects { limit: 10, .. }),
        "{error}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 11);
}

#[tokio::test]
async fn second_unauthorized_fails_with_the_registry_message() {
    let server = HttpServer::start("127.0.0.1", |_| {
        HttpResponse::registry_error(401, "UNAUTHORIZED", "bad credentials for this test")
            .header("WWW-Authenticate", "Basic realm=\"test\"")
            .into()
    })
    .unwrap();
    let mut credentials = CredentialStore::empty();
    credentials.fixed.insert(
        server.address(),
        Credential::Basic {
            username: "user".into(),
            password: "wrong".into(),
        },
    );
    let error = client_with(credentials)
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Unauthorized { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("bad credentials for this test"),
        "{error}"
    );
    assert_eq!(server.requests().len(), 2, "no loop");

    // Without credentials a Basic challenge fails at once, with the message.
    let error = client()
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("bad credentials for this test"),
        "{error}"
    );
}

#[tokio::test]
async fn blob_larger_than_its_descriptor_is_refused() {
    let server = HttpServer::start("127.0.0.1", |_| {
        HttpResponse::new(200).body(vec![7u8; 2000]).into()
    })
    .unwrap();
    let descriptor = Descriptor::new(
        "application/octet-stream",
        Digest::of_bytes(&[7u8; 1000]),
        1000,
    );
    let error = client()
        .pull_blob_to_writer(
            &reference_on(&server, "a/b:c"),
            &descriptor,
            BlobProgress::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::SizeMismatch { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn reset_mid_manifest_is_retried() {
    let body = sample_manifest(OCI_MANIFEST);
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let server = HttpServer::start("127.0.0.1", move |_| {
        let response = HttpResponse::new(200)
            .header("Content-Type", OCI_MANIFEST)
            .body(body.clone());
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::CutAfter(response, 20)
        } else {
            response.into()
        }
    })
    .unwrap();
    client()
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn https_to_http_redirect_is_refused_unless_named_insecure() {
    let plain = HttpServer::start("127.0.0.2", |_| {
        HttpResponse::new(200).body(b"x".to_vec()).into()
    })
    .unwrap();
    let plain_url = format!("{}/blob", plain.url());
    let (secure, certificate) = HttpServer::start_tls("127.0.0.1", move |_| {
        HttpResponse::new(307).header("Location", &plain_url).into()
    })
    .unwrap();
    let options = |insecure: Vec<String>| ClientOptions {
        credentials: CredentialStore::empty(),
        https_registries: vec![secure.address()],
        insecure_registries: insecure,
        extra_root_certificates_pem: vec![certificate.as_bytes().to_vec()],
        ..ClientOptions::default()
    };
    let descriptor = Descriptor::new("application/octet-stream", Digest::of_bytes(b"x"), 1);
    let reference = reference_on(&secure, "a/b:c");

    let client = RegistryClient::with_options(options(vec![])).unwrap();
    let error = client
        .pull_blob_to_writer(
            &reference,
            &descriptor,
            BlobProgress::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::InsecureRedirect { .. }),
        "{error:?}"
    );
    assert!(
        plain.requests().is_empty(),
        "the plain HTTP host was contacted"
    );

    let client = RegistryClient::with_options(options(vec![plain.address()])).unwrap();
    let mut sink = Vec::new();
    client
        .pull_blob_to_writer(&reference, &descriptor, BlobProgress::new(), &mut sink)
        .await
        .unwrap();
    assert_eq!(sink, b"x");
}

/// Docker's `identitytoken` is an OAuth2 refresh token: exchanged with a form POST.
#[tokio::test]
async fn identity_token_is_exchanged_with_a_form_post() {
    let server = HttpServer::start("127.0.0.1", |request| {
        if request.path() == "/token" {
            let form = String::from_utf8_lossy(&request.body).into_owned();
            let ok = request.method == "POST"
                && form.contains("grant_type=refresh_token")
                && form.contains("refresh_token=the-refresh-token")
                && form.contains("scope=repository%3Aa%2Fb%3Apull");
            return if ok {
                HttpResponse::new(200)
                    .body(r#"{"access_token":"exchanged","expires_in":300}"#)
                    .into()
            } else {
                HttpResponse::registry_error(401, "DENIED", "bad refresh token").into()
            };
        }
        if request.header("authorization") != Some("Bearer exchanged") {
            let host = request.header("host").unwrap_or("").to_string();
            return HttpResponse::registry_error(401, "UNAUTHORIZED", "token needed")
                .header(
                    "WWW-Authenticate",
                    &format!("Bearer realm=\"http://{host}/token\",service=\"scripted\""),
                )
                .into();
        }
        HttpResponse::new(200)
            .header("Content-Type", OCI_MANIFEST)
            .body(sample_manifest(OCI_MANIFEST))
            .into()
    })
    .unwrap();
    let mut credentials = CredentialStore::empty();
    credentials.fixed.insert(
        server.address(),
        Credential::IdentityToken("the-refresh-token".into()),
    );
    client_with(credentials)
        .fetch_manifest(&reference_on(&server, "a/b:c"))
        .await
        .unwrap();
    let methods: Vec<String> = server
        .requests()
        .iter()
        .map(|request| format!("{} {}", request.method, request.path()))
        .collect();
    assert_eq!(
        methods,
        [
            "GET /v2/a/b/manifests/c",
            "POST /token",
            "GET /v2/a/b/manifests/c"
        ]
    );
}
