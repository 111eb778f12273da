//! The TLS client the webhook targets use when the receivers need more than the public
//! roots: a private CA (`webhooks.ca_file`) and a client certificate for mutual TLS
//! (`webhooks.client_cert_file` with `webhooks.client_key_file`). Without either, it is
//! what awc would use by itself: Mozilla's roots, no client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{ConfigError, WebhooksConfig};

/// The client configuration `[webhooks]` asks for. Errors name the key and the file.
pub(crate) fn client_config(w: &WebhooksConfig) -> Result<Arc<ClientConfig>, ConfigError> {
    let client_auth = match (w.client_cert_file.is_empty(), w.client_key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some((
            certificates("webhooks.client_cert_file", &w.client_cert_file)?,
            private_key("webhooks.client_key_file", &w.client_key_file)?,
        )),
        (false, true) => {
            return Err(invalid(
                "webhooks.client_key_file",
                "is needed with webhooks.client_cert_file".into(),
            ))
        }
        (true, false) => {
            return Err(invalid(
                "webhooks.client_cert_file",
                "is needed with webhooks.client_key_file".into(),
            ))
        }
    };
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !w.ca_file.is_empty() {
        for cert in certificates("webhooks.ca_file", &w.ca_file)? {
            roots.add(cert).map_err(|e| {
                invalid(
                    "webhooks.ca_file",
                    format!("{}: not a CA certificate: {e}", w.ca_file),
                )
            })?;
        }
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let mut config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|e| {
            invalid(
                "webhooks.client_key_file",
                format!("does not go with webhooks.client_cert_file: {e}"),
            )
        })?,
    };
    // What awc offers by default.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message,
    }
}

fn certificates(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(Path::new(path))
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{path}: not readable PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, format!("{path}: holds no certificate")));
    }
    Ok(certs)
}

fn private_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(Path::new(path))
        .map_err(|e| invalid(key, format!("{path}: not a readable PEM private key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_settings_name_their_key() {
        assert!(client_config(&WebhooksConfig::default()).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM at all").unwrap();
        let junk = junk.to_string_lossy().into_owned();
        let cases = [
            (("", junk.as_str(), ""), "webhooks.client_key_file"),
            (("", "", junk.as_str()), "webhooks.client_cert_file"),
            (("/no/such/ca.pem", "", ""), "webhooks.ca_file"),
            ((junk.as_str(), "", ""), "webhooks.ca_file"),
            (
                ("", junk.as_str(), junk.as_str()),
                "webhooks.client_cert_file",
            ),
        ];
        for ((ca, cert, key), expected) in cases {
            let w = WebhooksConfig {
                ca_file: ca.into(),
                client_cert_file: cert.into(),
                client_key_file: key.into(),
                ..WebhooksConfig::default()
            };
            let err = client_config(&w).expect_err("refused");
            assert_eq!(key_of(err), expected, "{ca:?} {cert:?} {key:?}");
        }
    }
}
