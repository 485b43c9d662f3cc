//! A token issuer for the test registry's `auth: token` mode: checks Basic credentials,
//! grants scopes by policy, and signs JWTs the way distribution 2.8 verifies them (ES256,
//! an `x5c` header whose certificate is the registry's `rootcertbundle`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;

use crate::http::{HttpRequest, HttpResponse, HttpServer, Reply};

/// The `iss` of issued tokens (the registry config's `issuer`).
pub const TOKEN_ISSUER: &str = "kiln-test-issuer";
/// The `aud` / `service` (the registry config's `service`).
pub const TOKEN_SERVICE: &str = "kiln-test-registry";

/// One user of the token service.
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub password: String,
    /// Repositories this user may touch; `None` means all.
    pub repositories: Option<Vec<String>>,
}

/// Who gets what.
#[derive(Debug, Clone, Default)]
pub struct TokenPolicy {
    pub users: HashMap<String, TokenUser>,
    /// Whether a request without credentials gets `pull` rights.
    pub anonymous_pull: bool,
}

impl TokenPolicy {
    pub fn with_user(mut self, name: &str, password: &str) -> Self {
        self.users.insert(
            name.to_string(),
            TokenUser {
                password: password.to_string(),
                repositories: None,
            },
        );
        self
    }

    /// A user limited to some repositories.
    pub fn with_limited_user(mut self, name: &str, password: &str, repositories: &[&str]) -> Self {
        self.users.insert(
            name.to_string(),
            TokenUser {
                password: password.to_string(),
                repositories: Some(repositories.iter().map(|name| name.to_string()).collect()),
            },
        );
        self
    }
}

/// A token request as the issuer saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The Basic user, if any.
    pub user: Option<String>,
    pub service: Option<String>,
    /// The `scope` parameters, in order.
    pub scopes: Vec<String>,
    /// Whether credentials were accepted (or absent).
    pub granted: bool,
}

/// The running issuer.
pub struct TokenServer {
    server: HttpServer,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

/// The key and certificate tokens are signed with.
pub(crate) struct SigningMaterial {
    pub key_pem: String,
    pub certificate_pem: String,
    pub certificate_der_base64: String,
}

impl SigningMaterial {
    pub fn generate() -> Result<Self, rcgen::Error> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec!["kiln-test-token-issuer".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln test token issuer");
        let certificate = params.self_signed(&key_pair)?;
        Ok(SigningMaterial {
            key_pem: key_pair.serialize_pem(),
            certificate_pem: certificate.pem(),
            certificate_der_base64: base64::engine::general_purpose::STANDARD
                .encode(certificate.der().as_ref()),
        })
    }
}

impl TokenServer {
    pub(crate) fn start(policy: TokenPolicy, material: &SigningMaterial) -> std::io::Result<Self> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let key = jsonwebtoken::EncodingKey::from_ec_pem(material.key_pem.as_bytes())
            .map_err(|error| std::io::Error::other(format!("token key: {error}")))?;
        let chain = vec![material.certificate_der_base64.clone()];
        let handler_log = log.clone();
        let server = HttpServer::start("127.0.0.1", move |request| {
            handle(request, &policy, &key, &chain, &handler_log)
        })?;
        Ok(TokenServer { server, log })
    }

    /// The realm URL to put in the registry config.
    pub fn realm(&self) -> String {
        format!("{}/token", self.server.url())
    }

    /// Every token request so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }
}

#[derive(serde::Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    exp: u64,
    nbf: u64,
    iat: u64,
    jti: String,
    access: Vec<Access>,
}

#[derive(serde::Serialize)]
struct Access {
    #[serde(rename = "type")]
    resource_type: String,
    name: String,
    actions: Vec<String>,
}

fn handle(
    request: &HttpRequest,
    policy: &TokenPolicy,
    key: &jsonwebtoken::EncodingKey,
    chain: &[String],
    log: &Mutex<Vec<TokenRequest>>,
) -> Reply {
    if request.path() != "/token" {
        return HttpResponse::new(404).into();
    }
    let query = request.query();
    let service = query
        .iter()
        .find(|(key, _)| key == "service")
        .map(|(_, value)| value.clone());
    let scopes: Vec<String> = query
        .iter()
        .filter(|(key, _)| key == "scope")
        .flat_map(|(_, value)| value.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|scope| !scope.is_empty())
        .collect();
    let basic = request
        .header("authorization")
        .and_then(|value| value.strip_prefix("Basic "))
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
        })
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(user, password)| (user.to_string(), password.to_string()))
        });
    let user = match &basic {
        Some((name, password)) => match policy.users.get(name) {
            Some(user) if user.password == *password => Some((name.clone(), user.clone())),
            _ => {
                if let Ok(mut log) = log.lock() {
                    log.push(TokenRequest {
                        user: Some(name.clone()),
                        service,
                        scopes,
                        granted: false,
                    });
                }
                return HttpResponse::registry_error(
                    401,
                    "UNAUTHORIZED",
                    "invalid username or password",
                )
                .into();
            }
        },
        None => None,
    };
    if let Ok(mut log) = log.lock() {
        log.push(TokenRequest {
            user: user.as_ref().map(|(name, _)| name.clone()),
            service: service.clone(),
            scopes: scopes.clone(),
            granted: true,
        });
    }
    let mut access = Vec::new();
    for scope in &scopes {
        let mut parts = scope.splitn(2, ':');
        let resource_type = parts.next().unwrap_or("");
        let Some((name, actions)) = parts.next().and_then(|rest| rest.rsplit_once(':')) else {
            continue;
        };
        let actions: Vec<String> = actions.split(',').map(str::to_string).collect();
        let granted: Vec<String> = match &user {
            Some((_, user)) => {
                let allowed = user.repositories.as_ref().is_none_or(|repositories| {
                    repositories.iter().any(|repository| repository == name)
                });
                if allowed {
                    actions
                } else {
                    Vec::new()
                }
            }
            None if policy.anonymous_pull => actions
                .into_iter()
                .filter(|action| action == "pull")
                .collect(),
            None => Vec::new(),
        };
        if !granted.is_empty() {
            access.push(Access {
                resource_type: resource_type.to_string(),
                name: name.to_string(),
                actions: granted,
            });
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|duration| duration.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        iss: TOKEN_ISSUER.to_string(),
        sub: user
            .as_ref()
            .map(|(name, _)| name.clone())
            .unwrap_or_default(),
        aud: service.clone().unwrap_or_else(|| TOKEN_SERVICE.to_string()),
        exp: now + 300,
        nbf: now.saturating_sub(10),
        iat: now,
        jti: format!("{now}-{}", rand_suffix()),
        access,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("JWT".to_string());
    header.x5c = Some(chain.to_vec());
    match jsonwebtoken::encode(&header, &claims, key) {
        Ok(token) => {
            let body =
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
            HttpResponse::new(200)
                .header("Content-Type", "application/json")
                .body(body.to_string())
                .into()
        }
        Err(error) => HttpResponse::new(500).body(error.to_string()).into(),
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}
