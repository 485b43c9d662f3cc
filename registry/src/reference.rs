//! Image references (`busybox`, `host:5000/team/app:1.0`, `app@sha256:...`) with Docker's
//! normalization rules.

use std::fmt;
use std::str::FromStr;

use kiln_types::{Digest, DigestError};

/// The registry that a name without a domain belongs to.
pub const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's distribution API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The tag a reference without tag or digest means.
pub const DEFAULT_TAG: &str = "latest";

const MAX_NAME_LENGTH: usize = 255;
const MAX_TAG_LENGTH: usize = 128;

/// A fully normalized image reference: registry, repository, and a tag, a digest, or both.
///
/// Parsing fills in Docker's defaults, so `busybox` becomes
/// `docker.io/library/busybox:latest`. When both a tag and a digest are given, the digest is
/// what gets pulled; the tag is kept for display.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    #[error("invalid reference format: empty reference")]
    Empty,
    #[error("invalid reference format {reference:?}: repository name must be lowercase")]
    Uppercase { reference: String },
    #[error("invalid reference format {reference:?}: {reason}")]
    Invalid {
        reference: String,
        reason: &'static str,
    },
    #[error("invalid reference format {reference:?}: repository name longer than {MAX_NAME_LENGTH} characters")]
    NameTooLong { reference: String },
    #[error("invalid tag {tag:?} in {reference:?}: expected up to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'")]
    InvalidTag { reference: String, tag: String },
    #[error("invalid digest in {reference:?}")]
    InvalidDigest {
        reference: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid repository name {reference:?}: cannot be a 64-character hexadecimal string (an image id)")]
    HexadecimalName { reference: String },
}

impl Reference {
    /// Parses and normalizes a reference the way `docker pull` does.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let invalid = |reason: &'static str| ReferenceError::Invalid {
            reference: text.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::HexadecimalName {
                reference: text.to_string(),
            });
        }

        let (remainder, digest) = match text.split_once('@') {
            Some((name, digest_text)) => {
                let digest =
                    Digest::parse(digest_text).map_err(|source| ReferenceError::InvalidDigest {
                        reference: text.to_string(),
                        source,
                    })?;
                (name, Some(digest))
            }
            None => (text, None),
        };

        // A tag follows the last ':' that comes after the last '/', so `host:5000/app` has none.
        let last_slash = remainder.rfind('/').map_or(0, |index| index + 1);
        let (name, tag) = match remainder[last_slash..].rfind(':') {
            Some(colon) => {
                let colon = last_slash + colon;
                (&remainder[..colon], Some(&remainder[colon + 1..]))
            }
            None => (remainder, None),
        };
        if let Some(tag) = tag {
            if !is_valid_tag(tag) {
                return Err(ReferenceError::InvalidTag {
                    reference: text.to_string(),
                    tag: tag.to_string(),
                });
            }
        }
        if name.is_empty() {
            return Err(invalid("missing repository name"));
        }

        // The first component is a registry host if it looks like one (Docker's rule).
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if !is_valid_registry_host(&registry) {
            return Err(invalid("invalid registry host"));
        }
        let registry = if registry == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                reference: text.to_string(),
            });
        }
        if path.is_empty() || !path.split('/').all(is_valid_path_component) {
            return Err(invalid(
                "repository path components must match [a-z0-9]+ separated by '.', '_', '__' or dashes",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LENGTH {
            return Err(ReferenceError::NameTooLong {
                reference: text.to_string(),
            });
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_string()),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_TAG.to_string()),
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// A reference from already separate parts (validated like [`Reference::parse`]).
    pub fn from_parts(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Result<Self, ReferenceError> {
        let mut text = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            text.push(':');
            text.push_str(tag);
        }
        if let Some(digest) = digest {
            text.push('@');
            text.push_str(digest.as_str());
        }
        Self::parse(&text)
    }

    /// The registry as named (`docker.io`, `localhost:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) that serves the registry API: `registry-1.docker.io` for Docker Hub.
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// What goes after `/manifests/` in the API: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.as_str(),
            (None, Some(tag)) => tag,
            (None, None) => DEFAULT_TAG,
        }
    }

    /// The same repository pinned to a digest (the tag is kept for display).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Self, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::InvalidTag {
                reference: self.to_string(),
                tag: tag.to_string(),
            });
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        })
    }

    /// Another repository on the same registry, at the same tag/digest.
    pub fn with_repository(&self, repository: &str) -> Result<Self, ReferenceError> {
        Self::from_parts(
            &self.registry,
            repository,
            self.tag.as_deref(),
            self.digest.as_ref(),
        )
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// The host serving a registry's API (`docker.io` is served by `registry-1.docker.io`).
pub fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB || registry == "index.docker.io" {
        DOCKER_HUB_API_HOST
    } else {
        registry
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Reference::parse(text)
    }
}

fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LENGTH
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty() || !is_lower_alnum(bytes[0]) || !is_lower_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        if is_lower_alnum(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < bytes.len() && !is_lower_alnum(bytes[index]) {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

fn is_lower_alnum(byte: u8) -> bool {
    byte.is_ascii_lowercase() || byte.is_ascii_digit()
}

/// `host[:port]` where host is dotted DNS labels or a bracketed IPv6 address.
fn is_valid_registry_host(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((address, after)) = rest.split_once(']') else {
            return false;
        };
        if address.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
            return false;
        }
    }
    if registry.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

/// Whether a registry host is on the loopback interface (`localhost`, 127.0.0.0/8, `::1`).
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(address, _)| address)
    } else {
        registry.rsplit_once(':').map_or(registry, |(host, _)| host)
    };
    if host == "localhost" {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(address) => address.is_loopback(),
        Err(_) => false,
    }
}
