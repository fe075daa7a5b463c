//! Who is calling: every port of the system checks a token.
//!
//! A token is a JWT signed with Ed25519 (`alg` `EdDSA`) whose claims say
//! what it opens ([`Claims`]): a [`Scope`], the tenant for a `tenant`
//! token, and optionally when it expires. Daemons verify tokens with one or
//! more public keys ([`JwtVerifier`]); whoever holds the private key
//! ([`SigningKey`], neon_local's repository or a deployment's control
//! plane) issues them. Each port says what a call needs ([`Access`]) and
//! asks [`Claims::check`].
//!
//! Keys are PEM files in the formats OpenSSL writes
//! (`openssl genpkey -algorithm ed25519`, `openssl pkey -pubout`): the
//! private key as PKCS#8, the public key as SubjectPublicKeyInfo. A public
//! key file may hold several keys, and a token signed by any of them is
//! accepted: that is how keys are rotated without downtime.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utils::TenantId;

/// Seconds of clock difference tolerated when checking `exp`.
pub const EXPIRY_LEEWAY_SECONDS: u64 = 30;

/// The environment variable a daemon (or tool) reads the token it presents
/// to other daemons from.
pub const TOKEN_ENV: &str = "NEON_AUTH_TOKEN";

/// What a token opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Everything.
    Admin,
    /// One tenant's data and timelines (the claim `tenant_id`).
    Tenant,
    /// A safekeeper: publishing timeline state to the broker, reading WAL.
    Safekeeper,
    /// A pageserver: reading WAL from safekeepers (its feedback moves their
    /// remote consistent LSN), subscribing to the broker.
    Pageserver,
    /// compute_ctl's HTTP API.
    Compute,
    /// The control plane's wake API.
    Proxy,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Admin,
        Scope::Tenant,
        Scope::Safekeeper,
        Scope::Pageserver,
        Scope::Compute,
        Scope::Proxy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Tenant => "tenant",
            Scope::Safekeeper => "safekeeper",
            Scope::Pageserver => "pageserver",
            Scope::Compute => "compute",
            Scope::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scope {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// A token's claims.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub scope: Scope,
    /// The tenant of a `tenant` token (and only of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<TenantId>,
    /// Expiry, in seconds since the Unix epoch; none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
}

impl Claims {
    /// A token of `scope` (not `tenant`: see [`Claims::tenant`]) that never expires.
    pub fn new(scope: Scope) -> Claims {
        Claims {
            scope,
            tenant_id: None,
            exp: None,
        }
    }

    /// A token for one tenant that never expires.
    pub fn tenant(tenant_id: TenantId) -> Claims {
        Claims {
            scope: Scope::Tenant,
            tenant_id: Some(tenant_id),
            exp: None,
        }
    }

    /// The same claims, expiring `seconds` from now.
    pub fn expiring_in(mut self, seconds: u64) -> Claims {
        self.exp = Some(unix_now().saturating_add(seconds));
        self
    }

    /// Whether these claims open what `access` asks for; admin opens all.
    pub fn check(&self, access: &Access) -> Result<(), AuthError> {
        if self.scope == Scope::Admin {
            return Ok(());
        }
        let allowed = match access {
            Access::Public => true,
            Access::Admin => false,
            Access::Tenant(tenant_id) => self.opens_tenant(*tenant_id),
            Access::Scopes(scopes) => scopes.contains(&self.scope),
            Access::TenantOrScopes(tenant_id, scopes) => {
                self.opens_tenant(*tenant_id) || scopes.contains(&self.scope)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(AuthError::Forbidden(format!(
                "a {} token does not open this: it needs {access}",
                self.describe()
            )))
        }
    }

    fn opens_tenant(&self, tenant_id: TenantId) -> bool {
        self.scope == Scope::Tenant && self.tenant_id == Some(tenant_id)
    }

    /// "tenant 9ef8… " or the scope's name, for messages.
    fn describe(&self) -> String {
        match (self.scope, self.tenant_id) {
            (Scope::Tenant, Some(tenant_id)) => format!("tenant {tenant_id}"),
            (scope, _) => scope.name().to_owned(),
        }
    }
}

/// What a call needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// Nothing: open to anyone (health checks).
    Public,
    /// An admin token.
    Admin,
    /// A token for this tenant (or admin).
    Tenant(TenantId),
    /// A token of one of these scopes (or admin).
    Scopes(&'static [Scope]),
    /// A token for this tenant, or of one of these scopes (or admin).
    TenantOrScopes(TenantId, &'static [Scope]),
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scopes = |scopes: &[Scope]| {
            scopes
                .iter()
                .map(|s| format!("a {s} token"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Access::Public => f.write_str("nothing"),
            Access::Admin => f.write_str("an admin token"),
            Access::Tenant(t) => write!(f, "a token for tenant {t} or an admin token"),
            Access::Scopes(s) => write!(f, "{} or an admin token", scopes(s)),
            Access::TenantOrScopes(t, s) => {
                write!(f, "a token for tenant {t}, {} or an admin token", scopes(s))
            }
        }
    }
}

/// Why a call was refused: [`AuthError::Forbidden`] is a valid token that
/// does not open this (HTTP 403); the rest are no valid token (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: this needs a token ({0})")]
    Missing(&'static str),
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("{0}")]
    Forbidden(String),
}

impl AuthError {
    /// A valid token that does not open this (403), rather than no valid
    /// token (401).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, AuthError::Forbidden(_))
    }
}

/// Verifies tokens with one or more public keys.
pub struct JwtVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JwtVerifier({} keys)", self.keys.len())
    }
}

impl JwtVerifier {
    /// The public keys in a PEM file (one or more `PUBLIC KEY` blocks).
    pub fn from_file(path: &Path) -> Result<JwtVerifier, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("reading public key file {}: {e}", path.display())))?;
        JwtVerifier::from_pem(&text)
            .map_err(|e| KeyError(format!("public key file {}: {}", path.display(), e.0)))
    }

    /// The public keys in PEM text (one or more `PUBLIC KEY` blocks).
    pub fn from_pem(text: &str) -> Result<JwtVerifier, KeyError> {
        let blocks = pem_blocks(text, "PUBLIC KEY");
        if blocks.is_empty() {
            return Err(KeyError(
                "no '-----BEGIN PUBLIC KEY-----' block (an Ed25519 public key in PEM)".into(),
            ));
        }
        let keys = blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                DecodingKey::from_ed_pem(block.as_bytes())
                    .map_err(|e| KeyError(format!("key {}: not an Ed25519 public key: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims = HashSet::new();
        validation.validate_exp = true;
        validation.leeway = EXPIRY_LEEWAY_SECONDS;
        Ok(JwtVerifier { keys, validation })
    }

    /// The claims of a token signed by one of the keys and not expired.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut last = AuthError::Invalid("no key to verify it with".into());
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token.trim(), key, &self.validation) {
                Ok(data) => {
                    let claims = data.claims;
                    return match (claims.scope, claims.tenant_id) {
                        (Scope::Tenant, None) => Err(AuthError::Invalid(
                            "a tenant token must name its tenant_id".into(),
                        )),
                        (scope, Some(_)) if scope != Scope::Tenant => Err(AuthError::Invalid(
                            format!("a {scope} token may not name a tenant_id"),
                        )),
                        _ => Ok(claims),
                    };
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::InvalidSignature => {
                            AuthError::Invalid("bad signature (not signed by a trusted key)".into())
                        }
                        _ => AuthError::Invalid(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }

    /// Checks the token of an `Authorization: Bearer <token>` header (or
    /// gRPC metadata of that form) against `access`: the claims, or why not.
    pub fn authorize_bearer(
        &self,
        header: Option<&str>,
        access: &Access,
    ) -> Result<Claims, AuthError> {
        let claims = self.verify(bearer_token(header)?)?;
        claims.check(access)?;
        Ok(claims)
    }
}

/// Issues tokens.
pub struct SigningKey {
    key: EncodingKey,
}

impl SigningKey {
    /// The private key in a PEM file (PKCS#8 `PRIVATE KEY`).
    pub fn from_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| KeyError(format!("reading private key file {}: {e}", path.display())))?;
        SigningKey::from_pem(&text)
            .map_err(|e| KeyError(format!("private key file {}: {}", path.display(), e.0)))
    }

    pub fn from_pem(text: &str) -> Result<SigningKey, KeyError> {
        let key = EncodingKey::from_ed_pem(text.as_bytes())
            .map_err(|e| KeyError(format!("not an Ed25519 private key: {e}")))?;
        Ok(SigningKey { key })
    }

    /// A signed token carrying `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .expect("signing serializable claims with a parsed Ed25519 key cannot fail")
    }
}

/// A key file that cannot be used; the message names the file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A new key pair as PEM text: (private key, public key).
pub fn generate_key_pair() -> (String, String) {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .expect("the system's random number generator failed");
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
        .expect("any 32 bytes are an Ed25519 seed");
    let public = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec();
    // PKCS#8 v1 (RFC 8410): version 0, algorithm id-Ed25519, the seed as
    // an OCTET STRING inside the privateKey OCTET STRING.
    let mut private_der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    private_der.extend_from_slice(&seed);
    // SubjectPublicKeyInfo: algorithm id-Ed25519, the key as a BIT STRING.
    let mut public_der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    public_der.extend_from_slice(&public);
    (
        pem_encode("PRIVATE KEY", &private_der),
        pem_encode("PUBLIC KEY", &public_der),
    )
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The `-----BEGIN label-----` ... `-----END label-----` blocks of `text`.
fn pem_blocks<'a>(text: &'a str, label: &str) -> Vec<&'a str> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let Some(len) = rest[start..].find(&end) else {
            break;
        };
        let stop = start + len + end.len();
        blocks.push(&rest[start..stop]);
        rest = &rest[stop..];
    }
    blocks
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let Some(value) = header else {
        return Err(AuthError::Missing(
            "send it as 'Authorization: Bearer <token>'",
        ));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    token.ok_or_else(|| {
        AuthError::Invalid("the Authorization header must be 'Bearer <token>'".into())
    })
}

/// The token in the environment ([`TOKEN_ENV`]), if set and not empty.
pub fn token_from_env() -> Option<String> {
    std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
