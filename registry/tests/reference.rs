//! Docker's reference normalization, as a table.

use kiln_registry::{Reference, ReferenceError};

/// `input` normalizes to `expected` (registry/repository[:tag][@digest]) with `api_host`.
fn check(input: &str, expected: &str, api_host: &str) {
    let reference =
        Reference::parse(input).unwrap_or_else(|error| panic!("{input:?} should parse: {error}"));
    assert_eq!(reference.to_string(), expected, "normalizing {input:?}");
    assert_eq!(reference.api_host(), api_host, "API host of {input:?}");
    // Normal form is a fixed point.
    assert_eq!(Reference::parse(expected).unwrap(), reference);
}

fn check_error(input: &str, fragment: &str) {
    match Reference::parse(input) {
        Ok(reference) => panic!("{input:?} should be refused, got {reference}"),
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains(fragment),
                "{input:?}: {text:?} lacks {fragment:?}"
            );
        }
    }
}

const DIGEST: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

#[test]
fn normalization_table() {
    let hub = "registry-1.docker.io";
    for (input, expected, api_host) in [
        ("busybox", "docker.io/library/busybox:latest", hub),
        ("busybox:1.36", "docker.io/library/busybox:1.36", hub),
        ("library/busybox", "docker.io/library/busybox:latest", hub),
        ("docker.io/busybox", "docker.io/library/busybox:latest", hub),
        (
            "index.docker.io/busybox",
            "docker.io/library/busybox:latest",
            hub,
        ),
        ("user/img", "docker.io/user/img:latest", hub),
        ("user/img:v1", "docker.io/user/img:v1", hub),
        ("user/team/img", "docker.io/user/team/img:latest", hub),
        ("localhost/img", "localhost/img:latest", "localhost"),
        (
            "localhost:5000/img:tag",
            "localhost:5000/img:tag",
            "localhost:5000",
        ),
        (
            "127.0.0.1:5000/a/b:c",
            "127.0.0.1:5000/a/b:c",
            "127.0.0.1:5000",
        ),
        ("[::1]:5000/img", "[::1]:5000/img:latest", "[::1]:5000"),
        ("ghcr.io/owner/repo", "ghcr.io/owner/repo:latest", "ghcr.io"),
        (
            "quay.io/a/b_c.d-e__f:tag_1.0-x",
            "quay.io/a/b_c.d-e__f:tag_1.0-x",
            "quay.io",
        ),
        (
            "my-registry.local:443/x",
            "my-registry.local:443/x:latest",
            "my-registry.local:443",
        ),
        ("img---x", "docker.io/library/img---x:latest", hub),
    ] {
        check(input, expected, api_host);
    }
    // A digest alone: no tag is invented; a tag and digest: both kept, digest pulled.
    let by_digest = Reference::parse(&format!("busybox@{DIGEST}")).unwrap();
    assert_eq!(
        by_digest.to_string(),
        format!("docker.io/library/busybox@{DIGEST}")
    );
    assert_eq!(by_digest.tag(), None);
    assert_eq!(by_digest.manifest_reference(), DIGEST);
    let both = Reference::parse(&format!("host:5000/img:tag@{DIGEST}")).unwrap();
    assert_eq!(both.tag(), Some("tag"));
    assert_eq!(both.manifest_reference(), DIGEST);
    assert_eq!(both.registry(), "host:5000");
    assert_eq!(both.repository(), "img");
    // `localhost:5000` alone is an image named localhost with tag 5000 (Docker agrees).
    check("localhost:5000", "docker.io/library/localhost:5000", hub);
}

#[test]
fn refusals_are_clear() {
    check_error("", "empty reference");
    check_error("user/Img", "must be lowercase");
    check_error("docker.io/User/img", "must be lowercase");
    check_error("img:", "invalid tag");
    check_error("img:.bad", "invalid tag");
    check_error(&format!("img:{}", "t".repeat(129)), "invalid tag");
    check_error("img@sha256:abc", "invalid digest");
    check_error("img@md5:abc", "invalid digest");
    check_error("a//b", "repository path components");
    check_error("a/b/", "repository path components");
    check_error("-a", "repository path components");
    check_error("a..b", "repository path components");
    check_error("a___b", "repository path components");
    check_error("host:port/img", "invalid registry host");
    check_error("exa mple/img", "");
    check_error(&"a".repeat(64), "64-character hexadecimal");
    check_error(&format!("reg.io/{}", "a".repeat(260)), "longer than 255");
    assert!(matches!(
        Reference::parse("user/Img"),
        Err(ReferenceError::Uppercase { .. })
    ));
    // Hostile text never panics.
    for text in [
        "@", ":", "/", "a@", "@sha256:", "a:b:c", "[::1", "[zz]:1/a", "é/ü:ö", "a/b@c@d",
    ] {
        let _ = Reference::parse(text);
    }
}

#[test]
fn with_helpers_keep_the_registry() {
    let reference = Reference::parse("localhost:5000/app:1").unwrap();
    assert_eq!(
        reference.with_tag("2").unwrap().to_string(),
        "localhost:5000/app:2"
    );
    assert_eq!(
        reference.with_repository("other/app").unwrap().to_string(),
        "localhost:5000/other/app:1"
    );
    assert!(reference.with_tag("-x").is_err());
    assert_eq!(reference.name(), "localhost:5000/app");
}
