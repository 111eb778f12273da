//! Authentication: JWT verification, token extraction, and what a token allows.
//!
//! The algorithm list is pinned by config: a token whose header names any other algorithm is
//! rejected before its signature is looked at (no `alg: none`, no HS/RS confusion). Tokens are
//! never logged; failures are described by [`AuthError::reason`], which names what was wrong
//! without echoing the token.
//!
//! Keys come from config (a shared secret, an RSA and an EC public key) and, when
//! `auth.jwks_url` is set, from a JSON Web Key Set ([`jwks`]). The configured keys are tried
//! first; a token with a `kid` header that they do not verify is checked with the set's key
//! of that `kid`. [`Authenticator::verify`] only reads what is cached and never waits;
//! [`Authenticator::verify_refreshing`] also fetches the set again (rate limited) when the
//! `kid` is unknown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::HttpRequest;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, ConfigError};
use crate::glob;

mod jwks;

use jwks::Jwks;

/// Which kind of key an algorithm verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// HS256/384/512: shared secret.
    Hmac,
    /// RS256/384/512: RSA public key.
    Rsa,
    /// ES256/384: EC public key.
    Ec,
}

/// The key family of a configured algorithm name, or `None` when unsupported.
pub fn algorithm_family(name: &str) -> Option<KeyFamily> {
    match parse_algorithm(name)? {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Some(KeyFamily::Hmac),
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => Some(KeyFamily::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(KeyFamily::Ec),
        _ => None,
    }
}

pub(crate) fn parse_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "ES256" => Some(Algorithm::ES256),
        "ES384" => Some(Algorithm::ES384),
        _ => None,
    }
}

/// Why a connection could not be authenticated. Sent as the reason of close code 4000.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, and anonymous access is off.
    #[error("token missing")]
    Missing,
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// The signature does not verify with the configured key.
    #[error("invalid token signature")]
    BadSignature,
    /// The token's `kid` is not in the key set of `auth.jwks_url` (also after fetching it
    /// again, as far as the rate limit allowed), or the set could not be fetched yet.
    #[error("no key for the token's kid")]
    UnknownKey,
    /// The token's algorithm is not in `auth.algorithms`.
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `iss` is absent or does not match `auth.issuer`.
    #[error("token issuer not accepted")]
    BadIssuer,
    /// `aud` is absent or does not name `auth.audience`.
    #[error("token audience not accepted")]
    BadAudience,
    /// The query string carries more than one `token` parameter: which one is meant cannot
    /// be told, and picking one would let a proxy's and a client's tokens be confused.
    #[error("token given more than once in the query string")]
    Repeated,
    /// The token is not a well-formed JWT or lacks a required claim.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
}

impl AuthError {
    /// A short, stable label for metrics and audit logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            // An unknown kid is a signature nobody here can verify.
            AuthError::BadSignature | AuthError::UnknownKey => "bad_signature",
            AuthError::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::BadAudience => "bad_audience",
            AuthError::Repeated => "repeated",
            AuthError::Malformed(_) => "malformed",
        }
    }
}

/// JWT claims switchboard reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Glob patterns of rooms the user may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    /// Glob patterns of rooms the user may publish to; absent means "where it may join".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Vec<String>>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one string or several (RFC 7519 §4.1.3 allows both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Whether the bearer may use the server HTTP API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Glob patterns of the ASAP agent URNs the bearer may send as and serve
    /// (`urn:asap:agent:billing-*`); absent: any URN no other connection serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
}

/// The `aud` claim: a single audience or a list of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "api"`.
    One(String),
    /// `"aud": ["api", "web"]`.
    Many(Vec<String>),
}

/// Who a session is and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// User id (`sub`), or `anonymous:<connection id>`.
    pub user: Arc<str>,
    /// Whether the session has no token.
    pub anonymous: bool,
    /// Whether the token carries `admin: true`; only such a token may join another user's
    /// personal room (and only where its room patterns match).
    pub admin: bool,
    rooms: Vec<String>,
    publish: Vec<String>,
    agents: Option<Vec<String>>,
}

impl Identity {
    /// An anonymous identity: may join and publish anywhere except users' personal rooms.
    pub fn anonymous(connection_id: &str) -> Identity {
        Identity {
            user: format!("anonymous:{connection_id}").into(),
            anonymous: true,
            admin: false,
            rooms: vec!["*".into()],
            publish: vec!["*".into()],
            agents: None,
        }
    }

    /// An identity from verified claims.
    pub fn from_claims(claims: Claims) -> Identity {
        let rooms = claims.rooms.unwrap_or_default();
        let publish = claims.publish.unwrap_or_else(|| rooms.clone());
        Identity {
            user: claims.sub.into(),
            anonymous: false,
            admin: claims.admin,
            rooms,
            publish,
            agents: claims.agents,
        }
    }

    /// Whether the session may send ASAP envelopes as, and serve, the agent `urn`: any URN
    /// without an `agents` claim, else one its patterns match.
    pub fn may_act_as(&self, urn: &str) -> bool {
        self.agents
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| glob::matches(p, urn)))
    }

    /// The user's personal room, joined automatically (none for anonymous sessions, or
    /// when `sub` does not make a valid room name).
    pub fn personal_room(&self) -> Option<String> {
        let room = format!("{PERSONAL_PREFIX}{}", self.user);
        (!self.anonymous && crate::protocol::valid_room_name(&room)).then_some(room)
    }

    /// Whether the session may join `room`.
    ///
    /// A personal room (`user:…`) is its user's: another user's token gets in only with
    /// `admin: true` and a pattern that matches, whatever a broad glob like `*` says, so a
    /// token for "every room" does not read everybody's private messages.
    pub fn may_join(&self, room: &str) -> bool {
        if self.personal_room().as_deref() == Some(room) {
            return true;
        }
        if room.starts_with(PERSONAL_PREFIX) && !self.admin {
            return false;
        }
        self.rooms.iter().any(|p| glob::matches(p, room))
    }

    /// Whether the session may publish to `room` (the same rule for personal rooms).
    pub fn may_publish(&self, room: &str) -> bool {
        if room.starts_with(PERSONAL_PREFIX)
            && !self.admin
            && self.personal_room().as_deref() != Some(room)
        {
            return false;
        }
        self.publish.iter().any(|p| glob::matches(p, room))
    }
}

/// The prefix of personal rooms: `user:{sub}`.
pub const PERSONAL_PREFIX: &str = "user:";

/// Verifies tokens with the configured keys and algorithms.
pub struct Authenticator {
    keys: HashMap<KeyFamily, DecodingKey>,
    /// The key set of `auth.jwks_url`, when set.
    jwks: Option<Arc<Jwks>>,
    validations: HashMap<String, Validation>,
    anonymous: bool,
    cookie_name: String,
}

impl Authenticator {
    /// Builds the verifier; reads key files named in config.
    pub fn from_config(config: &AuthConfig) -> Result<Authenticator, ConfigError> {
        let mut keys = HashMap::new();
        if !config.hs256_secret.is_empty() {
            keys.insert(
                KeyFamily::Hmac,
                DecodingKey::from_secret(config.hs256_secret.as_bytes()),
            );
        }
        let read_pem = |key: &str, path: &str| {
            std::fs::read(path).map_err(|e| ConfigError::Invalid {
                key: key.into(),
                message: format!("cannot read {path}: {e}"),
            })
        };
        if !config.rsa_public_key_file.is_empty() {
            let pem = read_pem("auth.rsa_public_key_file", &config.rsa_public_key_file)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| ConfigError::Invalid {
                key: "auth.rsa_public_key_file".into(),
                message: format!("not an RSA public key in PEM: {e}"),
            })?;
            keys.insert(KeyFamily::Rsa, key);
        }
        if !config.ec_public_key_file.is_empty() {
            let pem = read_pem("auth.ec_public_key_file", &config.ec_public_key_file)?;
            let key = DecodingKey::from_ec_pem(&pem).map_err(|e| ConfigError::Invalid {
                key: "auth.ec_public_key_file".into(),
                message: format!("not an EC public key in PEM: {e}"),
            })?;
            keys.insert(KeyFamily::Ec, key);
        }
        let mut validations = HashMap::new();
        for name in &config.algorithms {
            let Some(alg) = parse_algorithm(name) else {
                return Err(ConfigError::Invalid {
                    key: "auth.algorithms".into(),
                    message: format!("unsupported algorithm `{name}`"),
                });
            };
            let mut v = Validation::new(alg);
            v.leeway = config.leeway.as_secs();
            v.validate_nbf = true;
            // A configured issuer or audience is required, not only compared when present:
            // a token without the claim was minted for something else.
            let mut required = vec!["exp", "sub"];
            if config.issuer.is_empty() {
                v.iss = None;
            } else {
                v.set_issuer(&[&config.issuer]);
                required.push("iss");
            }
            if config.audience.is_empty() {
                v.validate_aud = false;
            } else {
                v.set_audience(&[&config.audience]);
                required.push("aud");
            }
            v.set_required_spec_claims(&required);
            validations.insert(name.clone(), v);
        }
        let jwks = (!config.jwks_url.is_empty()).then(|| Arc::new(Jwks::new(config)));
        Ok(Authenticator {
            keys,
            jwks,
            validations,
            anonymous: config.anonymous,
            cookie_name: config.cookie_name.clone(),
        })
    }

    /// Starts fetching the key set of `auth.jwks_url` (now, then on its schedule) on the
    /// current arbiter; nothing without one. Must be called inside a running actix system.
    /// A failed fetch is logged, never fatal: tokens that need the set are refused until
    /// a fetch works.
    pub fn start_key_refresh(&self) {
        if let Some(jwks) = &self.jwks {
            jwks.start();
        }
    }

    /// Authenticates a connection from its token (or lack of one), fetching the key set
    /// again when the token names a `kid` it lacks ([`Authenticator::verify_refreshing`]).
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        connection_id: &str,
    ) -> Result<Identity, AuthError> {
        match token {
            None if self.anonymous => Ok(Identity::anonymous(connection_id)),
            None => Err(AuthError::Missing),
            Some(token) => self
                .verify_refreshing(token)
                .await
                .map(Identity::from_claims),
        }
    }

    /// Verifies a token like [`Authenticator::verify`]; when its `kid` is not in the cached
    /// key set, fetches the set (unless the last fetch was less than
    /// `auth.jwks_min_refresh_interval` ago, or waits for the fetch under way) and tries
    /// once more.
    pub async fn verify_refreshing(&self, token: &str) -> Result<Claims, AuthError> {
        match (self.verify(token), &self.jwks) {
            (Err(AuthError::UnknownKey), Some(jwks)) => {
                jwks.refresh().await;
                self.verify(token)
            }
            (result, _) => result,
        }
    }

    /// Verifies a token and returns its claims, with the configured keys and the cached key
    /// set; never waits.
    ///
    /// The configured key of the algorithm's family decides first. Only when there is none,
    /// or its signature check fails, and the token is RS*/ES* with a `kid` and
    /// `auth.jwks_url` is set, is the set's key of that `kid` used: it must fit the token's
    /// algorithm (the key's own `alg` when it names one, else its type and curve).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed("bad header"))?;
        let alg_name = format!("{:?}", header.alg);
        let validation = self
            .validations
            .get(&alg_name)
            .ok_or(AuthError::AlgorithmNotAllowed)?;
        let family = algorithm_family(&alg_name).ok_or(AuthError::AlgorithmNotAllowed)?;
        let configured = self
            .keys
            .get(&family)
            .map(|key| decode(token, key, validation));
        let from_set = match (&configured, &self.jwks, &header.kid) {
            (None | Some(Err(AuthError::BadSignature)), Some(jwks), Some(kid))
                if family != KeyFamily::Hmac =>
            {
                Some(jwks.key(kid))
            }
            _ => None,
        };
        let claims = match (from_set, configured) {
            (Some(None), _) => return Err(AuthError::UnknownKey),
            (Some(Some(jwk)), _) => {
                let key = jwk
                    .for_algorithm(header.alg)
                    .ok_or(AuthError::AlgorithmNotAllowed)?;
                decode(token, key, validation)?
            }
            (None, Some(result)) => result?,
            (None, None) => return Err(AuthError::AlgorithmNotAllowed),
        };
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed("empty sub"));
        }
        Ok(claims)
    }

    /// The token of a request: `Authorization: Bearer`, then `?token=`, then the cookie.
    /// A query string with several `token` parameters is refused.
    pub fn extract_token(&self, req: &HttpRequest) -> Result<Option<String>, AuthError> {
        self.extract_token_from(req, &TokenSource::ALL)
    }

    /// The token of a request from `sources`, tried in that order.
    pub fn extract_token_from(
        &self,
        req: &HttpRequest,
        sources: &[TokenSource],
    ) -> Result<Option<String>, AuthError> {
        for source in sources {
            let token = match source {
                TokenSource::Header => req
                    .headers()
                    .get(actix_web::http::header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(bearer_token)
                    .map(|token| token.trim().to_owned()),
                TokenSource::Query => query_token(req.query_string())?,
                TokenSource::Cookie => req
                    .cookie(&self.cookie_name)
                    .map(|c| c.value().to_owned())
                    .filter(|t| !t.is_empty()),
            };
            if token.is_some() {
                return Ok(token);
            }
        }
        Ok(None)
    }
}

/// Where a connection's token may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `?token=<token>` (browsers cannot set headers on a WebSocket).
    Query,
    /// The cookie named `auth.cookie_name`.
    Cookie,
}

impl TokenSource {
    /// Every source, in the order the plain `/ws` route tries them.
    pub const ALL: [TokenSource; 3] =
        [TokenSource::Header, TokenSource::Query, TokenSource::Cookie];
}

/// Decodes and validates `token` with `key`, naming what was wrong.
fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::AlgorithmNotAllowed,
            ErrorKind::InvalidIssuer => AuthError::BadIssuer,
            ErrorKind::InvalidAudience => AuthError::BadAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => AuthError::BadIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => AuthError::BadAudience,
            ErrorKind::MissingRequiredClaim(_) => AuthError::Malformed("missing claim"),
            ErrorKind::Json(_) => AuthError::Malformed("bad claims"),
            _ => AuthError::Malformed("undecodable"),
        })
}

/// The `token` query parameter (empty counts as absent); an error when it is repeated.
pub fn query_token(query: &str) -> Result<Option<String>, AuthError> {
    let mut tokens = url::form_urlencoded::parse(query.as_bytes())
        .filter(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned());
    let first = tokens.next();
    if tokens.next().is_some() {
        return Err(AuthError::Repeated);
    }
    Ok(first.filter(|t| !t.is_empty()))
}

/// The credentials of an `Authorization: Bearer …` header value (the scheme is
/// case-insensitive, as RFC 7235 says).
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Signs an HS256 token: for `switchboard token`, development and tests.
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    rooms: Vec<String>,
    publish: Option<Vec<String>>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    sign_hs256(secret, sub, rooms, publish, ttl, false)
}

/// Like [`mint_hs256`], with `"admin": true` (`switchboard token --admin`): the token may
/// call the HTTP API and log into the web console.
pub fn mint_hs256_admin(
    secret: &str,
    sub: &str,
    rooms: Vec<String>,
    publish: Option<Vec<String>>,
    ttl: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    sign_hs256(secret, sub, rooms, publish, ttl, true)
}

fn sign_hs256(
    secret: &str,
    sub: &str,
    rooms: Vec<String>,
    publish: Option<Vec<String>>,
    ttl: Duration,
    admin: bool,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: sub.into(),
        rooms: Some(rooms),
        publish,
        exp: now + ttl.as_secs(),
        nbf: None,
        iat: Some(now),
        iss: None,
        aud: None,
        admin,
        agents: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef-test";

    fn authenticator() -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            hs256_secret: SECRET.into(),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("BEARER abc"), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[actix_rt::test]
    async fn verifies_and_maps_claims() {
        let token = mint_hs256(
            SECRET,
            "alice",
            vec!["conversation:*".into()],
            Some(vec!["conversation:1".into()]),
            Duration::from_secs(60),
        )
        .unwrap();
        let id = authenticator()
            .authenticate(Some(&token), "c1")
            .await
            .unwrap();
        assert_eq!(&*id.user, "alice");
        assert!(id.may_join("conversation:9"));
        assert!(id.may_join("user:alice"));
        assert!(!id.may_join("user:bob"));
        assert!(!id.may_join("task:1"));
        assert!(id.may_publish("conversation:1"));
        assert!(!id.may_publish("conversation:2"));
    }

    /// A token with exactly these claims (plus `sub` and a future `exp`).
    fn token_with(extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"sub": "alice", "exp": u64::MAX / 2});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn authenticator_for(issuer: &str, audience: &str) -> Authenticator {
        Authenticator::from_config(&AuthConfig {
            hs256_secret: SECRET.into(),
            issuer: issuer.into(),
            audience: audience.into(),
            ..AuthConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn a_configured_issuer_and_audience_are_required() {
        let a = authenticator_for("https://idp.example", "switchboard");
        // Neither claim: refused for one of them.
        let neither = a.verify(&token_with(serde_json::json!({}))).unwrap_err();
        assert!(
            matches!(neither, AuthError::BadIssuer | AuthError::BadAudience),
            "{neither:?}"
        );
        let cases = [
            (
                serde_json::json!({"iss": "https://idp.example"}),
                Err(AuthError::BadAudience),
            ),
            (
                serde_json::json!({"aud": "switchboard"}),
                Err(AuthError::BadIssuer),
            ),
            (
                serde_json::json!({"iss": "https://evil.example", "aud": "switchboard"}),
                Err(AuthError::BadIssuer),
            ),
            (
                serde_json::json!({"iss": "https://idp.example", "aud": "other"}),
                Err(AuthError::BadAudience),
            ),
            (
                serde_json::json!({"iss": "https://idp.example", "aud": ["other", "switchboard"]}),
                Ok(()),
            ),
            (
                serde_json::json!({"iss": "https://idp.example", "aud": "switchboard"}),
                Ok(()),
            ),
        ];
        for (claims, expected) in cases {
            let got = a.verify(&token_with(claims.clone())).map(|_| ());
            assert_eq!(got, expected, "{claims}");
        }
        // Neither configured: neither required.
        assert!(authenticator_for("", "")
            .verify(&token_with(serde_json::json!({})))
            .is_ok());
    }

    #[test]
    fn an_audience_list_is_accepted() {
        let token = token_with(serde_json::json!({"aud": ["a", "b"]}));
        let claims = authenticator().verify(&token).unwrap();
        assert_eq!(
            claims.aud,
            Some(Audience::Many(vec!["a".into(), "b".into()]))
        );
        let a = authenticator_for("", "c");
        assert_eq!(a.verify(&token).unwrap_err(), AuthError::BadAudience);
    }

    #[test]
    fn a_repeated_token_parameter_is_refused() {
        assert_eq!(query_token("token=a"), Ok(Some("a".into())));
        assert_eq!(query_token("x=1&token="), Ok(None));
        assert_eq!(query_token(""), Ok(None));
        assert_eq!(query_token("token=a&token=b"), Err(AuthError::Repeated));
        assert_eq!(query_token("token=a&token=a"), Err(AuthError::Repeated));
        assert_eq!(query_token("tok%65n=a&token=b"), Err(AuthError::Repeated));
    }

    #[test]
    fn personal_rooms_need_their_user_or_an_admin_grant() {
        let a = authenticator();
        let everything = a
            .verify(&token_with(serde_json::json!({"rooms": ["*"]})))
            .map(Identity::from_claims)
            .unwrap();
        assert!(everything.may_join("user:alice"));
        assert!(!everything.may_join("user:bob"));
        assert!(!everything.may_publish("user:bob"));
        assert!(everything.may_join("conversation:1"));
        let admin = a
            .verify(&token_with(
                serde_json::json!({"rooms": ["user:*"], "admin": true}),
            ))
            .map(Identity::from_claims)
            .unwrap();
        assert!(admin.may_join("user:bob"));
        assert!(
            !admin.may_join("conversation:1"),
            "only where its patterns match"
        );
        assert!(!Identity::anonymous("c").may_join("user:bob"));
    }

    #[actix_rt::test]
    async fn rejects_bad_tokens_with_reasons() {
        let a = authenticator();
        assert_eq!(
            a.authenticate(None, "c").await.unwrap_err(),
            AuthError::Missing
        );
        let wrong = mint_hs256(
            "another-secret-0123456",
            "a",
            vec![],
            None,
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(a.verify(&wrong).unwrap_err(), AuthError::BadSignature);
        assert!(matches!(
            a.verify("not.a.jwt").unwrap_err(),
            AuthError::Malformed(_)
        ));
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "a".into(),
                rooms: None,
                publish: None,
                exp: u64::MAX / 2,
                nbf: None,
                iat: None,
                iss: None,
                aud: None,
                admin: false,
                agents: None,
            },
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            a.verify(&hs512).unwrap_err(),
            AuthError::AlgorithmNotAllowed
        );
    }
}
