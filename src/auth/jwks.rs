//! The key set of `auth.jwks_url`: fetched, cached, refreshed on a schedule and when a
//! token names a `kid` the cache lacks, never more often than
//! `auth.jwks_min_refresh_interval`.
//!
//! Verification only reads the cache (an `ArcSwap`, no lock, no I/O). A fetch runs as its
//! own task on the arbiter that asked for it, so a caller that goes away (a client that
//! hangs up) never leaves a fetch half done; callers that arrive while one is under way wait
//! for it instead of starting another. A failed fetch (the server is down, answers an error
//! or garbage) keeps the cached keys and is logged, and is retried after the minimum
//! interval. Only RSA and EC signing keys with a `kid` are taken from the set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::watch;

use super::{parse_algorithm, KeyFamily};
use crate::config::AuthConfig;

/// How long one fetch of the key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest key set accepted (a real one is a few KiB).
const MAX_BODY: usize = 256 * 1024;

/// One verification key of the set.
pub(crate) struct JwkKey {
    key: DecodingKey,
    family: KeyFamily,
    /// The key's `alg`, when the set names one: the only algorithm it verifies.
    alg: Option<Algorithm>,
    /// For EC keys, the algorithm its curve goes with (P-256: ES256, P-384: ES384).
    curve_alg: Option<Algorithm>,
}

impl JwkKey {
    /// The key, when it may verify a token signed with `alg`.
    pub(crate) fn for_algorithm(&self, alg: Algorithm) -> Option<&DecodingKey> {
        let fits = match (self.alg, self.family) {
            (Some(own), _) => own == alg,
            (None, KeyFamily::Rsa) => {
                matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512)
            }
            (None, KeyFamily::Ec) => self.curve_alg == Some(alg),
            (None, KeyFamily::Hmac) => false,
        };
        fits.then_some(&self.key)
    }
}

type Keys = HashMap<String, Arc<JwkKey>>;

#[derive(Default)]
struct FetchState {
    /// A fetch is under way.
    in_flight: bool,
    /// When the last fetch started.
    last_attempt: Option<Instant>,
    /// Whether the last finished fetch loaded a set.
    last_ok: bool,
}

/// The cached key set and its refresh schedule.
pub(crate) struct Jwks {
    url: String,
    refresh: Duration,
    min_interval: Duration,
    tls: Arc<rustls::ClientConfig>,
    keys: ArcSwap<Keys>,
    state: Mutex<FetchState>,
    /// Bumped each time a fetch finishes, for the callers waiting on it.
    finished: watch::Sender<u64>,
}

impl Jwks {
    /// The key set `config.jwks_url` names (nothing is fetched yet).
    pub(crate) fn new(config: &AuthConfig) -> Jwks {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Jwks {
            url: config.jwks_url.clone(),
            refresh: config.jwks_refresh,
            min_interval: config.jwks_min_refresh_interval,
            tls: Arc::new(tls),
            keys: ArcSwap::from_pointee(Keys::new()),
            state: Mutex::new(FetchState::default()),
            finished: watch::Sender::new(0),
        }
    }

    /// The cached key of `kid`.
    pub(crate) fn key(&self, kid: &str) -> Option<Arc<JwkKey>> {
        self.keys.load().get(kid).cloned()
    }

    /// Fetches the set now, once, and then on the schedule: every `auth.jwks_refresh` after
    /// a fetch that worked, every `auth.jwks_min_refresh_interval` after one that failed.
    /// Runs on the current arbiter until the key set is dropped.
    pub(crate) fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        actix_rt::spawn(async move {
            loop {
                let Some(jwks) = weak.upgrade() else { return };
                jwks.refresh().await;
                let next = jwks.next_scheduled();
                drop(jwks);
                tokio::time::sleep_until(next.into()).await;
            }
        });
    }

    fn next_scheduled(&self) -> Instant {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(last) = state.last_attempt else {
            return Instant::now();
        };
        let wait = if state.last_ok {
            self.refresh
        } else {
            self.min_interval
        };
        last + wait.max(self.min_interval)
    }

    /// Fetches the set unless a fetch started less than `auth.jwks_min_refresh_interval`
    /// ago; when one is under way, waits for it instead. Returns when the cache is as fresh
    /// as the rate limit allows.
    pub(crate) async fn refresh(self: &Arc<Self>) {
        let mut finished = self.finished.subscribe();
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if !state.in_flight {
                if state
                    .last_attempt
                    .is_some_and(|t| t.elapsed() < self.min_interval)
                {
                    return;
                }
                state.in_flight = true;
                state.last_attempt = Some(Instant::now());
                let jwks = self.clone();
                actix_rt::spawn(async move { jwks.fetch_and_store().await });
            }
        }
        let _ = tokio::time::timeout(FETCH_TIMEOUT * 2, finished.changed()).await;
    }

    async fn fetch_and_store(&self) {
        let result = self.fetch().await;
        let ok = result.is_ok();
        match result {
            Ok(keys) => {
                let old = self.keys.load();
                let mut kids: Vec<&String> = keys.keys().collect();
                kids.sort();
                if old.len() != keys.len() || keys.keys().any(|k| !old.contains_key(k)) {
                    log::info!("jwks: {} keys from {}: kid {kids:?}", keys.len(), self.url);
                } else {
                    log::debug!("jwks: {} keys from {}, unchanged", keys.len(), self.url);
                }
                self.keys.store(Arc::new(keys));
            }
            Err(why) => log::warn!(
                "jwks: fetching {} failed: {why}; keeping the {} cached keys",
                self.url,
                self.keys.load().len()
            ),
        }
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.in_flight = false;
            state.last_ok = ok;
        }
        self.finished.send_modify(|n| *n += 1);
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let client = awc::Client::builder()
            .connector(awc::Connector::new().rustls_0_23(self.tls.clone()))
            .timeout(FETCH_TIMEOUT)
            .add_default_header((
                actix_web::http::header::USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            ))
            .finish();
        let mut response = client
            .get(&self.url)
            .insert_header((actix_web::http::header::ACCEPT, "application/json"))
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("answered HTTP {}", response.status()));
        }
        let body = response
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?;
        parse_key_set(&body)
    }
}

/// The usable keys of a JWKS document. Keys that are not RSA or EC signing keys with a `kid`
/// are skipped; a document that is not a key set, or whose keys are all unusable, is an
/// error (an empty set is not: the provider withdrew every key).
pub(crate) fn parse_key_set(body: &[u8]) -> Result<Keys, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
    let total = raw.keys.len();
    let mut keys = Keys::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        match usable_key(value) {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(why) => log::debug!("jwks: key #{i} skipped: {why}"),
        }
    }
    if keys.is_empty() && total > 0 {
        return Err(format!(
            "none of its {total} keys is an RSA or EC signing key with a kid"
        ));
    }
    Ok(keys)
}

fn usable_key(value: serde_json::Value) -> Result<(String, JwkKey), String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err(format!("kid {kid:?} is an encryption key"));
    }
    let (family, curve_alg) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (KeyFamily::Rsa, None),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => (KeyFamily::Ec, Some(Algorithm::ES256)),
            EllipticCurve::P384 => (KeyFamily::Ec, Some(Algorithm::ES384)),
            ref other => return Err(format!("kid {kid:?}: curve {other:?} not supported")),
        },
        _ => return Err(format!("kid {kid:?}: not an RSA or EC key")),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(named) => {
            let alg = parse_algorithm(&named.to_string())
                .filter(|alg| match family {
                    KeyFamily::Ec => curve_alg == Some(*alg),
                    _ => super::algorithm_family(&format!("{alg:?}")) == Some(family),
                })
                .ok_or_else(|| format!("kid {kid:?}: alg {named} does not go with the key"))?;
            Some(alg)
        }
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("kid {kid:?}: {e}"))?;
    Ok((
        kid,
        JwkKey {
            key,
            family,
            alg,
            curve_alg,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_signing_keys_with_a_kid_that_fit_their_alg_are_kept() {
        let set = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "rsa", "use": "sig", "alg": "RS256", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw", "e": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "EC", "kid": "ec-wrong-alg", "alg": "ES384", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "weird", "kid": "w"}
        ]});
        let keys = parse_key_set(set.to_string().as_bytes()).unwrap();
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ec", "rsa"]);
        let rsa = &keys["rsa"];
        assert!(rsa.for_algorithm(Algorithm::RS256).is_some());
        assert!(rsa.for_algorithm(Algorithm::RS512).is_none(), "its alg");
        let ec = &keys["ec"];
        assert!(ec.for_algorithm(Algorithm::ES256).is_some());
        assert!(ec.for_algorithm(Algorithm::ES384).is_none(), "its curve");
        assert!(ec.for_algorithm(Algorithm::RS256).is_none());
    }

    #[test]
    fn garbage_is_an_error_and_an_empty_set_is_not() {
        for body in [&b"<html>"[..], b"{}", b"{\"keys\": 1}", b"[]"] {
            assert!(parse_key_set(body).is_err(), "{body:?}");
        }
        let useless = serde_json::json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]});
        assert!(parse_key_set(useless.to_string().as_bytes()).is_err());
        assert!(parse_key_set(b"{\"keys\": []}").unwrap().is_empty());
    }
}
