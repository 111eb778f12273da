//! Test support for JWKS: signing keys a test controls (EC P-256 made on the spot, one RSA
//! key below) and the JSON Web Key Set that publishes them. Serve the set with the scriptable
//! [`Receiver`](super::receiver::Receiver).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// A private key with its `kid`, able to sign tokens and to describe itself as a JWK.
pub struct SigningKey {
    /// The key id in the set and in token headers.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    /// A new EC P-256 key (ES256). The JWK names no `alg`: the curve decides.
    pub fn ec(kid: &str) -> SigningKey {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .expect("generate a P-256 key");
        let point = pair.public_key_raw();
        assert_eq!(
            (point.len(), point[0]),
            (65, 4),
            "an uncompressed P-256 point"
        );
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())
                .expect("a PKCS#8 EC key"),
            jwk: json!({
                "kty": "EC",
                "use": "sig",
                "kid": kid,
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                "y": URL_SAFE_NO_PAD.encode(&point[33..]),
            }),
        }
    }

    /// The RSA key below (RS256; the JWK says `"alg": "RS256"`), as `kid`.
    pub fn rsa(kid: &str) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("an RSA key"),
            jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": kid,
                "n": RSA_MODULUS,
                "e": "AQAB",
            }),
        }
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token for `sub` on `rooms`, valid for ten minutes, with this key's `kid`.
    pub fn token(&self, sub: &str, rooms: &[&str]) -> String {
        self.token_with_kid(&self.kid, sub, rooms)
    }

    /// The same, but naming `kid` in the header (a key the set may not hold).
    pub fn token_with_kid(&self, kid: &str, sub: &str, rooms: &[&str]) -> String {
        self.sign(kid, json!({ "sub": sub, "rooms": rooms }))
    }

    /// A token with `claims` (plus `iat` and an `exp` ten minutes on), naming `kid`.
    pub fn sign(&self, kid: &str, mut claims: Value) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        claims["iat"] = json!(now);
        claims["exp"] = json!(now + Duration::from_secs(600).as_secs());
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign a token")
    }
}

/// `{"keys": [...]}` holding the public halves of `keys`, as a response body.
pub fn key_set(keys: &[&SigningKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

/// A test-only RSA key (2048 bits, PKCS#8), made for tests/jwks.rs. Never use it elsewhere.
const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQCi7PkgOFCpso5l
jv4byCa5hOnoJYhFt6SOZ4bMpxr6DO1kVVQ+q4wHGW6MVfBP7B5gt7papo17kDaU
RRcpRnReEpPEEbRyWKLcT6lbtp8IzeoWCEO00/ZC60EiFjQ6ySmzgAP5wcaSlcp0
4ymX+a2EbZIaPalqympRyPkwH06ZDlvtB9nOnjccX1yPAVnmVWHWxi2NCCCXxIy/
2AlP0fa9gp8MDgBQvimrGq5js++QqcXB59zxSqAIOzuB7RDq9Qiyq0ozpKaUY2pR
lRCgxZnOzYffDDzCebAZCoX3aaJ2mWwqoFaU/Jhq0JxdQ2EXAAlvrQ3g6EJ1b0YZ
oFlmZeMBAgMBAAECggEAJvxReJZBJvok/MREpd009vuJBRXGD/irla/MH7h0yhTB
0VphuEVQUnqRa189C8LSWg5ct0hXXpPZm40Ux7mmKsSDO02JQjtXbSRawClo0LCF
LRR5LxHxQX4NrdxmTxLHub4ONXtaysSxF1ssHsON87xMU58hpP4ehsdyaUN0iUb2
dIB1PTUOb7o2MnXiNZ42KYtlaSThoBWjygoCBOnBphGt6boU/FQUzChnn6NmzuXU
BY3z5XQqfw3nQ5FYt6OLpPuGeZxVIU5wVRzL+0a5jkWgIFsFDSQYIDGWIvee0mVg
988x6VR1kzfe0nevtJo2LY6rpC+mlAN7KNij9rQJCQKBgQDXQhlnP1B5nDfmFam/
mRTXWNK+vTwbetBMnJGbTZDShJ5cutPSm6kwkqHh5y4KHafPsMqju0LG4Sjtc1jR
DLupokApi7s5FYnp7b00IKbuGb8nFWGj8J3jCLPSoW8loK2avyNNrtbM0ted344V
2k4j0KMy/JA7gpo0ltodrhwfXwKBgQDBwzUSQEGAshBQ4lb4sqcYQeqzM8u2rLgd
A0hSiTqJiNwY3OY6AmCJbrXry8cfGjE4x1P8EcG4H+o09WWW7TSmIdV5T8/Z/mIc
Q18sU2l0rXZbujzGl0SM+CaJu2wsrqyFsAxmj2S6QyjsCfWkXSY2VUVSX3lyd4Q1
6LUcrnX5nwKBgQCyOMr5ngVOOtZZTLRXqzIDPkp2nA0JH30ZAUTZFbaDZkQLuK+q
nzDMw4r+k76dp4IKRnDwcRnPuhp9xtPReb5iq7B99XAUyk1+flT5tNMhLfYDMQO/
jXfbwpfIG9r/h3JVPk3Hgqvbt/HHh5GHbFDn/FUy4MO2UeLFCeUbT81+9wKBgQCP
aysUOEWDuclD5VTUvn/Z/6h2PkdyDkQ1DWHx3atbc9bd/FvY4juMXkr/npTjm6KF
UV0DvizyWYUk7+LjJO6MbYyyP3Ys+BKsst12VMNA3sg1uxMTN5JA+cikt/qo1B3U
0mtLWqYHDID0vaZ5o40OOG2YPB0LshVFRdsQwL2IJwKBgQDULp7zzS0iWGu1RIKH
EFJZYEsUaQUHqRVSEgbSFUzFpYemrUvH86ZQpQgdXWnFOxVtj78wqdWdsitOfCQy
RATXhveDlJMB5vOeb8On/EXp9gSYq6wBWzpWNoZayH5Clzsq+Z5u98/Ruv2m+z2J
jJljWemuqJOY0s5idvvTLhhVYQ==
-----END PRIVATE KEY-----";

/// Its modulus, base64url.
const RSA_MODULUS: &str = "ouz5IDhQqbKOZY7-G8gmuYTp6CWIRbekjmeGzKca-gztZFVUPquMBxlujFXwT-weYLe6WqaNe5A2lEUXKUZ0XhKTxBG0clii3E-pW7afCM3qFghDtNP2QutBIhY0Oskps4AD-cHGkpXKdOMpl_mthG2SGj2paspqUcj5MB9OmQ5b7QfZzp43HF9cjwFZ5lVh1sYtjQggl8SMv9gJT9H2vYKfDA4AUL4pqxquY7PvkKnFwefc8UqgCDs7ge0Q6vUIsqtKM6SmlGNqUZUQoMWZzs2H3ww8wnmwGQqF92midplsKqBWlPyYatCcXUNhFwAJb60N4OhCdW9GGaBZZmXjAQ";
