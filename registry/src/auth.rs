//! Authentication: `WWW-Authenticate` challenges, token scopes, and the token cache.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// An access scope a token is asked for: `repository:<name>:<actions>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    pub resource_type: String,
    pub name: String,
    pub actions: BTreeSet<String>,
}

impl Scope {
    /// `repository:<name>:pull`
    pub fn pull(repository: &str) -> Self {
        Self::repository(repository, &["pull"])
    }

    /// `repository:<name>:pull,push`
    pub fn push(repository: &str) -> Self {
        Self::repository(repository, &["pull", "push"])
    }

    pub fn repository(repository: &str, actions: &[&str]) -> Self {
        Scope {
            resource_type: "repository".into(),
            name: repository.into(),
            actions: actions.iter().map(|action| action.to_string()).collect(),
        }
    }

    /// Parses `type:name:actions` (the name may itself hold a `:port`-free path).
    pub fn parse(text: &str) -> Option<Self> {
        let (resource_type, rest) = text.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if resource_type.is_empty() || name.is_empty() {
            return None;
        }
        Some(Scope {
            resource_type: resource_type.into(),
            name: name.into(),
            actions: actions
                .split(',')
                .filter(|action| !action.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// The form sent in a token request's `scope` parameter.
    pub fn to_parameter(&self) -> String {
        let actions: Vec<&str> = self.actions.iter().map(String::as_str).collect();
        format!("{}:{}:{}", self.resource_type, self.name, actions.join(","))
    }
}

/// Merges scopes on the same resource, so `pull` and `push` on one repository become one
/// `pull,push` entry; the result is sorted, which makes it usable as a cache key.
pub fn merge_scopes(scopes: impl IntoIterator<Item = Scope>) -> Vec<Scope> {
    let mut merged: std::collections::BTreeMap<(String, String), BTreeSet<String>> =
        Default::default();
    for scope in scopes {
        merged
            .entry((scope.resource_type, scope.name))
            .or_default()
            .extend(scope.actions);
    }
    merged
        .into_iter()
        .map(|((resource_type, name), actions)| Scope {
            resource_type,
            name,
            actions,
        })
        .collect()
}

/// One parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: `bearer` or `basic`.
    pub scheme: String,
    pub parameters: HashMap<String, String>,
}

impl Challenge {
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }
}

/// Parses a `WWW-Authenticate` value; it may hold several challenges
/// (`Bearer realm="a",service="b", Basic realm="c"`).
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut challenges = Vec::new();
    let bytes = header.as_bytes();
    let mut position = 0;
    let skip_spaces = |position: &mut usize| {
        while *position < bytes.len() && (bytes[*position] == b' ' || bytes[*position] == b'\t') {
            *position += 1;
        }
    };
    let read_token = |position: &mut usize| -> String {
        let start = *position;
        while *position < bytes.len()
            && !matches!(bytes[*position], b' ' | b'\t' | b'=' | b',' | b'"')
        {
            *position += 1;
        }
        header[start..*position].to_string()
    };
    while position < bytes.len() {
        skip_spaces(&mut position);
        while position < bytes.len() && bytes[position] == b',' {
            position += 1;
            skip_spaces(&mut position);
        }
        let scheme = read_token(&mut position);
        if scheme.is_empty() {
            break;
        }
        let mut challenge = Challenge {
            scheme: scheme.to_ascii_lowercase(),
            parameters: HashMap::new(),
        };
        loop {
            skip_spaces(&mut position);
            let save = position;
            let name = read_token(&mut position);
            skip_spaces(&mut position);
            if name.is_empty() || position >= bytes.len() || bytes[position] != b'=' {
                // Not a parameter: the start of the next challenge.
                position = save;
                break;
            }
            position += 1;
            skip_spaces(&mut position);
            let value = if position < bytes.len() && bytes[position] == b'"' {
                position += 1;
                let mut value = String::new();
                while position < bytes.len() && bytes[position] != b'"' {
                    if bytes[position] == b'\\' && position + 1 < bytes.len() {
                        position += 1;
                    }
                    // Step by whole characters so multi-byte text stays intact.
                    let character = header[position..].chars().next().unwrap_or('\u{fffd}');
                    value.push(character);
                    position += character.len_utf8();
                }
                position += 1;
                value
            } else {
                read_token(&mut position)
            };
            challenge
                .parameters
                .insert(name.to_ascii_lowercase(), value);
            skip_spaces(&mut position);
            if position < bytes.len() && bytes[position] == b',' {
                position += 1;
                continue;
            }
            break;
        }
        challenges.push(challenge);
    }
    challenges
}

/// A bearer token and when it stops being usable.
#[derive(Debug, Clone)]
pub(crate) struct CachedToken {
    pub token: String,
    pub expires_at: Instant,
}

/// What the client has learnt about how a host wants to be spoken to.
#[derive(Debug, Clone)]
pub(crate) enum HostAuth {
    Bearer {
        realm: String,
        service: Option<String>,
    },
    Basic,
}

/// Tokens per (host, scope set), and each host's auth scheme. Held in a std mutex that is
/// never held across an `.await`.
#[derive(Debug, Default)]
pub(crate) struct AuthCache {
    pub hosts: HashMap<String, HostAuth>,
    pub tokens: HashMap<(String, String), CachedToken>,
}

impl AuthCache {
    pub fn token(&self, host: &str, scope_key: &str) -> Option<String> {
        let cached = self
            .tokens
            .get(&(host.to_string(), scope_key.to_string()))?;
        // Leave a margin so a token does not expire in flight.
        (cached.expires_at > Instant::now() + Duration::from_secs(5)).then(|| cached.token.clone())
    }
}

/// The cache key of a scope set.
pub(crate) fn scope_key(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::to_parameter)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenge() {
        let challenges = parse_challenges(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope""#,
        );
        assert_eq!(challenges.len(), 1);
        assert_eq!(challenges[0].scheme, "bearer");
        assert_eq!(
            challenges[0].parameter("realm"),
            Some("https://auth.example/token")
        );
        assert_eq!(
            challenges[0].parameter("scope"),
            Some("repository:a/b:pull,push")
        );
    }

    #[test]
    fn parses_several_challenges_and_escapes() {
        let challenges =
            parse_challenges(r#"Basic realm="say \"hi\"", Bearer realm=https://x/t , service=s"#);
        assert_eq!(challenges.len(), 2);
        assert_eq!(challenges[0].scheme, "basic");
        assert_eq!(challenges[0].parameter("realm"), Some("say \"hi\""));
        assert_eq!(challenges[1].parameter("realm"), Some("https://x/t"));
        assert_eq!(challenges[1].parameter("service"), Some("s"));
    }

    #[test]
    fn hostile_challenges_do_not_panic() {
        for text in [
            "",
            "=",
            "\"",
            "Bearer realm=\"",
            "Bearer ,,,",
            "é=é",
            "Bearer a=\"é\\",
        ] {
            let _ = parse_challenges(text);
        }
    }

    #[test]
    fn merges_scopes_per_repository() {
        let merged = merge_scopes([
            Scope::pull("a"),
            Scope::repository("a", &["push"]),
            Scope::pull("b"),
        ]);
        assert_eq!(
            scope_key(&merged),
            "repository:a:pull,push repository:b:pull"
        );
    }
}
