//! Image reference normalization as Docker does it (`alpine` -> `docker.io/library/alpine:latest`).

/// Why a `FROM` or `--from` reference is not a valid image name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    #[error("invalid reference format: repository name ({name}) must be lowercase")]
    Uppercase { name: String },
    #[error("invalid reference format: {reference:?}")]
    Invalid { reference: String },
}

/// The fully qualified form of an image reference: registry host, repository path, and a tag
/// (`latest` when neither tag nor digest is given); a digest is kept.
pub fn normalize_reference(reference: &str) -> Result<String, ReferenceError> {
    let invalid = || ReferenceError::Invalid {
        reference: reference.to_string(),
    };
    if reference.is_empty() || reference.len() > 4096 {
        return Err(invalid());
    }
    let (name_and_tag, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
        if algorithm.is_empty()
            || !algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
            || hex.len() < 32
            || !hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(invalid());
        }
    }
    // The tag is after the last ':' that comes after the last '/'.
    let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(colon) => {
            let split = last_slash + colon;
            (&name_and_tag[..split], Some(&name_and_tag[split + 1..]))
        }
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && tag
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            return Err(invalid());
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let domain = if components.len() > 1
        && (components[0].contains('.')
            || components[0].contains(':')
            || components[0] == "localhost"
            || components[0].bytes().any(|b| b.is_ascii_uppercase()))
    {
        let domain = components.remove(0);
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(invalid());
        }
        if domain == "index.docker.io" {
            "docker.io".to_string()
        } else {
            domain.to_string()
        }
    } else {
        "docker.io".to_string()
    };
    if components.is_empty() {
        return Err(invalid());
    }
    for component in &components {
        if component.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ReferenceError::Uppercase {
                name: name.to_string(),
            });
        }
        if !is_path_component(component) {
            return Err(invalid());
        }
    }
    let mut path = components.join("/");
    if domain == "docker.io" && components.len() == 1 {
        path = format!("library/{path}");
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(tag), _) => {
            out.push(':');
            out.push_str(tag);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(digest) = digest {
        out.push('@');
        out.push_str(digest);
    }
    Ok(out)
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte.is_ascii_lowercase() || byte.is_ascii_digit() {
            index += 1;
            continue;
        }
        // A separator run: ".", "_", "__", or one or more "-".
        let start = index;
        while index < bytes.len() && !bytes[index].is_ascii_alphanumeric() {
            index += 1;
        }
        let separator = &component[start..index];
        let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("alpine", "docker.io/library/alpine:latest"),
            ("alpine:3.20", "docker.io/library/alpine:3.20"),
            ("user/app", "docker.io/user/app:latest"),
            ("ghcr.io/o/r:v1", "ghcr.io/o/r:v1"),
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("localhost/x:1", "localhost/x:1"),
            ("index.docker.io/library/busybox", "docker.io/library/busybox:latest"),
            (
                "golang@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "docker.io/library/golang@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
            ("a/b__c/d-e--f", "docker.io/a/b__c/d-e--f:latest"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_reference(input).unwrap(), expected, "{input}");
        }
        for bad in [
            "",
            "Alpine",
            "alpine:",
            "a//b",
            "-a",
            "alpine@sha256:xyz",
            "a:b:c",
            "a b",
        ] {
            assert!(normalize_reference(bad).is_err(), "{bad}");
        }
    }
}
