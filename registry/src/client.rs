//! The client and its transport: scheme choice, retries with backoff, redirects followed by
//! hand (no `Authorization` to another host), and the 401 -> token -> retry dance.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt as _;
use reqwest::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::auth::{
    merge_scopes, parse_challenges, scope_key, AuthCache, CachedToken, HostAuth, Scope,
};
use crate::credentials::{Credential, CredentialStore};
use crate::error::RegistryError;
use crate::reference::{api_host, is_loopback_registry};

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 10;
/// Largest manifest accepted (the OCI distribution spec's recommended limit).
pub const MANIFEST_SIZE_LIMIT: u64 = 4 * 1024 * 1024;
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// How a [`RegistryClient`] behaves. `Default` is what `kiln` uses out of the box.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries (`host[:port]`) reached over plain HTTP. Loopback registries always are,
    /// unless listed in `https_registries`.
    pub insecure_registries: Vec<String>,
    /// Loopback registries to reach over HTTPS anyway (a test registry with a TLS cert).
    pub https_registries: Vec<String>,
    /// Extra PEM root certificates trusted besides the system's.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
    /// Where credentials come from.
    pub credentials: CredentialStore,
    /// Attempts per request (first try included) on 408/429/5xx and connection faults; also
    /// the number of resumes of one blob download.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles each time up to `retry_max_delay`.
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// The longest `Retry-After` honoured; longer answers are cut to this.
    pub max_retry_after: Duration,
    pub connect_timeout: Duration,
    /// A connection idle for this long while reading is dropped (and the request retried).
    pub read_timeout: Duration,
    pub user_agent: String,
    /// Blobs up to this size are uploaded with one PUT; larger ones in PATCH chunks.
    pub monolithic_upload_limit: u64,
    /// Size of one PATCH chunk when uploading a large blob.
    pub upload_chunk_size: usize,
    /// Largest manifest accepted.
    pub manifest_size_limit: u64,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            https_registries: Vec::new(),
            extra_root_certificates_pem: Vec::new(),
            credentials: CredentialStore::from_environment(),
            max_attempts: 5,
            retry_base_delay: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            user_agent: concat!("kiln/", env!("CARGO_PKG_VERSION")).to_string(),
            monolithic_upload_limit: 32 * 1024 * 1024,
            upload_chunk_size: 16 * 1024 * 1024,
            manifest_size_limit: MANIFEST_SIZE_LIMIT,
        }
    }
}

/// A registry client. Cloning is cheap (an `Arc`): clones share the connection pool, the
/// token cache and the credentials, so parallel downloads should use clones of one client.
#[derive(Clone)]
pub struct RegistryClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The client for `https://` URLs (system roots plus the extra ones), built on first use.
    https: OnceLock<reqwest::Client>,
    /// The client for plain `http://` URLs, without any root certificates, built on first use.
    plain: OnceLock<reqwest::Client>,
    /// `options.extra_root_certificates_pem`, parsed (checked when the client is made).
    extra_roots: Vec<reqwest::Certificate>,
    pub options: ClientOptions,
    auth: Mutex<AuthCache>,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
}

/// Who may be sent an `Authorization` header, and which one.
pub(crate) enum AuthMode<'a> {
    /// Registry auth for `registry`: tokens for `scopes`, or Basic, learnt from challenges.
    Registry {
        registry: &'a str,
        scopes: Vec<Scope>,
    },
    /// A fixed header sent to one origin only (token requests, login checks).
    Fixed {
        origin: url::Origin,
        value: HeaderValue,
    },
    None,
}

/// One request as the transport sends it (the body is `Bytes` so a retry can resend it).
pub(crate) struct Request<'a> {
    pub method: Method,
    pub url: Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub auth: AuthMode<'a>,
}

impl<'a> Request<'a> {
    pub fn new(method: Method, url: Url, auth: AuthMode<'a>) -> Self {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            auth,
        }
    }
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryClient").finish_non_exhaustive()
    }
}

impl RegistryClient {
    /// A client with default options (credentials from the environment).
    pub fn new() -> Result<Self, RegistryError> {
        Self::with_options(ClientOptions::default())
    }

    pub fn with_options(options: ClientOptions) -> Result<Self, RegistryError> {
        // reqwest is built without a default crypto provider; ring is ours. Another part of
        // the process may have installed one already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // The PEM bundles are checked now; the HTTP clients are built on first use (loading
        // the system's root certificates takes ~15 ms, which a build that never talks to a
        // registry, or talks only plain HTTP to a loopback one, should not pay).
        let mut extra_roots = Vec::new();
        for pem in &options.extra_root_certificates_pem {
            extra_roots.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(|error| {
                RegistryError::InvalidOption {
                    message: format!("extra root certificate: {error}"),
                }
            })?);
        }
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                https: OnceLock::new(),
                plain: OnceLock::new(),
                extra_roots,
                options,
                auth: Mutex::new(AuthCache::default()),
                credentials: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The HTTP client for TLS (`tls`) or plain-HTTP URLs, built on first use.
    fn http_client(&self, tls: bool) -> Result<&reqwest::Client, RegistryError> {
        let cell = if tls {
            &self.inner.https
        } else {
            &self.inner.plain
        };
        if let Some(client) = cell.get() {
            return Ok(client);
        }
        let options = &self.inner.options;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout)
            .read_timeout(options.read_timeout);
        if tls {
            for certificate in &self.inner.extra_roots {
                builder = builder.add_root_certificate(certificate.clone());
            }
        } else {
            builder = builder.tls_certs_only(std::iter::empty());
        }
        let client = builder
            .build()
            .map_err(|error| RegistryError::InvalidOption {
                message: format!("building the HTTP client: {error}"),
            })?;
        // a racing thread may have built one first: either is fine
        Ok(cell.get_or_init(|| client))
    }

    /// Whether a registry is spoken to over plain HTTP.
    pub fn uses_plain_http(&self, registry: &str) -> bool {
        let options = &self.inner.options;
        let listed = |list: &[String]| list.iter().any(|entry| entry == registry);
        if listed(&options.https_registries) {
            return false;
        }
        listed(&options.insecure_registries) || is_loopback_registry(registry)
    }

    /// `scheme://api-host/` of a registry.
    pub fn base_url(&self, registry: &str) -> Result<Url, RegistryError> {
        let scheme = if self.uses_plain_http(registry) {
            "http"
        } else {
            "https"
        };
        let text = format!("{scheme}://{}/", api_host(registry));
        Url::parse(&text).map_err(|error| RegistryError::InvalidOption {
            message: format!("registry {registry:?} does not make a URL: {error}"),
        })
    }

    pub(crate) fn api_url(&self, registry: &str, path: &str) -> Result<Url, RegistryError> {
        let base = self.base_url(registry)?;
        base.join(path)
            .map_err(|error| RegistryError::InvalidOption {
                message: format!("bad API path {path:?}: {error}"),
            })
    }

    fn auth_cache(&self) -> MutexGuard<'_, AuthCache> {
        // A panic elsewhere while holding the lock leaves plain data; keep going.
        self.inner
            .auth
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The credential for a registry, read once from the store and then remembered.
    pub(crate) fn credential_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credential>, RegistryError> {
        if let Some(found) = self
            .inner
            .credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(registry)
        {
            return Ok(found.clone());
        }
        let found = self.inner.options.credentials.lookup(registry)?;
        self.inner
            .credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(registry.to_string(), found.clone());
        Ok(found)
    }

    pub(crate) fn remember_credential(&self, registry: &str, credential: Option<Credential>) {
        self.inner
            .credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(registry.to_string(), credential);
        let mut cache = self.auth_cache();
        cache.tokens.retain(|(host, _), _| host != registry);
    }

    /// Sends a request: retries transient faults, follows redirects, answers auth challenges.
    /// Returns the final response whatever its status (other than a second 401, which is an
    /// error); the caller judges the status.
    pub(crate) async fn send(
        &self,
        request: Request<'_>,
    ) -> Result<reqwest::Response, RegistryError> {
        let options = &self.inner.options;
        let (registry_origin, scopes) = match &request.auth {
            AuthMode::Registry { registry, scopes } => (
                Some(self.base_url(registry)?.origin()),
                merge_scopes(scopes.iter().cloned()),
            ),
            _ => (None, Vec::new()),
        };
        let mut url = request.url.clone();
        let mut method = request.method.clone();
        let mut body = request.body.clone();
        let mut attempt: u32 = 1;
        let mut redirects = 0;
        let mut answered_challenge = false;
        loop {
            let mut builder = self
                .http_client(url.scheme() == "https")?
                .request(method.clone(), url.clone())
                .headers(request.headers.clone());
            match &request.auth {
                AuthMode::Registry { registry, .. } if Some(url.origin()) == registry_origin => {
                    if let Some(value) = self.authorization(registry, &scopes).await? {
                        builder = builder.header(AUTHORIZATION, value);
                    }
                }
                AuthMode::Fixed { origin, value } if url.origin() == *origin => {
                    builder = builder.header(AUTHORIZATION, value.clone());
                }
                _ => {}
            }
            if let Some(body) = &body {
                builder = builder.body(body.clone());
            }
            let response = match builder.send().await {
                Ok(response) => response,
                Err(source) => {
                    let error = RegistryError::Transport {
                        url: url.to_string(),
                        source,
                    };
                    if error.is_transient() && attempt < options.max_attempts {
                        tokio::time::sleep(self.backoff(attempt)).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(error);
                }
            };
            let status = response.status();

            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                let Some(location) = response.headers().get(LOCATION) else {
                    return Ok(response);
                };
                let location = location
                    .to_str()
                    .map_err(|_| RegistryError::InvalidResponse {
                        url: url.to_string(),
                        message: "redirect Location is not text".into(),
                    })?;
                let target =
                    url.join(location)
                        .map_err(|error| RegistryError::InvalidResponse {
                            url: url.to_string(),
                            message: format!("bad redirect Location {location:?}: {error}"),
                        })?;
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(RegistryError::TooManyRedirects {
                        url: request.url.to_string(),
                        limit: MAX_REDIRECTS,
                    });
                }
                if !matches!(target.scheme(), "http" | "https") {
                    return Err(RegistryError::InvalidResponse {
                        url: url.to_string(),
                        message: format!("redirect to unsupported scheme {}", target.scheme()),
                    });
                }
                // A downgrade is allowed only to a host the user named as insecure; loopback
                // does not count here (a redirect is the server's choice, not the user's).
                if url.scheme() == "https" && target.scheme() == "http" {
                    let target_host = host_and_port(&target);
                    if !options.insecure_registries.contains(&target_host) {
                        return Err(RegistryError::InsecureRedirect {
                            from: url.to_string(),
                            to: target.to_string(),
                        });
                    }
                }
                if status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST)
                {
                    method = Method::GET;
                    body = None;
                }
                url = target;
                continue;
            }

            if status == StatusCode::UNAUTHORIZED {
                if let AuthMode::Registry { registry, .. } = &request.auth {
                    if Some(url.origin()) == registry_origin {
                        let challenges: Vec<String> = response
                            .headers()
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|value| value.to_str().ok().map(str::to_string))
                            .collect();
                        if answered_challenge {
                            return Err(RegistryError::Unauthorized {
                                registry: registry.to_string(),
                                message: error_message(response).await,
                            });
                        }
                        answered_challenge = true;
                        if self
                            .answer_challenge(registry, &challenges, &scopes)
                            .await?
                        {
                            continue;
                        }
                        return Err(RegistryError::Unauthorized {
                            registry: registry.to_string(),
                            message: error_message(response).await,
                        });
                    }
                }
                return Ok(response);
            }

            let transient = matches!(status.as_u16(), 408 | 429) || status.is_server_error();
            if transient && attempt < options.max_attempts {
                let delay = retry_after(response.headers())
                    .map(|delay| delay.min(options.max_retry_after))
                    .unwrap_or_else(|| self.backoff(attempt));
                drop(response);
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            return Ok(response);
        }
    }

    /// The delay before retry number `attempt` (1-based): exponential with jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let options = &self.inner.options;
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let delay = options
            .retry_base_delay
            .saturating_mul(factor)
            .min(options.retry_max_delay);
        let jitter: f64 = rand::random_range(0.8..1.2);
        delay.mul_f64(jitter)
    }

    /// The `Authorization` value for a request to `registry` needing `scopes`, if the
    /// registry is known to want one.
    async fn authorization(
        &self,
        registry: &str,
        scopes: &[Scope],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let key = scope_key(scopes);
        let host_auth = {
            let cache = self.auth_cache();
            if let Some(token) = cache.token(registry, &key) {
                return Ok(Some(bearer_value(&token)?));
            }
            cache.hosts.get(registry).cloned()
        };
        match host_auth {
            None => Ok(None),
            Some(HostAuth::Basic) => match self.credential_for(registry)? {
                Some(Credential::Basic { username, password }) => {
                    Ok(Some(basic_value(&username, &password)?))
                }
                _ => Ok(None),
            },
            Some(HostAuth::Bearer { realm, service }) => {
                let token = self
                    .fetch_token(registry, &realm, service.as_deref(), scopes)
                    .await?;
                let value = bearer_value(&token.token)?;
                self.auth_cache()
                    .tokens
                    .insert((registry.to_string(), key), token);
                Ok(Some(value))
            }
        }
    }

    /// Learns the host's scheme from a 401's challenges; returns whether a retry can carry
    /// credentials.
    async fn answer_challenge(
        &self,
        registry: &str,
        challenges: &[String],
        scopes: &[Scope],
    ) -> Result<bool, RegistryError> {
        let parsed: Vec<_> = challenges
            .iter()
            .flat_map(|text| parse_challenges(text))
            .collect();
        if let Some(bearer) = parsed.iter().find(|challenge| challenge.scheme == "bearer") {
            let Some(realm) = bearer.parameter("realm") else {
                return Err(RegistryError::InvalidResponse {
                    url: self.base_url(registry)?.to_string(),
                    message: "Bearer challenge without a realm".into(),
                });
            };
            let service = bearer.parameter("service").map(str::to_string);
            // The registry may ask for more than we planned (it knows best); ask for both.
            let mut wanted: Vec<Scope> = scopes.to_vec();
            if let Some(asked) = bearer.parameter("scope") {
                wanted.extend(asked.split(' ').filter_map(Scope::parse));
            }
            let wanted = merge_scopes(wanted);
            self.auth_cache().hosts.insert(
                registry.to_string(),
                HostAuth::Bearer {
                    realm: realm.to_string(),
                    service: service.clone(),
                },
            );
            let token = self
                .fetch_token(registry, realm, service.as_deref(), &wanted)
                .await?;
            self.auth_cache()
                .tokens
                .insert((registry.to_string(), scope_key(scopes)), token);
            return Ok(true);
        }
        if parsed.iter().any(|challenge| challenge.scheme == "basic") {
            self.auth_cache()
                .hosts
                .insert(registry.to_string(), HostAuth::Basic);
            return Ok(matches!(
                self.credential_for(registry)?,
                Some(Credential::Basic { .. })
            ));
        }
        Ok(false)
    }

    /// Asks a token service for a token covering `scopes` (several at once is fine).
    pub(crate) async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[Scope],
    ) -> Result<CachedToken, RegistryError> {
        let credential = self.credential_for(registry)?;
        self.fetch_token_with(registry, realm, service, scopes, credential.as_ref())
            .await
    }

    pub(crate) async fn fetch_token_with(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[Scope],
        credential: Option<&Credential>,
    ) -> Result<CachedToken, RegistryError> {
        let token_error = |message: String| RegistryError::Token {
            registry: registry.to_string(),
            realm: realm.to_string(),
            message,
        };
        let mut url =
            Url::parse(realm).map_err(|error| token_error(format!("bad realm: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(token_error("realm must be an http or https URL".into()));
        }
        if url.scheme() == "http"
            && credential.is_some()
            && !self.uses_plain_http(&host_and_port(&url))
        {
            return Err(token_error(
                "refusing to send credentials to a plain HTTP token service".into(),
            ));
        }
        let scope_text: Vec<String> = scopes.iter().map(Scope::to_parameter).collect();
        let request = match credential {
            Some(Credential::IdentityToken(refresh_token)) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh_token)
                    .append_pair("client_id", "kiln");
                if let Some(service) = service {
                    form.append_pair("service", service);
                }
                if !scope_text.is_empty() {
                    form.append_pair("scope", &scope_text.join(" "));
                }
                let mut request = Request::new(Method::POST, url, AuthMode::None);
                request.headers.insert(
                    reqwest::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                );
                request.body = Some(Bytes::from(form.finish()));
                request
            }
            other => {
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = service {
                        query.append_pair("service", service);
                    }
                    for scope in &scope_text {
                        query.append_pair("scope", scope);
                    }
                    if let Some(Credential::Basic { username, .. }) = other {
                        query.append_pair("account", username);
                    }
                }
                let auth = match other {
                    Some(Credential::Basic { username, password }) => AuthMode::Fixed {
                        origin: url.origin(),
                        value: basic_value(username, password)?,
                    },
                    _ => AuthMode::None,
                };
                Request::new(Method::GET, url, auth)
            }
        };
        let started = Instant::now();
        // Boxed: `send` may call back into here, and async recursion needs an indirection.
        let response = Box::pin(self.send(request)).await?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                message: error_message(response).await,
            });
        }
        if !status.is_success() {
            let message = error_message(response).await;
            return Err(token_error(format!("{status}: {message}")));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
        }
        let bytes = read_limited(response, 1024 * 1024)
            .await
            .map_err(|error| token_error(format!("reading the answer: {error}")))?;
        let answer: TokenAnswer = serde_json::from_slice(&bytes)
            .map_err(|error| token_error(format!("invalid answer: {error}")))?;
        let token = answer
            .token
            .filter(|token| !token.is_empty())
            .or(answer.access_token.filter(|token| !token.is_empty()))
            .ok_or_else(|| token_error("answer holds no token".into()))?;
        // The spec's minimum lifetime is 60 seconds.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(60));
        Ok(CachedToken {
            token,
            expires_at: started + lifetime,
        })
    }

    /// Checks credentials against a registry, then stores them in kiln's credentials file
    /// (what `kiln login` does).
    pub async fn login(
        &self,
        registry: &str,
        username: &str,
        password: &str,
    ) -> Result<(), RegistryError> {
        let credential = Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        };
        self.verify_credential(registry, &credential).await?;
        self.inner
            .options
            .credentials
            .store(registry, username, password)?;
        self.remember_credential(registry, Some(credential));
        Ok(())
    }

    /// Removes a registry's credentials from kiln's file; returns whether there were any.
    pub fn logout(&self, registry: &str) -> Result<bool, RegistryError> {
        let removed = self.inner.options.credentials.remove(registry)?;
        self.inner
            .credentials
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(registry);
        let mut cache = self.auth_cache();
        cache.tokens.retain(|(host, _), _| host != registry);
        Ok(removed)
    }

    /// Whether `credential` is accepted by `registry` (GET /v2/, then the token service or
    /// Basic auth as the challenge says).
    pub async fn verify_credential(
        &self,
        registry: &str,
        credential: &Credential,
    ) -> Result<(), RegistryError> {
        let url = self.api_url(registry, "v2/")?;
        let response = self
            .send(Request::new(Method::GET, url.clone(), AuthMode::None))
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status != StatusCode::UNAUTHORIZED {
            return Err(status_error("GET", &url, response).await);
        }
        let challenges: Vec<_> = response
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(bearer) = challenges
            .iter()
            .find(|challenge| challenge.scheme == "bearer")
        {
            let realm =
                bearer
                    .parameter("realm")
                    .ok_or_else(|| RegistryError::InvalidResponse {
                        url: url.to_string(),
                        message: "Bearer challenge without a realm".into(),
                    })?;
            self.fetch_token_with(
                registry,
                realm,
                bearer.parameter("service"),
                &[],
                Some(credential),
            )
            .await?;
            return Ok(());
        }
        let Credential::Basic { username, password } = credential else {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                message: "the registry wants Basic auth, which needs a user name and password"
                    .into(),
            });
        };
        let request = Request::new(
            Method::GET,
            url.clone(),
            AuthMode::Fixed {
                origin: url.origin(),
                value: basic_value(username, password)?,
            },
        );
        let response = self.send(request).await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(RegistryError::Unauthorized {
            registry: registry.to_string(),
            message: error_message(response).await,
        })
    }
}

fn bearer_value(token: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| RegistryError::InvalidResponse {
        url: String::new(),
        message: "token holds characters not allowed in a header".into(),
    })
}

fn basic_value(username: &str, password: &str) -> Result<HeaderValue, RegistryError> {
    use base64::Engine as _;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
        RegistryError::InvalidOption {
            message: "credentials do not make a header".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// `host[:port]` of a URL, bracketing IPv6 addresses, as registries are named.
pub(crate) fn host_and_port(url: &Url) -> String {
    let host = match url.host() {
        Some(url::Host::Ipv6(address)) => format!("[{address}]"),
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// The `Content-Length` header as sent (reqwest reports 0 for any HEAD answer).
pub(crate) fn header_content_length(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Reads at most `limit` bytes of a body; more is an error.
pub(crate) async fn read_limited(
    response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, ReadLimitedError> {
    if let Some(length) = response.content_length() {
        if length > limit as u64 {
            return Err(ReadLimitedError::TooLarge(length));
        }
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(ReadLimitedError::Transport)?;
        if body.len() + chunk.len() > limit {
            return Err(ReadLimitedError::TooLarge(
                (body.len() + chunk.len()) as u64,
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Debug)]
pub(crate) enum ReadLimitedError {
    TooLarge(u64),
    Transport(reqwest::Error),
}

impl std::fmt::Display for ReadLimitedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadLimitedError::TooLarge(size) => write!(f, "body of {size} bytes is over the limit"),
            ReadLimitedError::Transport(error) => write!(f, "{error}"),
        }
    }
}

/// The message of a registry error body (`{"errors":[{"code":..,"message":..}]}`), else the
/// body's text, else the status line.
pub(crate) async fn error_message(response: reqwest::Response) -> String {
    let status = response.status();
    let Ok(body) = read_limited(response, ERROR_BODY_LIMIT).await else {
        return status.to_string();
    };
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
        #[serde(default)]
        details: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(parsed) = serde_json::from_slice::<ErrorBody>(&body) {
        let messages: Vec<String> = parsed
            .errors
            .iter()
            .map(
                |entry| match (entry.code.is_empty(), entry.message.is_empty()) {
                    (false, false) => format!("{} ({})", entry.message, entry.code),
                    (true, false) => entry.message.clone(),
                    _ => entry.code.clone(),
                },
            )
            .filter(|text| !text.is_empty())
            .collect();
        if !messages.is_empty() {
            return messages.join("; ");
        }
        if let Some(details) = parsed.details.filter(|details| !details.is_empty()) {
            return details;
        }
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        return status.to_string();
    }
    text.chars().take(300).collect()
}

/// A `Status` error carrying the registry's message.
pub(crate) async fn status_error(
    method: &str,
    url: &Url,
    response: reqwest::Response,
) -> RegistryError {
    let status = response.status().as_u16();
    RegistryError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status,
        message: error_message(response).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn loopback_is_plain_http_unless_forced() {
        let mut options = ClientOptions {
            credentials: CredentialStore::empty(),
            ..Default::default()
        };
        options.https_registries.push("localhost:5443".into());
        options.insecure_registries.push("registry.lan:5000".into());
        let client = RegistryClient::with_options(options).unwrap();
        assert!(client.uses_plain_http("127.0.0.1:5000"));
        assert!(client.uses_plain_http("127.1.2.3:5000"));
        assert!(client.uses_plain_http("[::1]:5000"));
        assert!(client.uses_plain_http("localhost"));
        assert!(!client.uses_plain_http("localhost:5443"));
        assert!(client.uses_plain_http("registry.lan:5000"));
        assert!(!client.uses_plain_http("registry.lan"));
        assert!(!client.uses_plain_http("docker.io"));
        assert_eq!(
            client.base_url("docker.io").unwrap().as_str(),
            "https://registry-1.docker.io/"
        );
    }
}
