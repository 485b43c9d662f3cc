//! Names of local images: references are normalized the way `docker` does (`busybox` is
//! `docker.io/library/busybox:latest`) before they are stored or looked up, so that
//! `kiln import x.tar busybox` and `FROM busybox` meet.

use kiln_registry::Reference;
use kiln_snapshotter::{ImageRecord, Store, StoreError};
use kiln_types::{Digest, Platform};

use crate::error::{ImageError, Result};

/// Parses and normalizes a reference.
pub fn parse_reference(text: &str) -> Result<Reference> {
    Reference::parse(text).map_err(|source| ImageError::Reference {
        text: text.to_string(),
        source,
    })
}

/// The name an image is stored under: `registry/repository:tag`, or
/// `registry/repository@digest` for a reference with a digest and no tag.
pub fn store_name(reference: &Reference) -> String {
    match (reference.tag(), reference.digest()) {
        (Some(tag), _) => format!("{}:{tag}", reference.name()),
        (None, Some(digest)) => format!("{}@{digest}", reference.name()),
        (None, None) => format!("{}:latest", reference.name()),
    }
}

/// The store name for a reference given as text (normalized).
pub fn normalize_name(text: &str) -> Result<String> {
    parse_reference(text).map(|reference| store_name(&reference))
}

/// Docker's short form of a stored name for display: `docker.io/library/busybox` is
/// `busybox`, `docker.io/user/app` is `user/app`, others stay whole.
pub fn familiar_name(repository: &str) -> &str {
    let short = repository.strip_prefix("docker.io/").unwrap_or(repository);
    if short.len() != repository.len() {
        short.strip_prefix("library/").unwrap_or(short)
    } else {
        repository
    }
}

/// Splits a store name into repository and tag (`None` for a digest name).
pub fn split_store_name(name: &str) -> (&str, Option<&str>) {
    if let Some((repository, _digest)) = name.split_once('@') {
        return (repository, None);
    }
    let last_slash = name.rfind('/').map_or(0, |index| index + 1);
    match name[last_slash..].rfind(':') {
        Some(colon) => (
            &name[..last_slash + colon],
            Some(&name[last_slash + colon + 1..]),
        ),
        None => (name, None),
    }
}

/// Finds a local image by name (normalized: `busybox` finds
/// `docker.io/library/busybox:latest`), by its image id (the config digest, as Docker's
/// image ids; see [`image_id`]) or a unique prefix of at least 4 hex characters of it, and
/// else by the digest (or a unique prefix) of the manifest its name points at.
pub fn find_image(store: &Store, text: &str) -> Result<ImageRecord> {
    if let Ok(name) = normalize_name(text) {
        if let Some(record) = store
            .image(&name)
            .map_err(ImageError::store(format!("looking up image {name}")))?
        {
            return Ok(record);
        }
    }
    if let Some(hex) = id_prefix(text) {
        let records = store
            .images()
            .map_err(ImageError::store("listing images"))?;
        let mut matches: Vec<(Digest, ImageRecord)> = records
            .into_iter()
            .filter_map(|record| {
                let id = image_id(store, &record);
                id.hex().starts_with(hex).then_some((id, record))
            })
            .collect();
        let distinct: std::collections::BTreeSet<&Digest> =
            matches.iter().map(|(id, _)| id).collect();
        match distinct.len() {
            0 => {}
            1 => return Ok(matches.swap_remove(0).1),
            count => {
                return Err(ImageError::Ambiguous {
                    reference: text.to_string(),
                    count,
                })
            }
        }
    }
    match store.resolve_image(text) {
        Ok(record) => Ok(record),
        Err(StoreError::ImageNotFound { .. }) => Err(ImageError::NotFound {
            reference: text.to_string(),
        }),
        Err(source) => Err(ImageError::Store {
            action: format!("looking up image {text}"),
            source,
        }),
    }
}

/// The hex part of an image id or id prefix (`3f2a`, `sha256:3f2a...`): 4 to 64 lowercase hex
/// characters.
fn id_prefix(text: &str) -> Option<&str> {
    let hex = text.strip_prefix("sha256:").unwrap_or(text);
    let valid = (4..=64).contains(&hex.len())
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then_some(hex)
}

/// An image's id as Docker shows it: the digest of its config (for an index, the config of
/// this machine's platform). When the config cannot be read (an index without this platform,
/// a damaged store) the digest of what the name points at stands in.
pub fn image_id(store: &Store, record: &ImageRecord) -> Digest {
    store
        .resolve_layers(&record.target, &Platform::host())
        .map(|resolved| resolved.manifest.config.digest)
        .unwrap_or_else(|_| record.target.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_are_normalized() {
        assert_eq!(
            normalize_name("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_name("127.0.0.1:5000/app:1").unwrap(),
            "127.0.0.1:5000/app:1"
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalize_name(&format!("localhost/app@{digest}")).unwrap(),
            format!("localhost/app@{digest}")
        );
    }

    #[test]
    fn id_prefixes_are_4_to_64_lowercase_hex() {
        assert_eq!(id_prefix("3f2a"), Some("3f2a"));
        assert_eq!(id_prefix("sha256:3f2a9b"), Some("3f2a9b"));
        assert_eq!(id_prefix(&"a".repeat(64)), Some("a".repeat(64).as_str()));
        assert_eq!(id_prefix("3f2"), None);
        assert_eq!(id_prefix("3F2A"), None);
        assert_eq!(id_prefix("busybox"), None);
        assert_eq!(id_prefix(&"a".repeat(65)), None);
        assert_eq!(id_prefix("sha512:3f2a"), None);
    }

    #[test]
    fn familiar_names_drop_docker_hub() {
        assert_eq!(familiar_name("docker.io/library/busybox"), "busybox");
        assert_eq!(familiar_name("docker.io/user/app"), "user/app");
        assert_eq!(
            familiar_name("127.0.0.1:5000/busybox"),
            "127.0.0.1:5000/busybox"
        );
    }

    #[test]
    fn store_names_split_at_the_tag() {
        assert_eq!(
            split_store_name("127.0.0.1:5000/app:1"),
            ("127.0.0.1:5000/app", Some("1"))
        );
        assert_eq!(
            split_store_name("127.0.0.1:5000/app"),
            ("127.0.0.1:5000/app", None)
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            split_store_name(&format!("localhost/app@{digest}")),
            ("localhost/app", None)
        );
    }
}
