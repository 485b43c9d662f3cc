//! A real registry for tests: Debian's `docker-registry` (distribution 2.8) on a free
//! loopback port, with its own config and temp storage, killed by pid on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_registry::{ClientOptions, Credential, CredentialStore, Reference, RegistryClient};

use crate::token_server::{SigningMaterial, TokenPolicy, TokenServer, TOKEN_ISSUER, TOKEN_SERVICE};

/// The registry binary (Debian package `docker-registry`).
pub const REGISTRY_BINARY: &str = "docker-registry";

/// The user the harness creates on auth-enabled registries, to seed images.
pub const ADMIN_USER: &str = "kiln-admin";

/// How the test registry authenticates.
#[derive(Debug, Clone, Default)]
pub enum TestAuth {
    /// Anyone may pull and push.
    #[default]
    None,
    /// `auth: token` with a harness-run token issuer.
    Token(TokenPolicy),
    /// `auth: htpasswd` (bcrypt) with these users and passwords.
    Htpasswd(Vec<(String, String)>),
}

/// Options for [`TestRegistry::start_with`].
#[derive(Debug, Clone, Default)]
pub struct TestRegistryOptions {
    pub auth: TestAuth,
    /// Serve HTTPS with a harness-made self-signed certificate.
    pub tls: bool,
}

/// A running registry. Dropping it kills the process and removes its storage.
pub struct TestRegistry {
    child: Child,
    address: String,
    directory: tempfile::TempDir,
    token_server: Option<TokenServer>,
    admin_password: String,
    tls_certificate_pem: Option<String>,
}

/// Why the registry did not come up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error("{REGISTRY_BINARY} not found: install the docker-registry package (scripts/install-deps.sh)")]
    MissingBinary,
    #[error("registry did not answer /v2/ within {seconds}s; its log:\n{log}")]
    NotReady { seconds: u64, log: String },
    #[error("harness I/O")]
    Io(#[from] std::io::Error),
    #[error("making certificates: {0}")]
    Certificate(String),
}

impl TestRegistry {
    /// An anonymous registry over plain HTTP. Panics if it cannot start (this is a test
    /// harness: a missing registry is a broken test environment).
    pub fn start() -> Self {
        Self::start_with(TestRegistryOptions::default())
    }

    /// A registry with `auth: token` and a token issuer granting `policy`; the harness's
    /// admin user is added to the policy.
    pub fn start_with_token_auth(policy: TokenPolicy) -> Self {
        Self::start_with(TestRegistryOptions {
            auth: TestAuth::Token(policy),
            tls: false,
        })
    }

    /// A registry with `auth: htpasswd` for these users (plus the admin user).
    pub fn start_with_htpasswd(users: &[(&str, &str)]) -> Self {
        Self::start_with(TestRegistryOptions {
            auth: TestAuth::Htpasswd(
                users
                    .iter()
                    .map(|(user, password)| (user.to_string(), password.to_string()))
                    .collect(),
            ),
            tls: false,
        })
    }

    pub fn start_with(options: TestRegistryOptions) -> Self {
        match Self::try_start(options) {
            Ok(registry) => registry,
            Err(error) => panic!("starting the test registry: {error}"),
        }
    }

    pub fn try_start(options: TestRegistryOptions) -> Result<Self, HarnessError> {
        let mut last_error = None;
        // A free port can be taken between our probe and the registry's bind; try again.
        for _ in 0..3 {
            match Self::start_once(&options) {
                Ok(registry) => return Ok(registry),
                Err(error @ HarnessError::NotReady { .. }) => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or(HarnessError::NotReady {
            seconds: 0,
            log: String::new(),
        }))
    }

    fn start_once(options: &TestRegistryOptions) -> Result<Self, HarnessError> {
        let directory = tempfile::Builder::new()
            .prefix("kiln-test-registry-")
            .tempdir()?;
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let admin_password = format!("admin-{}-{port}", std::process::id());
        let storage = directory.path().join("storage");
        std::fs::create_dir_all(&storage)?;

        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\nhttp:\n  addr: {address}\n  secret: kiln-test-secret\n",
            storage.display()
        );
        let mut tls_certificate_pem = None;
        if options.tls {
            let (certificate_pem, key_pem) = tls_certificate()?;
            let certificate_path = directory.path().join("tls.crt");
            let key_path = directory.path().join("tls.key");
            std::fs::write(&certificate_path, &certificate_pem)?;
            std::fs::write(&key_path, key_pem)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certificate_path.display(),
                key_path.display()
            ));
            tls_certificate_pem = Some(certificate_pem);
        }
        let mut token_server = None;
        match &options.auth {
            TestAuth::None => {}
            TestAuth::Token(policy) => {
                let material = SigningMaterial::generate()
                    .map_err(|error| HarnessError::Certificate(error.to_string()))?;
                let bundle = directory.path().join("token-root.pem");
                std::fs::write(&bundle, &material.certificate_pem)?;
                let policy = policy.clone().with_user(ADMIN_USER, &admin_password);
                let server = TokenServer::start(policy, &material)?;
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    bundle.display()
                ));
                token_server = Some(server);
            }
            TestAuth::Htpasswd(users) => {
                let path = directory.path().join("htpasswd");
                let mut text = String::new();
                let all = users
                    .iter()
                    .map(|(user, password)| (user.as_str(), password.as_str()))
                    .chain(std::iter::once((ADMIN_USER, admin_password.as_str())));
                for (user, password) in all {
                    // The lowest cost bcrypt allows: tests verify many requests.
                    let hash = bcrypt::hash(password, 4)
                        .map_err(|error| HarnessError::Certificate(error.to_string()))?;
                    text.push_str(&format!("{user}:{hash}\n"));
                }
                std::fs::write(&path, text)?;
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    path.display()
                ));
            }
        }
        let config_path = directory.path().join("config.yml");
        std::fs::write(&config_path, &config)?;
        let log_path = directory.path().join("registry.log");
        let log = std::fs::File::create(&log_path)?;
        let child = match Command::new(REGISTRY_BINARY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(HarnessError::MissingBinary)
            }
            Err(error) => return Err(error.into()),
        };
        let mut registry = TestRegistry {
            child,
            address,
            directory,
            token_server,
            admin_password,
            tls_certificate_pem,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if registry.answers_v2() {
                return Ok(registry);
            }
            let exited = matches!(registry.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(HarnessError::NotReady { seconds: 20, log });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `/v2/` answers (200 or 401) over a raw connection.
    fn answers_v2(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.address) else {
            return false;
        };
        if self.tls_certificate_pem.is_some() {
            // A TLS listener accepting connections is ready enough.
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        );
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        if reader.read_line(&mut line).is_err() {
            return false;
        }
        let mut rest = Vec::new();
        let _ = reader.read_to_end(&mut rest);
        line.contains(" 200 ") || line.contains(" 401 ")
    }

    /// `127.0.0.1:port`: the registry name to use in references.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A reference on this registry: `reference("busybox:latest")`.
    pub fn reference(&self, name: &str) -> Reference {
        match Reference::parse(&format!("{}/{name}", self.address)) {
            Ok(reference) => reference,
            Err(error) => panic!("bad test reference {name:?}: {error}"),
        }
    }

    /// The registry's storage directory (to inspect or tamper with blobs).
    pub fn storage_dir(&self) -> PathBuf {
        self.directory.path().join("storage")
    }

    /// The harness's temp directory (config, logs).
    pub fn directory(&self) -> &Path {
        self.directory.path()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.directory.path().join("registry.log")).unwrap_or_default()
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token_server.as_ref()
    }

    /// The PEM certificate of a TLS registry (trust it with
    /// `ClientOptions::extra_root_certificates_pem`).
    pub fn tls_certificate_pem(&self) -> Option<&str> {
        self.tls_certificate_pem.as_deref()
    }

    /// The admin credential on an auth-enabled registry.
    pub fn admin_credential(&self) -> Credential {
        Credential::Basic {
            username: ADMIN_USER.to_string(),
            password: self.admin_password.clone(),
        }
    }

    /// Client options suited to this registry: no credential files, quick retries, the TLS
    /// certificate trusted if there is one. No credentials.
    pub fn client_options(&self) -> ClientOptions {
        let mut options = ClientOptions {
            credentials: CredentialStore::empty(),
            retry_base_delay: Duration::from_millis(20),
            retry_max_delay: Duration::from_millis(200),
            ..ClientOptions::default()
        };
        if let Some(pem) = &self.tls_certificate_pem {
            options.https_registries.push(self.address.clone());
            options
                .extra_root_certificates_pem
                .push(pem.as_bytes().to_vec());
        }
        options
    }

    /// A client without credentials.
    pub fn client(&self) -> RegistryClient {
        self.client_with(self.client_options())
    }

    /// A client holding the admin credential (for seeding images on auth registries).
    pub fn admin_client(&self) -> RegistryClient {
        let mut options = self.client_options();
        options
            .credentials
            .fixed
            .insert(self.address.clone(), self.admin_credential());
        self.client_with(options)
    }

    /// A client with the given options.
    pub fn client_with(&self, options: ClientOptions) -> RegistryClient {
        match RegistryClient::with_options(options) {
            Ok(client) => client,
            Err(error) => panic!("building a registry client: {error}"),
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        // Child::kill signals exactly this pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM.
fn tls_certificate() -> Result<(String, String), HarnessError> {
    let certify = || -> Result<(String, String), rcgen::Error> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln test registry");
        let certificate = params.self_signed(&key_pair)?;
        Ok((certificate.pem(), key_pair.serialize_pem()))
    };
    certify().map_err(|error| HarnessError::Certificate(error.to_string()))
}
