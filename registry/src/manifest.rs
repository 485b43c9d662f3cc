//! Manifests: fetch by tag or digest, verify, classify (image manifest or index), and pick a
//! platform from an index.

use bytes::Bytes;
use kiln_types::media_type::{
    is_index, is_manifest, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_SCHEMA1,
    DOCKER_MANIFEST_SCHEMA1_SIGNED, OCI_INDEX, OCI_MANIFEST,
};
use kiln_types::{Descriptor, Digest, ImageIndex, ImageManifest, Platform};
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use crate::auth::Scope;
use crate::client::{
    read_limited, status_error, AuthMode, ReadLimitedError, RegistryClient, Request,
};
use crate::error::RegistryError;
use crate::reference::Reference;

/// What we accept from `GET /manifests/`: Docker v2 manifest and list, OCI manifest and index.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Index entries nested deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

/// A single-platform manifest as fetched: the exact bytes, their digest, the parsed document.
#[derive(Debug, Clone)]
pub struct FetchedImageManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub manifest: ImageManifest,
}

/// An index / manifest list as fetched.
#[derive(Debug, Clone)]
pub struct FetchedIndex {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
    pub index: ImageIndex,
}

/// Either kind of manifest.
// One value per fetch, moved rarely: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum FetchedManifest {
    Image(FetchedImageManifest),
    Index(FetchedIndex),
}

impl FetchedManifest {
    pub fn digest(&self) -> &Digest {
        match self {
            FetchedManifest::Image(manifest) => &manifest.digest,
            FetchedManifest::Index(index) => &index.digest,
        }
    }

    pub fn media_type(&self) -> &str {
        match self {
            FetchedManifest::Image(manifest) => &manifest.media_type,
            FetchedManifest::Index(index) => &index.media_type,
        }
    }

    pub fn bytes(&self) -> &Bytes {
        match self {
            FetchedManifest::Image(manifest) => &manifest.bytes,
            FetchedManifest::Index(index) => &index.bytes,
        }
    }

    /// A descriptor of these bytes, for storing or re-pushing them.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type(),
            self.digest().clone(),
            self.bytes().len() as u64,
        )
    }
}

/// A reference resolved to one platform's image manifest.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference as asked for.
    pub reference: Reference,
    /// What the reference points at: the index's digest for a multi-platform image, else the
    /// manifest's. This is the digest to pin (`name@digest`) and to key caches on.
    pub root_digest: Digest,
    /// The index the manifest was picked from, if the reference named one.
    pub index: Option<FetchedIndex>,
    /// The chosen platform's manifest.
    pub manifest: FetchedImageManifest,
}

/// Light facts from a HEAD: digest, media type and size of what a reference points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl RegistryClient {
    /// Fetches the manifest a reference names (by digest if it has one, else by tag),
    /// verifying its digest and media type.
    pub async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.api_url(
            reference.registry(),
            &format!(
                "v2/{}/manifests/{}",
                reference.repository(),
                reference.manifest_reference()
            ),
        )?;
        let limit = self.options().manifest_size_limit;
        let mut attempt = 1;
        // The body read can fail mid-way; that is retried like a failed request.
        let (content_type, header_digest, bytes) = loop {
            let mut request = Request::new(
                Method::GET,
                url.clone(),
                AuthMode::Registry {
                    registry: reference.registry(),
                    scopes: vec![Scope::pull(reference.repository())],
                },
            );
            request
                .headers
                .insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
            let response = self.send(request).await?;
            let status = response.status();
            if status == StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    reference: reference.to_string(),
                    message: crate::client::error_message(response).await,
                });
            }
            if !status.is_success() {
                return Err(status_error("GET", &url, response).await);
            }
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(media_type_of_content_type)
                .unwrap_or_default();
            let header_digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|value| value.to_str().ok())
                .and_then(|text| Digest::parse(text.trim()).ok());
            match read_limited(response, limit as usize).await {
                Ok(bytes) => break (content_type, header_digest, bytes),
                Err(ReadLimitedError::TooLarge(size)) => {
                    return Err(RegistryError::ManifestTooLarge {
                        reference: reference.to_string(),
                        size,
                        limit,
                    })
                }
                Err(ReadLimitedError::Transport(source)) => {
                    if attempt >= self.options().max_attempts {
                        return Err(RegistryError::Transport {
                            url: url.to_string(),
                            source,
                        });
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
            }
        };

        // Hash the exact bytes we are about to parse.
        let found = Digest::of_bytes(&bytes);
        let expected = reference.digest().cloned().or(header_digest);
        if let Some(expected) = expected {
            if expected != found {
                return Err(RegistryError::DigestMismatch { expected, found });
            }
        }
        parse_manifest(reference, &content_type, Bytes::from(bytes), found)
    }

    /// HEADs a reference: its digest, media type and size without the body; `None` if the
    /// registry has no such manifest. Falls back to a GET when the registry sends no
    /// `Docker-Content-Digest`.
    pub async fn head_manifest(
        &self,
        reference: &Reference,
    ) -> Result<Option<ManifestHead>, RegistryError> {
        let url = self.api_url(
            reference.registry(),
            &format!(
                "v2/{}/manifests/{}",
                reference.repository(),
                reference.manifest_reference()
            ),
        )?;
        let mut request = Request::new(
            Method::HEAD,
            url.clone(),
            AuthMode::Registry {
                registry: reference.registry(),
                scopes: vec![Scope::pull(reference.repository())],
            },
        );
        request
            .headers
            .insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(status_error("HEAD", &url, response).await);
        }
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .and_then(|text| Digest::parse(text.trim()).ok());
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .map(media_type_of_content_type)
            .unwrap_or_default();
        let size = crate::client::header_content_length(&response);
        match (digest, size) {
            (Some(digest), Some(size)) if is_index(&media_type) || is_manifest(&media_type) => {
                if let Some(expected) = reference.digest() {
                    if *expected != digest {
                        return Err(RegistryError::DigestMismatch {
                            expected: expected.clone(),
                            found: digest,
                        });
                    }
                }
                Ok(Some(ManifestHead {
                    digest,
                    media_type,
                    size,
                }))
            }
            _ => {
                let fetched = self.fetch_manifest(reference).await?;
                Ok(Some(ManifestHead {
                    digest: fetched.digest().clone(),
                    media_type: fetched.media_type().to_string(),
                    size: fetched.bytes().len() as u64,
                }))
            }
        }
    }

    /// Resolves a reference to one platform's image manifest: fetches what it names and, for
    /// an index, picks the entry for `platform` (the host's when `None`).
    pub async fn resolve(
        &self,
        reference: &Reference,
        platform: Option<&Platform>,
    ) -> Result<ResolvedImage, RegistryError> {
        let wanted = platform.cloned().unwrap_or_else(Platform::host);
        let mut fetched = self.fetch_manifest(reference).await?;
        let root_digest = fetched.digest().clone();
        let mut top_index = None;
        for _depth in 0..MAX_INDEX_DEPTH {
            match fetched {
                FetchedManifest::Image(manifest) => {
                    return Ok(ResolvedImage {
                        reference: reference.clone(),
                        root_digest,
                        index: top_index,
                        manifest,
                    });
                }
                FetchedManifest::Index(index) => {
                    let entry = select_platform(&index.index, &wanted).ok_or_else(|| {
                        RegistryError::PlatformNotFound {
                            reference: reference.to_string(),
                            wanted: wanted.to_string(),
                            available: available_platforms(&index.index),
                        }
                    })?;
                    let child = reference.with_digest(entry.digest.clone());
                    let next = self.fetch_manifest(&child).await?;
                    if next.media_type() != entry.media_type
                        && !(is_manifest(next.media_type()) && is_manifest(&entry.media_type))
                    {
                        return Err(RegistryError::MediaTypeMismatch {
                            reference: child.to_string(),
                            content_type: next.media_type().to_string(),
                            media_type: entry.media_type.clone(),
                        });
                    }
                    if next.bytes().len() as u64 != entry.size {
                        return Err(RegistryError::SizeMismatch {
                            digest: entry.digest.clone(),
                            expected: entry.size,
                            found: next.bytes().len() as u64,
                        });
                    }
                    if top_index.is_none() {
                        top_index = Some(index);
                    }
                    fetched = next;
                }
            }
        }
        Err(RegistryError::IndexTooDeep {
            reference: reference.to_string(),
            depth: MAX_INDEX_DEPTH,
        })
    }
}

/// The entry of an index for a wanted platform: the first whose platform matches
/// (`Platform::matches`, which honours variants), skipping non-image entries such as
/// attestation manifests (`unknown/unknown`).
pub fn select_platform<'a>(index: &'a ImageIndex, wanted: &Platform) -> Option<&'a Descriptor> {
    let candidates = index
        .manifests
        .iter()
        .filter(|entry| is_manifest(&entry.media_type) || is_index(&entry.media_type))
        .filter(|entry| {
            entry
                .platform
                .as_ref()
                .is_some_and(|platform| wanted.matches(platform))
        });
    // Prefer an exact variant match over an entry accepted only by default variant rules.
    let mut first = None;
    for entry in candidates {
        let platform = entry.platform.as_ref()?;
        if wanted.variant.is_none() || platform.variant == wanted.variant {
            return Some(entry);
        }
        first.get_or_insert(entry);
    }
    first
}

fn available_platforms(index: &ImageIndex) -> Vec<String> {
    index
        .manifests
        .iter()
        .filter_map(|entry| entry.platform.as_ref())
        .map(|platform| platform.to_string())
        .collect()
}

/// `application/json; charset=utf-8` -> `application/json`.
fn media_type_of_content_type(value: &str) -> String {
    value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Classifies and parses manifest bytes whose digest is already known and verified.
pub fn parse_manifest(
    reference: &Reference,
    content_type: &str,
    bytes: Bytes,
    digest: Digest,
) -> Result<FetchedManifest, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "schemaVersion", default)]
        schema_version: Option<u64>,
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        config: Option<serde::de::IgnoredAny>,
        #[serde(rename = "fsLayers", default)]
        fs_layers: Option<serde::de::IgnoredAny>,
    }
    let invalid = |source| RegistryError::InvalidManifest {
        reference: reference.to_string(),
        source,
    };
    let content_type = media_type_of_content_type(content_type);
    let schema1_type =
        content_type == DOCKER_MANIFEST_SCHEMA1 || content_type == DOCKER_MANIFEST_SCHEMA1_SIGNED;
    let probe: Probe = match serde_json::from_slice(&bytes) {
        Ok(probe) => probe,
        Err(_) if schema1_type => {
            return Err(RegistryError::Schema1 {
                reference: reference.to_string(),
            })
        }
        Err(error) => return Err(invalid(error)),
    };
    if schema1_type || probe.schema_version == Some(1) || probe.fs_layers.is_some() {
        return Err(RegistryError::Schema1 {
            reference: reference.to_string(),
        });
    }
    let known = |text: &str| is_manifest(text) || is_index(text);
    if let Some(declared) = &probe.media_type {
        if known(&content_type) && *declared != content_type {
            return Err(RegistryError::MediaTypeMismatch {
                reference: reference.to_string(),
                content_type,
                media_type: declared.clone(),
            });
        }
    }
    let media_type = match (&probe.media_type, known(&content_type)) {
        (Some(declared), _) => declared.clone(),
        (None, true) => content_type.clone(),
        // Neither says: tell by shape, as OCI allows mediaType to be absent.
        (None, false) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, false) if probe.config.is_some() => OCI_MANIFEST.to_string(),
        (None, false) => {
            return Err(RegistryError::UnsupportedMediaType {
                reference: reference.to_string(),
                media_type: content_type,
            })
        }
    };
    if probe.schema_version != Some(2) {
        return Err(RegistryError::UnsupportedMediaType {
            reference: reference.to_string(),
            media_type: format!(
                "{media_type} with schemaVersion {}",
                probe
                    .schema_version
                    .map_or("missing".to_string(), |version| version.to_string())
            ),
        });
    }
    if is_index(&media_type) {
        if probe.config.is_some() {
            return Err(RegistryError::MediaTypeMismatch {
                reference: reference.to_string(),
                content_type: "a manifest with a config".into(),
                media_type,
            });
        }
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(invalid)?;
        return Ok(FetchedManifest::Index(FetchedIndex {
            digest,
            media_type,
            bytes,
            index,
        }));
    }
    if is_manifest(&media_type) {
        if probe.manifests.is_some() {
            return Err(RegistryError::MediaTypeMismatch {
                reference: reference.to_string(),
                content_type: "an index with manifests".into(),
                media_type,
            });
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(invalid)?;
        return Ok(FetchedManifest::Image(FetchedImageManifest {
            digest,
            media_type,
            bytes,
            manifest,
        }));
    }
    Err(RegistryError::UnsupportedMediaType {
        reference: reference.to_string(),
        media_type,
    })
}

/// The media types a manifest PUT may carry.
pub fn is_pushable_manifest_type(media_type: &str) -> bool {
    matches!(
        media_type,
        DOCKER_MANIFEST | DOCKER_MANIFEST_LIST | OCI_MANIFEST | OCI_INDEX
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference::parse("localhost:5000/a:b").unwrap()
    }

    fn check(content_type: &str, body: &str) -> Result<FetchedManifest, RegistryError> {
        let bytes = Bytes::from(body.to_string());
        let digest = Digest::of_bytes(&bytes);
        parse_manifest(&reference(), content_type, bytes, digest)
    }

    const CONFIG: &str = r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}"#;

    #[test]
    fn classifies_by_declared_type_content_type_or_shape() {
        let body = format!(r#"{{"schemaVersion":2,"config":{CONFIG},"layers":[]}}"#);
        assert!(matches!(
            check(OCI_MANIFEST, &body).unwrap(),
            FetchedManifest::Image(_)
        ));
        assert!(matches!(
            check("application/json", &body).unwrap(),
            FetchedManifest::Image(_)
        ));
        let index = r#"{"schemaVersion":2,"manifests":[]}"#;
        let FetchedManifest::Index(index) = check("", index).unwrap() else {
            panic!("expected an index")
        };
        assert_eq!(index.media_type, OCI_INDEX);
    }

    #[test]
    fn rejects_schema1_and_mismatches() {
        let schema1 = r#"{"schemaVersion":1,"name":"a","tag":"b","fsLayers":[]}"#;
        let error = check(DOCKER_MANIFEST_SCHEMA1_SIGNED, schema1).unwrap_err();
        assert!(error
            .to_string()
            .contains("schema1 manifests are not supported"));
        assert!(matches!(
            check("application/json", schema1),
            Err(RegistryError::Schema1 { .. })
        ));
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{CONFIG},"layers":[]}}"#
        );
        assert!(matches!(
            check(OCI_MANIFEST, &body),
            Err(RegistryError::MediaTypeMismatch { .. })
        ));
        let confused = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{CONFIG},"layers":[],"manifests":[]}}"#
        );
        assert!(check(OCI_MANIFEST, &confused).is_err());
        assert!(check(OCI_MANIFEST, "not json").is_err());
        assert!(check(OCI_MANIFEST, "[]").is_err());
    }

    #[test]
    fn selects_platform_with_variant() {
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{a}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{b}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{c}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{d}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{e}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}
            ]}}"#,
            a = "a".repeat(64),
            b = "b".repeat(64),
            c = "c".repeat(64),
            d = "d".repeat(64),
            e = "e".repeat(64),
        );
        let index: ImageIndex = serde_json::from_str(&text).unwrap();
        let pick = |wanted: &str| {
            select_platform(&index, &Platform::parse(wanted).unwrap())
                .map(|entry| entry.digest.hex()[..1].to_string())
        };
        assert_eq!(pick("linux/amd64").as_deref(), Some("a"));
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("c"));
        assert_eq!(pick("linux/arm/v6").as_deref(), Some("b"));
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("d"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("d"));
        assert_eq!(pick("linux/s390x"), None);
    }
}
