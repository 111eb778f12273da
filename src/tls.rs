//! TLS on the listener (`[server] tls_cert` and `tls_key`), with a certificate that can be
//! replaced while the broker runs.
//!
//! [`TlsCertificate`] holds the certificate chain and private key behind an
//! [`ArcSwap`](arc_swap::ArcSwap) and hands them to rustls for every handshake
//! ([`ResolvesServerCert`]). [`TlsCertificate::reload`] reads the files again and swaps the
//! new pair in: handshakes from then on present it, connections already established keep
//! the session they have. The TLS session cache is emptied with each reload, so a client
//! cannot resume a session of the old certificate: every new connection after a reload is
//! authenticated with the new one. `switchboard serve` reloads on SIGHUP.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use sha2::Digest;

use crate::config::{ConfigError, ServerConfig};

/// The listener's certificate and key, read from PEM files and reloadable.
#[derive(Debug)]
pub struct TlsCertificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    sessions: Arc<Sessions>,
}

/// Sessions clients may resume, as many as rustls keeps by default; a reload starts an
/// empty cache.
const SESSION_CACHE_SIZE: usize = 256;

/// The TLS session cache, replaced (emptied) on every certificate reload.
#[derive(Debug)]
struct Sessions(ArcSwap<ServerSessionMemoryCache>);

impl Sessions {
    fn new() -> Sessions {
        Sessions(ArcSwap::new(ServerSessionMemoryCache::new(
            SESSION_CACHE_SIZE,
        )))
    }

    fn clear(&self) {
        self.0
            .store(ServerSessionMemoryCache::new(SESSION_CACHE_SIZE));
    }
}

impl StoresServerSessions for Sessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// What a log line says about a certificate: its subject's common name, when it expires
/// and its SHA-256 fingerprint (as `openssl x509 -noout -fingerprint -sha256` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's common name (CN), when it has one.
    pub subject: Option<String>,
    /// `notAfter`, as `YYYY-MM-DD HH:MM:SS UTC`, when it could be read.
    pub expires: Option<String>,
    /// SHA-256 of the end-entity certificate (DER), upper-case hex pairs joined by `:`.
    pub sha256: String,
}

impl fmt::Display for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "subject CN={}, expires {}, SHA-256 {}",
            self.subject.as_deref().unwrap_or("(none)"),
            self.expires.as_deref().unwrap_or("(unknown)"),
            self.sha256
        )
    }
}

impl TlsCertificate {
    /// The certificate `[server] tls_cert` and `tls_key` name; `None` when both are empty
    /// (plain HTTP). Errors name the key and the file.
    pub fn from_config(server: &ServerConfig) -> Result<Option<Arc<TlsCertificate>>, ConfigError> {
        match (server.tls_cert.is_empty(), server.tls_key.is_empty()) {
            (true, true) => Ok(None),
            (false, false) => TlsCertificate::load(&server.tls_cert, &server.tls_key).map(Some),
            (false, true) => Err(invalid(
                "server.tls_key",
                "is needed with server.tls_cert (both or neither)".into(),
            )),
            (true, false) => Err(invalid(
                "server.tls_cert",
                "is needed with server.tls_key (both or neither)".into(),
            )),
        }
    }

    /// Reads the certificate chain (`cert_path`, the server's certificate first) and its
    /// private key (`key_path`: PKCS#8, PKCS#1 or SEC1), both PEM. The crypto provider is
    /// the process default when one is installed, else ring.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Arc<TlsCertificate>, ConfigError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let certified = read_certified_key(&cert_path, &key_path, &provider)?;
        Ok(Arc::new(TlsCertificate {
            cert_path,
            key_path,
            provider,
            current: ArcSwap::from_pointee(certified),
            sessions: Arc::new(Sessions::new()),
        }))
    }

    /// Reads the files again and, if they hold a usable certificate and key, presents them
    /// from the next handshake on; connections already established are not touched.
    /// Sessions cached for resumption are forgotten, so new connections cannot skip the
    /// new certificate. On failure the certificate in use stays, an error naming the file
    /// is logged and returned.
    pub fn reload(&self) -> Result<CertificateInfo, ConfigError> {
        match read_certified_key(&self.cert_path, &self.key_path, &self.provider) {
            Ok(certified) => {
                let info = describe(&certified);
                self.current.store(Arc::new(certified));
                self.sessions.clear();
                log::info!(
                    "TLS certificate reloaded from {}: {info}",
                    self.cert_path.display()
                );
                Ok(info)
            }
            Err(err) => {
                log::error!("TLS certificate not reloaded, the one in use stays: {err}");
                Err(err)
            }
        }
    }

    /// The certificate presented now.
    pub fn info(&self) -> CertificateInfo {
        describe(&self.current.load())
    }

    /// The certificate file (`server.tls_cert`).
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The key file (`server.tls_key`).
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// A rustls server configuration that takes its certificate from `self` at every
    /// handshake: TLS 1.2 and 1.3, no client certificates, ALPN `http/1.1` only (WebSocket
    /// upgrades are HTTP/1.1), session resumption from a cache that [`Self::reload`]
    /// empties.
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, rustls::Error> {
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.session_storage = self.sessions.clone();
        Ok(config)
    }
}

impl ResolvesServerCert for TlsCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message,
    }
}

fn read_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, ConfigError> {
    const CERT: &str = "server.tls_cert";
    const KEY: &str = "server.tls_key";
    let (cert_file, key_file) = (cert_path.display(), key_path.display());
    let pem = std::fs::read(cert_path)
        .map_err(|e| invalid(CERT, format!("cannot read {cert_file}: {e}")))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(CERT, format!("{cert_file}: not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(
            CERT,
            format!("{cert_file}: holds no certificate (-----BEGIN CERTIFICATE-----)"),
        ));
    }
    let pem = std::fs::read(key_path)
        .map_err(|e| invalid(KEY, format!("cannot read {key_file}: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        invalid(
            KEY,
            format!("{key_file}: no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| invalid(KEY, format!("{key_file}: not a usable private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // Unknown: the key type cannot say; the handshake will.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(invalid(
                KEY,
                format!("{key_file} is not the key of the certificate in {cert_file}"),
            ))
        }
        Err(e) => Err(invalid(
            CERT,
            format!("{cert_file}: not a usable certificate: {e}"),
        )),
    }
}

fn describe(certified: &CertifiedKey) -> CertificateInfo {
    let der = certified.cert.first().map_or(&[][..], |c| c.as_ref());
    let (subject, expires) = subject_and_expiry(der).unwrap_or((None, None));
    let sha256 = sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    CertificateInfo {
        subject,
        expires,
        sha256,
    }
}

/// One DER element at the start of `input`: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's CN and `notAfter` of an X.509 certificate (RFC 5280 §4.1): enough of it
/// walked for a log line, nothing verified (rustls and the client do that).
fn subject_and_expiry(cert: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, mut rest) = der(tbs)?;
    if tag == 0xa0 {
        // [0] version; the serial number follows.
        (_, _, rest) = der(rest)?;
    }
    let (_, _, rest) = der(rest)?; // signature algorithm
    let (_, _, rest) = der(rest)?; // issuer
    let (_, validity, rest) = der(rest)?;
    let (_, subject, _) = der(rest)?;
    let (_, _, not_after) = der(validity)?; // after notBefore
    let expires = der(not_after).and_then(|(tag, time, _)| x509_time(tag, time));
    Some((common_name(subject), expires))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// `YYYY-MM-DD HH:MM:SS UTC`.
fn x509_time(tag: u8, time: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(time).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let full = match (tag, digits.len()) {
        // RFC 5280: UTCTime years 50-99 are 19xx, 00-49 are 20xx.
        (0x17, 12) => format!("{}{digits}", if &digits[..2] >= "50" { "19" } else { "20" }),
        (0x18, 14) => digits.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

/// The first commonName (2.5.4.3) of a Name (a SEQUENCE of SETs of type-value pairs).
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (_, mut set, rest) = der(name)?;
        name = rest;
        while !set.is_empty() {
            let (_, pair, rest) = der(set)?;
            set = rest;
            let (tag, oid, value) = der(pair)?;
            if tag == 0x06 && oid == CN {
                let (_, text, _) = der(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, params: rcgen::CertificateParams) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn params(cn: &str, not_after: (i32, u8, u8)) -> rcgen::CertificateParams {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        params
    }

    fn key_of(err: ConfigError) -> String {
        match err {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_log_line_names_subject_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        // UTCTime (before 2050) and GeneralizedTime.
        for (cn, date, expected) in [
            ("one", (2031, 6, 2), "2031-06-02 00:00:00 UTC"),
            ("two", (2100, 1, 31), "2100-01-31 00:00:00 UTC"),
        ] {
            let (cert, key) = write_pair(dir.path(), cn, params(cn, date));
            let info = TlsCertificate::load(&cert, &key).unwrap().info();
            assert_eq!(info.subject.as_deref(), Some(cn));
            assert_eq!(info.expires.as_deref(), Some(expected));
            assert_eq!(info.sha256.len(), 32 * 3 - 1, "{info}");
        }
    }

    #[test]
    fn reload_swaps_and_a_failed_reload_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "live", params("first", (2040, 1, 1)));
        let tls = TlsCertificate::load(&cert, &key).unwrap();
        let (cert2, key2) = write_pair(dir.path(), "next", params("second", (2041, 1, 1)));
        std::fs::rename(&cert2, &cert).unwrap();
        std::fs::rename(&key2, &key).unwrap();
        assert_eq!(tls.reload().unwrap().subject.as_deref(), Some("second"));
        assert_eq!(tls.info().subject.as_deref(), Some("second"));
        std::fs::write(&key, "not a key").unwrap();
        assert_eq!(key_of(tls.reload().unwrap_err()), "server.tls_key");
        assert_eq!(tls.info().subject.as_deref(), Some("second"));
    }

    #[test]
    fn bad_files_name_their_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", params("a", (2040, 1, 1)));
        let (_, other_key) = write_pair(dir.path(), "b", params("b", (2040, 1, 1)));
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not PEM at all").unwrap();
        let missing = dir.path().join("missing.pem");
        let cases = [
            (&missing, &key, "server.tls_cert", &missing),
            (&junk, &key, "server.tls_cert", &junk),
            (&cert, &missing, "server.tls_key", &missing),
            (&cert, &junk, "server.tls_key", &junk),
            (&cert, &other_key, "server.tls_key", &other_key),
        ];
        for (cert, key, expected, file) in cases {
            let err = TlsCertificate::load(cert, key).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
            assert_eq!(key_of(err), expected, "{text}");
        }
        let half = ServerConfig {
            tls_cert: cert.display().to_string(),
            ..ServerConfig::default()
        };
        assert_eq!(
            key_of(TlsCertificate::from_config(&half).unwrap_err()),
            "server.tls_key"
        );
        assert!(TlsCertificate::from_config(&ServerConfig::default())
            .unwrap()
            .is_none());
    }
}
