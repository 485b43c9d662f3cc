//! Pull and push against a real registry (distribution 2.8 from the harness).

use kiln_registry::{
    BlobProgress, BlobPushOutcome, BlobSource, FetchedManifest, RegistryClient, RegistryError,
};
use kiln_testsupport::{
    busybox_image, many_layer_image, special_files_image, BuiltIndex, ImageBuilder, LayerBuilder,
    TestRegistry,
};
use kiln_types::media_type::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST};
use kiln_types::{Digest, ImageSpec, Platform};

fn small_image(marker: &str, platform: &str) -> kiln_testsupport::BuiltImage {
    let mut layer = LayerBuilder::new();
    layer.file("marker", marker.as_bytes(), 0o644);
    ImageBuilder::new()
        .platform(Platform::parse(platform).unwrap())
        .layer_tar(layer.finish())
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_back_identical_by_tag_and_digest() {
    let registry = TestRegistry::start();
    let client = registry.client();
    let image = busybox_image();
    let reference = registry.reference("library/busybox:latest");
    let digest = image.push(&client, &reference).await.unwrap();
    assert_eq!(digest, image.manifest_digest);

    let resolved = client.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.root_digest, digest);
    assert!(resolved.index.is_none());
    assert_eq!(resolved.manifest.bytes, image.manifest_bytes);
    assert_eq!(resolved.manifest.media_type, OCI_MANIFEST);
    assert_eq!(resolved.manifest.manifest, image.manifest);

    let pinned = reference.with_digest(digest.clone());
    let by_digest = client.fetch_manifest(&pinned).await.unwrap();
    assert_eq!(by_digest.digest(), &digest);
    assert_eq!(by_digest.bytes(), &image.manifest_bytes);

    let head = client.head_manifest(&reference).await.unwrap().unwrap();
    assert_eq!(head.digest, digest);
    assert_eq!(head.size, image.manifest_bytes.len() as u64);

    let config = client
        .fetch_blob_bytes(&reference, &resolved.manifest.manifest.config, 1 << 20)
        .await
        .unwrap();
    assert_eq!(config, image.config_bytes);
    let spec: ImageSpec = serde_json::from_slice(&config).unwrap();
    assert_eq!(spec.config.cmd, Some(vec!["sh".to_string()]));

    let layer = &resolved.manifest.manifest.layers[0];
    let mut pulled = Vec::new();
    let receipt = client
        .pull_blob_to_writer(&reference, layer, BlobProgress::new(), &mut pulled)
        .await
        .unwrap();
    assert_eq!(receipt.digest, layer.digest);
    assert_eq!(receipt.resumes, 0);
    assert_eq!(pulled, image.layers[0].blob);

    // An async sink gets the same bytes.
    let mut async_sink = Vec::new();
    client
        .pull_blob(&reference, layer, BlobProgress::new(), &mut async_sink)
        .await
        .unwrap();
    assert_eq!(async_sink, pulled);

    let missing = registry.reference("library/busybox:nope");
    assert!(matches!(
        client.fetch_manifest(&missing).await,
        Err(RegistryError::NotFound { .. })
    ));
    assert_eq!(client.head_manifest(&missing).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_media_types_round_trip() {
    let registry = TestRegistry::start();
    let client = registry.client();
    let mut layer = LayerBuilder::new();
    layer.file("hello", b"docker", 0o644);
    let image = ImageBuilder::new()
        .docker_media_types()
        .layer_tar(layer.finish())
        .build();
    let reference = registry.reference("docker/style:v2");
    image.push(&client, &reference).await.unwrap();
    let resolved = client.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.media_type, DOCKER_MANIFEST);
    assert_eq!(resolved.manifest.bytes, image.manifest_bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_platform_selection() {
    let registry = TestRegistry::start();
    let client = registry.client();
    let amd64 = small_image("amd64", "linux/amd64");
    let arm64 = small_image("arm64", "linux/arm64/v8");
    let arm_v7 = small_image("armv7", "linux/arm/v7");
    for docker in [false, true] {
        let index = BuiltIndex::new(vec![amd64.clone(), arm64.clone(), arm_v7.clone()], docker);
        let reference = registry.reference(if docker {
            "multi/list:1"
        } else {
            "multi/oci:1"
        });
        let index_digest = index.push(&client, &reference).await.unwrap();

        // Default: the host platform (linux/amd64 here).
        let host = Platform::host();
        let resolved = client.resolve(&reference, None).await.unwrap();
        assert_eq!(resolved.root_digest, index_digest);
        let fetched_index = resolved.index.as_ref().unwrap();
        assert_eq!(
            fetched_index.media_type,
            if docker {
                DOCKER_MANIFEST_LIST
            } else {
                OCI_INDEX
            }
        );
        let expected_default = [&amd64, &arm64, &arm_v7]
            .into_iter()
            .find(|image| host.matches(&image.platform))
            .unwrap();
        assert_eq!(resolved.manifest.digest, expected_default.manifest_digest);

        // A wanted platform overrides; the variant is honoured.
        let wanted = Platform::parse("linux/arm64/v8").unwrap();
        let resolved = client.resolve(&reference, Some(&wanted)).await.unwrap();
        assert_eq!(resolved.manifest.digest, arm64.manifest_digest);
        let wanted = Platform::parse("linux/arm/v7").unwrap();
        let resolved = client.resolve(&reference, Some(&wanted)).await.unwrap();
        assert_eq!(resolved.manifest.digest, arm_v7.manifest_digest);

        // A platform the index lacks is an error that lists what there is.
        let wanted = Platform::parse("linux/arm/v6").unwrap();
        let error = client.resolve(&reference, Some(&wanted)).await.unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, RegistryError::PlatformNotFound { .. }),
            "{text}"
        );
        assert!(
            text.contains("linux/arm/v6") && text.contains("linux/amd64"),
            "{text}"
        );
        let wanted = Platform::parse("linux/s390x").unwrap();
        assert!(client.resolve(&reference, Some(&wanted)).await.is_err());

        // Fetching the index itself gives the index.
        match client.fetch_manifest(&reference).await.unwrap() {
            FetchedManifest::Index(fetched) => assert_eq!(fetched.index.manifests.len(), 3),
            FetchedManifest::Image(_) => panic!("expected an index"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_stream_and_resume_from_a_kept_prefix() {
    use futures_util::StreamExt as _;
    let registry = TestRegistry::start();
    let client = registry.client();
    let mut layer = LayerBuilder::new();
    let contents: Vec<u8> = (0..2_000_000u32)
        .map(|index| (index * 7 % 251) as u8)
        .collect();
    layer.file("big", &contents, 0o644);
    let image = ImageBuilder::new().layer_tar(layer.finish()).build();
    let reference = registry.reference("stream/me:1");
    image.push(&client, &reference).await.unwrap();
    let descriptor = &image.layers[0].descriptor;

    let mut streamed = Vec::new();
    let mut stream = Box::pin(client.blob_stream(&reference, descriptor, BlobProgress::new()));
    while let Some(chunk) = stream.next().await {
        streamed.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(streamed, image.layers[0].blob);

    // A caller that kept the first part (a partial ingest file) resumes from there.
    let half = streamed.len() / 2;
    let progress = BlobProgress::from_prefix(&streamed[..half]).unwrap();
    assert_eq!(progress.offset(), half as u64);
    let mut rest = Vec::new();
    let receipt = client
        .pull_blob_to_writer(&reference, descriptor, progress, &mut rest)
        .await
        .unwrap();
    assert_eq!(receipt.size, streamed.len() as u64);
    assert_eq!(&rest[..], &streamed[half..]);

    // A wrong prefix is caught by the digest check.
    let mut wrong_prefix = streamed[..half].to_vec();
    wrong_prefix[0] ^= 1;
    let progress = BlobProgress::from_prefix(&wrong_prefix[..]).unwrap();
    let error = client
        .pull_blob_to_writer(&reference, descriptor, progress, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(
        matches!(error, RegistryError::DigestMismatch { .. }),
        "{error}"
    );

    // A descriptor whose digest disagrees with the bytes (same size) is refused after
    // streaming, so the caller can discard its ingest.
    let mut lying = descriptor.clone();
    lying.digest = Digest::of_bytes(b"something else");
    let error = client
        .pull_blob_to_writer(&reference, &lying, BlobProgress::new(), &mut Vec::new())
        .await
        .unwrap_err();
    // The registry looks blobs up by digest: an unknown digest is a 404.
    assert!(matches!(error, RegistryError::NotFound { .. }), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_layers_and_special_files_push_and_pull() {
    let registry = TestRegistry::start();
    let client = registry.client();
    let many = many_layer_image(150);
    let reference = registry.reference("many/layers:150");
    many.push(&client, &reference).await.unwrap();
    let resolved = client.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.manifest.layers.len(), 150);

    // Parallel downloads over clones of one client.
    let mut tasks = Vec::new();
    for layer in resolved.manifest.manifest.layers.clone() {
        let client: RegistryClient = client.clone();
        let reference = reference.clone();
        tasks.push(tokio::spawn(async move {
            let mut sink = Vec::new();
            client
                .pull_blob_to_writer(&reference, &layer, BlobProgress::new(), &mut sink)
                .await
                .map(|receipt| receipt.digest)
        }));
    }
    for (task, layer) in tasks.into_iter().zip(&many.layers) {
        assert_eq!(task.await.unwrap().unwrap(), layer.descriptor.digest);
    }

    let special = special_files_image();
    let reference = registry.reference("special/files:1");
    special.push(&client, &reference).await.unwrap();
    let resolved = client.resolve(&reference, None).await.unwrap();
    assert_eq!(resolved.manifest.manifest.layers.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_skips_existing_and_uploads_large_blobs_in_chunks() {
    let registry = TestRegistry::start();
    let mut options = registry.client_options();
    options.monolithic_upload_limit = 64 * 1024;
    options.upload_chunk_size = 100 * 1000;
    let client = registry.client_with(options);
    let contents: Vec<u8> = (0..1_000_003u32).map(|index| (index % 253) as u8).collect();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("blob");
    std::fs::write(&path, &contents).unwrap();
    let descriptor = kiln_types::Descriptor::new(
        "application/octet-stream",
        Digest::of_bytes(&contents),
        contents.len() as u64,
    );
    let reference = registry.reference("chunked/upload:1");
    let outcome = client
        .push_blob(&reference, &descriptor, BlobSource::File(path.clone()))
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::Uploaded);
    let outcome = client
        .push_blob(&reference, &descriptor, BlobSource::File(path))
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::AlreadyPresent);
    assert_eq!(
        client
            .blob_exists(&reference, &descriptor.digest)
            .await
            .unwrap(),
        Some(contents.len() as u64)
    );
    let mut pulled = Vec::new();
    client
        .pull_blob_to_writer(&reference, &descriptor, BlobProgress::new(), &mut pulled)
        .await
        .unwrap();
    assert_eq!(pulled, contents);

    // A source shorter than its descriptor is an error, not a hang or a bad blob.
    let mut short = descriptor.clone();
    short.digest = Digest::of_bytes(b"short");
    short.size = 10;
    let error = client
        .push_blob(
            &reference,
            &short,
            BlobSource::Bytes(bytes::Bytes::from_static(b"short")),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, RegistryError::Io(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_repository_mount() {
    let registry = TestRegistry::start();
    let client = registry.client();
    let image = small_image("mount me", "linux/amd64");
    let source = registry.reference("team/source:1");
    image.push(&client, &source).await.unwrap();
    let target = registry.reference("team/target:1");
    let layer = &image.layers[0];
    let outcome = client
        .push_blob_mounting(
            &target,
            &layer.descriptor,
            BlobSource::Bytes(layer.blob.clone()),
            Some(&source),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::Mounted);
    assert!(client
        .blob_exists(&target, &layer.descriptor.digest)
        .await
        .unwrap()
        .is_some());

    // Mounting a blob the source lacks: the registry opens an upload (202), which is used.
    let mut other = LayerBuilder::new();
    other.file("other", b"not in source", 0o644);
    let other = kiln_testsupport::Layer::gzip(other.finish());
    let outcome = client
        .push_blob_mounting(
            &target,
            &other.descriptor,
            BlobSource::Bytes(other.blob.clone()),
            Some(&source),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BlobPushOutcome::Uploaded);
    let mut pulled = Vec::new();
    client
        .pull_blob_to_writer(&target, &other.descriptor, BlobProgress::new(), &mut pulled)
        .await
        .unwrap();
    assert_eq!(pulled, other.blob);
}
