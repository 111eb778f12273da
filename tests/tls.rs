//! TLS on the listener (`[server] tls_cert` and `tls_key`): WSS and HTTPS with a
//! certificate made on the spot, plain WS refused on the TLS port, the certificate replaced
//! on SIGHUP while connections stay open, and a bad key refused at start.

use crate::support::{self, process};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use process::{free_port, BrokerProcess};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use support::{test_config, token, Client, TestBroker, SECRET, WAIT};

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, in PEM.
struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed(common_name: &str) -> SelfSigned {
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate parameters");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate().expect("a key pair");
    let cert = params.self_signed(&key).expect("a self-signed certificate");
    SelfSigned {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

impl SelfSigned {
    /// Writes the pair to `cert` and `key`, each replaced in one rename (as certificate
    /// tools do), so the broker never reads half a file.
    fn install(&self, cert: &Path, key: &Path) {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let staged = path.with_extension("new");
            std::fs::write(&staged, text).expect("write a PEM file");
            std::fs::rename(&staged, path).expect("move the PEM file into place");
        }
    }
}

/// An HTTP and WebSocket client that trusts `cert` alone. It offers `h2` before
/// `http/1.1`, as awc does by default: the broker must still choose HTTP/1.1.
fn trusting(cert: &CertificateDer<'static>) -> awc::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.clone())
        .expect("the certificate as a trust anchor");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(config)))
        .timeout(WAIT)
        .finish()
}

/// A WebSocket session at `wss://{addr}/ws` as `sub` (rooms `lobby`), through `client`,
/// with `system.connection.established` read.
async fn try_wss(client: &awc::Client, addr: &str, sub: &str) -> Result<Client, String> {
    let url = format!("wss://{addr}/ws?token={}", token(sub, &["lobby"]));
    let mut session = Client::try_connect(client.ws(url)).await?;
    session.recv_type("system.connection.established").await;
    Ok(session)
}

/// `from` publishes to `lobby`; `from` and `to` both receive it.
async fn round_trip(from: &mut Client, to: &mut Client, id: &str) {
    from.publish("lobby", id, json!({"id": id})).await;
    for session in [&mut *to, &mut *from] {
        let message = session.skip_until("room.message").await;
        assert_eq!(message["id"], id, "{message}");
        assert_eq!(message["payload"], json!({"id": id}));
    }
}

fn toml_string(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

#[actix_rt::test]
async fn wss_and_https_work_and_plain_ws_is_refused() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let cert = self_signed("switchboard test");
    cert.install(&cert_path, &key_path);
    let mut config = test_config();
    config.server.tls_cert = cert_path.display().to_string();
    config.server.tls_key = key_path.display().to_string();
    let banner = switchboard::server::banner(&config, "127.0.0.1:8443".parse().unwrap());
    assert!(banner.contains("wss://127.0.0.1:8443/ws"), "{banner}");
    let broker = TestBroker::start(config);
    let addr = broker.addr.to_string();
    let client = trusting(&cert.der);

    let mut alice = try_wss(&client, &addr, "alice")
        .await
        .expect("alice connects over wss");
    let mut bob = try_wss(&client, &addr, "bob")
        .await
        .expect("bob connects over wss");
    alice.join("lobby").await;
    bob.join("lobby").await;
    round_trip(&mut alice, &mut bob, "m1").await;
    round_trip(&mut bob, &mut alice, "m2").await;

    let mut health = client
        .get(format!("https://{addr}/healthz"))
        .send()
        .await
        .expect("GET /healthz over https");
    assert_eq!(health.status(), 200);
    assert_eq!(
        health.version(),
        awc::http::Version::HTTP_11,
        "ALPN http/1.1"
    );
    health.body().await.expect("the body");
    // The App knows its connection is secure: what it advertises is wss://.
    let manifest: Value = client
        .get(format!("https://{addr}/.well-known/asap/manifest.json"))
        .send()
        .await
        .expect("GET the ASAP manifest over https")
        .json()
        .await
        .expect("a JSON manifest");
    assert_eq!(
        manifest["endpoints"]["events"],
        format!("wss://{addr}/asap/ws")
    );

    // Plain WebSocket and HTTP on the TLS port: refused at once, not left hanging.
    let plain = Client::try_connect(
        awc::Client::new().ws(format!("ws://{addr}/ws?token={}", token("eve", &[]))),
    )
    .await;
    match plain {
        Ok(_) => panic!("a plain ws:// connection to the TLS port succeeded"),
        Err(err) => assert_ne!(err, "timed out", "plain ws:// was not refused"),
    }
    let plain_http = awc::Client::builder()
        .timeout(WAIT)
        .finish()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(plain_http.is_err(), "plain http:// was answered");

    // A client that does not trust the certificate does not get in.
    let stranger = trusting(&self_signed("someone else").der);
    assert!(try_wss(&stranger, &addr, "mallory").await.is_err());

    // The sessions over TLS are still fine.
    round_trip(&mut alice, &mut bob, "m3").await;
    alice.close().await;
    bob.close().await;
    broker.shutdown().await;
}

/// A config file for the binary on `port` with TLS from `cert` and `key`.
fn write_config(dir: &Path, port: u16, cert: &Path, key: &Path) -> PathBuf {
    let config = dir.join("switchboard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\nworkers = 1\ndrain_delay = \"0s\"\n\
             tls_cert = {}\ntls_key = {}\n\
             [auth]\nhs256_secret = \"{SECRET}\"\n\
             [webhooks]\noutbox_path = \"\"\n[tasks]\nsqlite_path = \"\"\n",
            toml_string(cert),
            toml_string(key)
        ),
    )
    .expect("write the config");
    config
}

/// Polls `GET /healthz` over https with `client` until 200, at most [`process::STARTUP`].
async fn wait_ready_tls(broker: &BrokerProcess, client: &awc::Client, addr: &str) {
    let deadline = Instant::now() + process::STARTUP;
    loop {
        if let Ok(response) = client.get(format!("https://{addr}/healthz")).send().await {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the broker was not ready over https within {:?}:\n{}",
            process::STARTUP,
            broker.log()
        );
        // Start-up polling only: nothing to wait on before the process listens.
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
}

fn send_sighup(broker: &BrokerProcess) {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(broker.pid().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP failed");
}

/// Retries a WSS connection through `client` (a fresh TLS handshake each time) until one
/// succeeds, at most [`WAIT`]: a handshake that succeeds proves the certificate `client`
/// trusts is the one presented.
async fn wss_once_presented(
    broker: &BrokerProcess,
    client: &awc::Client,
    addr: &str,
    sub: &str,
) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_wss(client, addr, sub).await {
            Ok(session) => return session,
            Err(err) => assert!(
                Instant::now() < deadline,
                "no handshake with the new certificate within {WAIT:?} ({err}):\n{}",
                broker.log()
            ),
        }
        // Paces the retries; the handshake above is what the test waits on.
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls the broker's log until it contains `text`, at most [`WAIT`].
async fn wait_log(broker: &BrokerProcess, text: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = broker.log();
        if let Some(line) = log.lines().find(|l| l.contains(text)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "`{text}` not logged within {WAIT:?}:\n{log}"
        );
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(unix)]
#[actix_rt::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first = self_signed("switchboard test one");
    first.install(&cert_path, &key_path);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = write_config(dir.path(), port, &cert_path, &key_path);
    let broker = BrokerProcess::spawn(&config, dir.path().join("broker.log"));
    let trusts_first = trusting(&first.der);
    wait_ready_tls(&broker, &trusts_first, &addr).await;
    assert!(broker.log().contains(&format!("wss://{addr}/ws")));

    let mut alice = try_wss(&trusts_first, &addr, "alice")
        .await
        .expect("alice connects with the first certificate");
    alice.join("lobby").await;

    let second = self_signed("switchboard test two");
    second.install(&cert_path, &key_path);
    send_sighup(&broker);
    let trusts_second = trusting(&second.der);
    let mut bob = wss_once_presented(&broker, &trusts_second, &addr, "bob").await;
    let reloaded = wait_log(&broker, "TLS certificate reloaded").await;
    assert!(reloaded.contains("CN=switchboard test two"), "{reloaded}");
    assert!(reloaded.contains("expires "), "{reloaded}");
    // New handshakes present the second certificate only.
    assert!(
        try_wss(&trusts_first, &addr, "carol").await.is_err(),
        "a new handshake still presented the first certificate"
    );

    // Alice's connection, made with the first certificate, is still open and working.
    bob.join("lobby").await;
    round_trip(&mut alice, &mut bob, "after-reload-1").await;
    round_trip(&mut bob, &mut alice, "after-reload-2").await;

    // A key that does not load: logged with its key and file, the second certificate stays.
    std::fs::write(&key_path, "-----BEGIN PRIVATE KEY-----\nbroken\n").expect("break the key");
    send_sighup(&broker);
    let refused = wait_log(&broker, "TLS certificate not reloaded").await;
    assert!(refused.contains("server.tls_key"), "{refused}");
    assert!(
        refused.contains(&key_path.display().to_string()),
        "{refused}"
    );
    let mut dave = try_wss(&trusts_second, &addr, "dave")
        .await
        .expect("the second certificate is still presented");
    dave.join("lobby").await;
    round_trip(&mut alice, &mut dave, "after-failed-reload").await;
    assert_eq!(
        bob.skip_until("room.message").await["id"],
        "after-failed-reload"
    );
}

#[test]
fn a_bad_key_file_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    self_signed("switchboard test").install(&cert_path, &key_path);
    std::fs::write(&key_path, "this is not a private key\n").expect("write a bad key");
    let config = write_config(dir.path(), free_port(), &cert_path, &key_path);
    for (args, log) in [
        (&["serve", "--config"][..], "serve.log"),
        (&["check-config"][..], "check.log"),
    ] {
        let mut broker = BrokerProcess::spawn_args(args, &config, dir.path().join(log));
        let status = broker.wait_exit();
        let output = broker.log();
        assert_eq!(status.code(), Some(2), "{args:?}: {output}");
        assert!(output.contains("server.tls_key"), "{args:?}: {output}");
        assert!(
            output.contains(&key_path.display().to_string()),
            "{args:?}: {output}"
        );
        assert!(!output.contains("panicked"), "{args:?}: {output}");
    }

    // A certificate without a key: refused by the config check, naming the missing key.
    let config = dir.path().join("half.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbind = \"127.0.0.1:{}\"\ntls_cert = {}\n[auth]\nhs256_secret = \"{SECRET}\"\n",
            free_port(),
            toml_string(&cert_path)
        ),
    )
    .expect("write the config");
    let mut broker = BrokerProcess::spawn(&config, dir.path().join("half.log"));
    let status = broker.wait_exit();
    let output = broker.log();
    assert_eq!(status.code(), Some(2), "{output}");
    assert!(output.contains("server.tls_key"), "{output}");
}
