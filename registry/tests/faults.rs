//! Registry faults through the harness's fault proxy in front of a real registry: overload
//! answers, resets mid-blob, servers that ignore `Range`, corrupted bytes.

use std::time::{Duration, Instant};

use kiln_registry::{BlobProgress, Reference, RegistryClient, RegistryError};
use kiln_testsupport::{BuiltImage, Fault, FaultProxy, ImageBuilder, LayerBuilder, TestRegistry};

struct Setup {
    // Field order: the proxy stops before the registry.
    proxy: FaultProxy,
    client: RegistryClient,
    image: BuiltImage,
    reference: Reference,
    _registry: TestRegistry,
}

/// A registry holding a one-layer image of about 1 MiB, and a client that goes through the
/// proxy.
async fn setup() -> Setup {
    let registry = TestRegistry::start();
    let mut layer = LayerBuilder::new();
    // Incompressible-ish contents so the gzip blob stays large.
    let mut state = 0x2545_f491_u32;
    let contents: Vec<u8> = (0..1_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    layer.file("noise", &contents, 0o644);
    let image = ImageBuilder::new().layer_tar(layer.finish()).build();
    let direct = registry.reference("faults/image:1");
    image.push(&registry.client(), &direct).await.unwrap();
    let proxy = FaultProxy::start(registry.address()).unwrap();
    let reference = Reference::parse(&format!("{}/faults/image:1", proxy.address())).unwrap();
    let client = registry.client();
    Setup {
        proxy,
        client,
        image,
        reference,
        _registry: registry,
    }
}

fn blob_path(image: &BuiltImage) -> String {
    format!("/blobs/{}", image.layers[0].descriptor.digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_unavailable_twice_then_success() {
    let setup = setup().await;
    let fault = Fault::Status {
        status: 503,
        headers: vec![],
    };
    setup.proxy.inject(Some("GET"), "/manifests/", fault, 2);
    let fetched = setup.client.fetch_manifest(&setup.reference).await.unwrap();
    assert_eq!(fetched.digest(), &setup.image.manifest_digest);
    assert_eq!(setup.proxy.count(Some("GET"), "/manifests/"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_honours_retry_after() {
    let setup = setup().await;
    let fault = Fault::Status {
        status: 429,
        headers: vec![("Retry-After".into(), "1".into())],
    };
    setup.proxy.inject(Some("GET"), "/manifests/", fault, 1);
    let started = Instant::now();
    setup.client.fetch_manifest(&setup.reference).await.unwrap();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(1),
        "retried after {elapsed:?}, before Retry-After"
    );
    assert_eq!(setup.proxy.count(Some("GET"), "/manifests/"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let setup = setup().await;
    let fault = Fault::Status {
        status: 502,
        headers: vec![],
    };
    setup.proxy.inject(None, "/manifests/", fault, 100);
    let error = setup
        .client
        .fetch_manifest(&setup.reference)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::Status { status: 502, .. }),
        "{error}"
    );
    assert_eq!(
        setup.proxy.count(None, "/manifests/"),
        setup.client.options().max_attempts as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_resumes_with_range_after_a_reset() {
    let setup = setup().await;
    let descriptor = &setup.image.layers[0].descriptor;
    let path = blob_path(&setup.image);
    setup.proxy.inject(
        Some("GET"),
        &path,
        Fault::CutBody {
            after_bytes: 300_000,
        },
        1,
    );
    let mut sink = Vec::new();
    let receipt = setup
        .client
        .pull_blob_to_writer(&setup.reference, descriptor, BlobProgress::new(), &mut sink)
        .await
        .unwrap();
    assert_eq!(receipt.resumes, 1);
    assert_eq!(sink, setup.image.layers[0].blob);
    let blob_requests: Vec<_> = setup
        .proxy
        .requests()
        .into_iter()
        .filter(|request| request.method == "GET" && request.path.contains(&path))
        .collect();
    assert_eq!(blob_requests.len(), 2, "{blob_requests:?}");
    assert_eq!(blob_requests[0].range, None);
    let range = blob_requests[1].range.clone().unwrap();
    let start: u64 = range
        .strip_prefix("bytes=")
        .and_then(|rest| rest.strip_suffix('-'))
        .unwrap()
        .parse()
        .unwrap();
    // What arrived before the reset is not fetched again.
    assert!(start > 0 && start <= 300_000, "{range}");
    assert_eq!(blob_requests[1].status, 206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_resume_against_a_server_that_ignores_range() {
    let setup = setup().await;
    let descriptor = &setup.image.layers[0].descriptor;
    let path = blob_path(&setup.image);
    setup.proxy.inject(
        Some("GET"),
        &path,
        Fault::CutBody {
            after_bytes: 400_000,
        },
        1,
    );
    setup
        .proxy
        .inject(Some("GET"), &path, Fault::IgnoreRange, 1);
    let mut sink = Vec::new();
    let receipt = setup
        .client
        .pull_blob_to_writer(&setup.reference, descriptor, BlobProgress::new(), &mut sink)
        .await
        .unwrap();
    assert_eq!(receipt.resumes, 1);
    assert_eq!(sink, setup.image.layers[0].blob);
    let statuses: Vec<u16> = setup
        .proxy
        .requests()
        .iter()
        .filter(|request| request.path.contains(&path))
        .map(|request| request.status)
        .collect();
    assert_eq!(statuses, vec![200, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_beyond_the_limit_fail() {
    let setup = setup().await;
    let descriptor = &setup.image.layers[0].descriptor;
    let path = blob_path(&setup.image);
    setup
        .proxy
        .inject(Some("GET"), &path, Fault::CutBody { after_bytes: 10 }, 100);
    let error = setup
        .client
        .pull_blob_to_writer(
            &setup.reference,
            descriptor,
            BlobProgress::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RegistryError::Transport { .. }), "{error}");
    assert_eq!(
        setup.proxy.count(Some("GET"), &path),
        setup.client.options().max_attempts as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected() {
    let setup = setup().await;
    let descriptor = &setup.image.layers[0].descriptor;
    setup
        .proxy
        .inject(Some("GET"), &blob_path(&setup.image), Fault::CorruptBody, 1);
    let error = setup
        .client
        .pull_blob_to_writer(
            &setup.reference,
            descriptor,
            BlobProgress::new(),
            &mut Vec::new(),
        )
        .await
        .unwrap_err();
    match error {
        RegistryError::DigestMismatch { expected, found } => {
            assert_eq!(expected, descriptor.digest);
            assert_ne!(found, descriptor.digest);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_manifest_is_rejected_by_tag_and_by_digest() {
    let setup = setup().await;
    setup
        .proxy
        .inject(Some("GET"), "/manifests/", Fault::CorruptBody, 2);
    // By tag: the registry's Docker-Content-Digest disagrees with the altered bytes.
    let error = setup
        .client
        .fetch_manifest(&setup.reference)
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error}"
    );
    let pinned = setup
        .reference
        .with_digest(setup.image.manifest_digest.clone());
    let error = setup.client.fetch_manifest(&pinned).await.unwrap_err();
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_survives_overload_answers() {
    let setup = setup().await;
    let fault = Fault::Status {
        status: 503,
        headers: vec![],
    };
    setup
        .proxy
        .inject(Some("POST"), "/blobs/uploads/", fault.clone(), 1);
    setup.proxy.inject(Some("PUT"), "/manifests/", fault, 1);
    let mut layer = LayerBuilder::new();
    layer.file("pushed", b"through the proxy", 0o644);
    let image = ImageBuilder::new().layer_tar(layer.finish()).build();
    let reference = setup.reference.with_tag("pushed").unwrap();
    let digest = image.push(&setup.client, &reference).await.unwrap();
    assert_eq!(digest, image.manifest_digest);
    let resolved = setup.client.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.bytes, image.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_recovers_when_a_patch_answer_is_lost() {
    let setup = setup().await;
    let mut options = setup.client.options().clone();
    options.monolithic_upload_limit = 1000;
    options.upload_chunk_size = 64 * 1024;
    let client = RegistryClient::with_options(options).unwrap();
    let contents: Vec<u8> = (0..300_000u32).map(|index| (index % 241) as u8).collect();
    let descriptor = kiln_types::Descriptor::new(
        "application/octet-stream",
        kiln_types::Digest::of_bytes(&contents),
        contents.len() as u64,
    );
    // The second PATCH reaches the registry but its answer is lost; the final PUT's too.
    setup.proxy.inject(
        Some("PATCH"),
        "/blobs/uploads/",
        Fault::Status {
            status: 503,
            headers: vec![],
        },
        1,
    );
    setup
        .proxy
        .inject(Some("PATCH"), "/blobs/uploads/", Fault::DropResponse, 1);
    setup
        .proxy
        .inject(Some("PUT"), "/blobs/uploads/", Fault::DropResponse, 1);
    let reference = setup.reference.with_repository("faults/chunked").unwrap();
    let outcome = client
        .push_blob(
            &reference,
            &descriptor,
            kiln_registry::BlobSource::Bytes(bytes::Bytes::from(contents.clone())),
        )
        .await
        .unwrap();
    assert_eq!(outcome, kiln_registry::BlobPushOutcome::Uploaded);
    let mut pulled = Vec::new();
    client
        .pull_blob_to_writer(&reference, &descriptor, BlobProgress::new(), &mut pulled)
        .await
        .unwrap();
    assert_eq!(pulled, contents);
    let log: Vec<(String, u16)> = setup
        .proxy
        .requests()
        .iter()
        .filter(|request| request.path.contains("/blobs/uploads/"))
        .map(|request| (request.method.clone(), request.status))
        .collect();
    // distribution cancels a session resumed at a stale offset, so after the lost answer the
    // status query fails and a fresh session is opened: two POSTs in all.
    let posts = log.iter().filter(|(method, _)| method == "POST").count();
    assert_eq!(posts, 2, "{log:?}");
    // The committing PUT's answer was lost; its retry finds the session gone, and the blob
    // being present counts as success.
    let puts = log.iter().filter(|(method, _)| method == "PUT").count();
    assert_eq!(puts, 2, "{log:?}");
}
