//! Registry credentials: kiln's own file (written by `kiln login`), Docker's
//! `config.json` (`auths`, `credsStore`, `credHelpers`), and credentials given in code.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token), sent as Basic auth or to the
    /// token service.
    Basic { username: String, password: String },
    /// An OAuth2 refresh token (Docker's `identitytoken`), exchanged at the token service.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => {
                write!(f, "Basic {{ username: {username:?}, password: <hidden> }}")
            }
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<hidden>)"),
        }
    }
}

/// Where credentials are looked up, in order: credentials given in code, kiln's own file,
/// Docker's config.
#[derive(Debug, Clone, Default)]
pub struct CredentialStore {
    /// Given in code (tests, `--username` flags); keyed by registry name.
    pub fixed: HashMap<String, Credential>,
    /// kiln's own credentials file; `None` disables it.
    pub kiln_file: Option<PathBuf>,
    /// The directory holding Docker's `config.json`; `None` disables it.
    pub docker_config_dir: Option<PathBuf>,
}

/// The on-disk format shared by kiln's file and Docker's config (only the fields we use).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    auths: HashMap<String, AuthEntry>,
    #[serde(
        default,
        rename = "credsStore",
        skip_serializing_if = "Option::is_none"
    )]
    credentials_store: Option<String>,
    #[serde(
        default,
        rename = "credHelpers",
        skip_serializing_if = "HashMap::is_empty"
    )]
    credential_helpers: HashMap<String, String>,
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    identitytoken: Option<String>,
}

impl CredentialStore {
    /// The default places: `$KILN_CREDENTIALS_FILE` or `$XDG_CONFIG_HOME/kiln/credentials.json`
    /// (else `~/.config/kiln/credentials.json`), and `$DOCKER_CONFIG` or `~/.docker`.
    pub fn from_environment() -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let kiln_file = match std::env::var_os("KILN_CREDENTIALS_FILE") {
            Some(path) => Some(PathBuf::from(path)),
            None => std::env::var_os("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|home| home.join(".config")))
                .map(|config| config.join("kiln").join("credentials.json")),
        };
        let docker_config_dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(path) => Some(PathBuf::from(path)),
            None => home.map(|home| home.join(".docker")),
        };
        CredentialStore {
            fixed: HashMap::new(),
            kiln_file,
            docker_config_dir,
        }
    }

    /// No files at all: anonymous unless credentials are added to `fixed`.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The credential for a registry (`docker.io`, `localhost:5000`), if any.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credential>, RegistryError> {
        if let Some(credential) = self.fixed.get(registry) {
            return Ok(Some(credential.clone()));
        }
        if let Some(path) = &self.kiln_file {
            if let Some(config) = read_config(path)? {
                if let Some(credential) = find_in_auths(&config, path, registry)? {
                    return Ok(Some(credential));
                }
            }
        }
        if let Some(directory) = &self.docker_config_dir {
            let path = directory.join("config.json");
            if let Some(config) = read_config(&path)? {
                let helper = config
                    .credential_helpers
                    .iter()
                    .find(|(key, _)| normalize_key(key) == registry)
                    .map(|(_, helper)| helper.clone())
                    .or_else(|| config.credentials_store.clone());
                if let Some(helper) = helper.filter(|helper| !helper.is_empty()) {
                    if let Some(credential) = run_credential_helper(&helper, registry)? {
                        return Ok(Some(credential));
                    }
                }
                return find_in_auths(&config, &path, registry);
            }
        }
        Ok(None)
    }

    /// Stores a user name and password for a registry in kiln's file (mode 0600, replaced
    /// atomically).
    pub fn store(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let path = self.kiln_file_path()?;
        let mut config = read_config(path)?.unwrap_or_default();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        config.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: Some(encoded),
                ..Default::default()
            },
        );
        write_config(path, &config)
    }

    /// Removes a registry's entry from kiln's file; returns whether there was one.
    pub fn remove(&self, registry: &str) -> Result<bool, RegistryError> {
        let path = self.kiln_file_path()?;
        let Some(mut config) = read_config(path)? else {
            return Ok(false);
        };
        let keys: Vec<String> = config
            .auths
            .keys()
            .filter(|key| normalize_key(key) == registry)
            .cloned()
            .collect();
        if keys.is_empty() {
            return Ok(false);
        }
        for key in keys {
            config.auths.remove(&key);
        }
        write_config(path, &config)?;
        Ok(true)
    }

    fn kiln_file_path(&self) -> Result<&Path, RegistryError> {
        self.kiln_file
            .as_deref()
            .ok_or_else(|| RegistryError::InvalidOption {
                message: "no kiln credentials file configured (set HOME or KILN_CREDENTIALS_FILE)"
                    .into(),
            })
    }
}

/// Strips a scheme and path from an `auths` key and maps Docker Hub's aliases to `docker.io`.
fn normalize_key(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, RegistryError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(RegistryError::Credentials {
                path: path.display().to_string(),
                message: error.to_string(),
            })
        }
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|error| RegistryError::Credentials {
            path: path.display().to_string(),
            message: format!("invalid JSON: {error}"),
        })
}

fn write_config(path: &Path, config: &ConfigFile) -> Result<(), RegistryError> {
    let fail = |error: std::io::Error| RegistryError::Credentials {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(directory).map_err(fail)?;
    let text = serde_json::to_vec_pretty(config).map_err(|error| RegistryError::Credentials {
        path: path.display().to_string(),
        message: error.to_string(),
    })?;
    let mut temporary = tempfile::Builder::new()
        .prefix(".credentials-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(directory)
        .map_err(fail)?;
    temporary.write_all(&text).map_err(fail)?;
    temporary.as_file().sync_all().map_err(fail)?;
    temporary.persist(path).map_err(|error| fail(error.error))?;
    Ok(())
}

fn find_in_auths(
    config: &ConfigFile,
    path: &Path,
    registry: &str,
) -> Result<Option<Credential>, RegistryError> {
    // An exact key wins over one that only normalizes to the registry.
    let entry = config.auths.get(registry).or_else(|| {
        config
            .auths
            .iter()
            .find(|(key, _)| normalize_key(key) == registry)
            .map(|(_, entry)| entry)
    });
    let Some(entry) = entry else {
        return Ok(None);
    };
    if let Some(token) = entry
        .identitytoken
        .as_ref()
        .filter(|token| !token.is_empty())
    {
        return Ok(Some(Credential::IdentityToken(token.clone())));
    }
    if let Some(auth) = entry.auth.as_ref().filter(|auth| !auth.is_empty()) {
        let invalid = |message: &str| RegistryError::Credentials {
            path: path.display().to_string(),
            message: format!("entry for {registry}: {message}"),
        };
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| invalid("auth is not valid base64"))?;
        let decoded = String::from_utf8(decoded).map_err(|_| invalid("auth is not valid UTF-8"))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| invalid("auth is not user:password"))?;
        return Ok(Some(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(username), Some(password)) if !username.is_empty() => Ok(Some(Credential::Basic {
            username: username.clone(),
            password: password.clone(),
        })),
        _ => Ok(None),
    }
}

/// Runs `docker-credential-<helper> get` with the server name on stdin.
fn run_credential_helper(
    helper: &str,
    registry: &str,
) -> Result<Option<Credential>, RegistryError> {
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let program = format!("docker-credential-{helper}");
    let fail = |message: String| RegistryError::Credentials {
        path: program.clone(),
        message,
    };
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(fail(format!("invalid credential helper name {helper:?}")));
    }
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = match std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return Err(fail(format!("cannot run: {error}"))),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|error| fail(error.to_string()))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| fail(error.to_string()))?;
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stdout);
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!(
            "exited with {}: {}",
            output.status,
            text.trim()
        )));
    }
    let answer: HelperAnswer = serde_json::from_slice(&output.stdout)
        .map_err(|error| fail(format!("invalid answer: {error}")))?;
    if answer.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(answer.secret)));
    }
    Ok(Some(Credential::Basic {
        username: answer.username,
        password: answer.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_docker_hub_keys() {
        assert_eq!(normalize_key("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_key("http://localhost:5000/v2/"), "localhost:5000");
        assert_eq!(normalize_key("Quay.io"), "quay.io");
    }

    #[test]
    fn store_then_lookup_then_remove() {
        let directory = tempfile::tempdir().unwrap();
        let store = CredentialStore {
            kiln_file: Some(directory.path().join("kiln/credentials.json")),
            ..Default::default()
        };
        store.store("localhost:5000", "alice", "pa:ss").unwrap();
        let found = store.lookup("localhost:5000").unwrap();
        assert_eq!(
            found,
            Some(Credential::Basic {
                username: "alice".into(),
                password: "pa:ss".into()
            })
        );
        let mode = std::fs::metadata(directory.path().join("kiln/credentials.json"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert!(store.remove("localhost:5000").unwrap());
        assert_eq!(store.lookup("localhost:5000").unwrap(), None);
        assert!(!store.remove("localhost:5000").unwrap());
    }

    #[test]
    fn bad_auth_entry_is_a_clear_error() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("config.json"),
            r#"{"auths":{"r.example":{"auth":"!!!"}}}"#,
        )
        .unwrap();
        let store = CredentialStore {
            docker_config_dir: Some(directory.path().to_path_buf()),
            ..Default::default()
        };
        let error = store.lookup("r.example").unwrap_err().to_string();
        assert!(error.contains("not valid base64"), "{error}");
    }
}
