//! TLS on the gRPC port: a round trip with a test CA through the typed client and the CLI, a
//! certificate rotated in place and picked up without a restart, and bad files refused at
//! start-up. Certificates are made by the `openssl` command, as an operator would.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dakota::api;
use dakota_client::session;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::common::{self, PATIENCE, final_article, request};

/// A folder of test certificates, removed afterwards.
struct Pki(PathBuf);

impl Pki {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("dakota-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .current_dir(&self.0)
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A CA `name.ca.pem` / `name.ca.key`.
    fn ca(&self, name: &str) {
        let (pem, key) = (format!("{name}.ca.pem"), format!("{name}.ca.key"));
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-subj",
            &format!("/CN={name} test CA"),
            "-days",
            "2",
        ]);
    }

    /// A certificate for 127.0.0.1 and localhost signed by CA `ca`, written to `server.pem`
    /// and `server.key` (replacing them, as a rotation does).
    fn server_cert(&self, ca: &str) {
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "next.key",
            "-out",
            "next.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.path("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "next.csr",
            "-CA",
            &format!("{ca}.ca.pem"),
            "-CAkey",
            &format!("{ca}.ca.key"),
            "-CAcreateserial",
            "-out",
            "next.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        // Renamed into place: a reader never sees half a file.
        std::fs::rename(self.path("next.key"), self.path("server.key")).unwrap();
        std::fs::rename(self.path("next.pem"), self.path("server.pem")).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tls_config(pki: &Pki) -> dakota_server::config::Config {
    let mut config = common::config();
    config.tls_cert = Some(pki.path("server.pem"));
    config.tls_key = Some(pki.path("server.key"));
    config.tls_reload_check = Duration::from_millis(100);
    config
}

/// A health check over TLS trusting `ca`: Ok once SERVING.
async fn serving(url: &str, ca: &[u8]) -> Result<(), String> {
    let channel = session::connect_with(url, Duration::from_secs(5), Some(ca))
        .await
        .map_err(|e| e.to_string())?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .status();
    (status == ServingStatus::Serving)
        .then_some(())
        .ok_or(format!("{status:?}"))
}

fn dakota(args: &[&str]) -> std::process::Output {
    Command::new(common::binary("dakota"))
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_tls_round_trip_with_a_test_ca_through_the_client_and_the_cli() {
    let pki = Pki::new();
    pki.ca("first");
    pki.server_cert("first");
    let server = dakota_server::app::Server::start(tls_config(&pki))
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.grpc_addr.port());
    let ca = pki.read("first.ca.pem");

    // A whole job over TLS with the project's typed client.
    let started = Instant::now();
    while serving(&url, &ca).await.is_err() {
        assert!(started.elapsed() < PATIENCE, "the TLS server answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let channel = session::connect_with(&url, Duration::from_secs(5), Some(&ca))
        .await
        .unwrap();
    let mut client = api::content_service_client::ContentServiceClient::new(channel);
    let mut stream = client
        .generate(request("Pension risk transfer"))
        .await
        .unwrap()
        .into_inner();
    final_article(&common::collect(&mut stream).await);

    // A plaintext client gets nowhere on the TLS port.
    let plain = format!("http://127.0.0.1:{}", server.grpc_addr.port());
    let refused = async {
        let channel = session::connect(&plain, Duration::from_secs(2))
            .await
            .ok()?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .ok()
    };
    assert!(
        refused.await.is_none(),
        "plaintext is refused on a TLS port"
    );

    // The CLI, with the CA given, and without it (the system roots do not know a test CA).
    let ca_path = pki.path("first.ca.pem");
    let ca_path = ca_path.to_str().unwrap();
    let (url2, ca2) = (url.clone(), ca_path.to_string());
    let ok = tokio::task::spawn_blocking(move || {
        dakota(&["--server", &url2, "--ca-cert", &ca2, "health"])
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let url3 = url.clone();
    let untrusted = tokio::task::spawn_blocking(move || dakota(&["--server", &url3, "health"]))
        .await
        .unwrap();
    assert!(!untrusted.status.success());
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "says why: {stderr}");
    let plaintext_ca = dakota(&["--server", &plain, "--ca-cert", ca_path, "health"]);
    assert!(
        String::from_utf8_lossy(&plaintext_ca.stderr).contains("use https://"),
        "{}",
        String::from_utf8_lossy(&plaintext_ca.stderr)
    );
    server.shutdown();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new();
    pki.ca("old");
    pki.ca("new");
    pki.server_cert("old");
    let server = dakota_server::app::Server::start(tls_config(&pki))
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.grpc_addr.port());
    let (old, new) = (pki.read("old.ca.pem"), pki.read("new.ca.pem"));
    let started = Instant::now();
    while serving(&url, &old).await.is_err() {
        assert!(started.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(serving(&url, &new).await.is_err(), "not yet the new CA's");

    // cert-manager writes the renewed pair in place.
    pki.server_cert("new");
    let started = Instant::now();
    while serving(&url, &new).await.is_err() {
        assert!(
            started.elapsed() < PATIENCE,
            "the new certificate is picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving(&url, &old).await.is_err(), "the old one is gone");

    // A broken rotation (a key that is not the certificate's) keeps the working pair.
    std::fs::copy(pki.path("new.ca.key"), pki.path("server.key")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    serving(&url, &new).await.unwrap();
    server.shutdown();
}

#[tokio::test]
async fn tls_files_that_do_not_load_stop_the_server_at_start_up() {
    let pki = Pki::new();
    pki.ca("only");
    pki.server_cert("only");
    let mut config = tls_config(&pki);
    config.tls_key = Some(pki.path("only.ca.key"));
    let error = dakota_server::app::Server::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("--tls-key"), "{error}");

    let mut config = tls_config(&pki);
    config.tls_cert = Some(Path::new("/nonexistent/cert.pem").to_path_buf());
    let error = dakota_server::app::Server::start(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("--tls-cert /nonexistent/cert.pem"),
        "{error}"
    );
}

/// A TLS server with a certificate of a test CA, SERVING: the server, its URL and the CA.
async fn serving_tls_server(pki: &Pki) -> (dakota_server::app::Server, String, Vec<u8>) {
    pki.ca("test");
    pki.server_cert("test");
    let server = dakota_server::app::Server::start(tls_config(pki))
        .await
        .unwrap();
    let url = format!("https://127.0.0.1:{}", server.grpc_addr.port());
    let ca = pki.read("test.ca.pem");
    let started = Instant::now();
    while serving(&url, &ca).await.is_err() {
        assert!(started.elapsed() < PATIENCE, "the TLS server answers");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (server, url, ca)
}

/// `count` TCP connections to `addr` from `source` that never send a byte.
async fn idle_connections(
    addr: std::net::SocketAddr,
    source: std::net::Ipv4Addr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        idle.push(socket.connect(addr).await.unwrap());
    }
    idle
}

#[tokio::test]
async fn idle_connections_do_not_hold_up_a_tls_health_check() {
    let pki = Pki::new();
    let (server, url, ca) = serving_tls_server(&pki).await;
    // `dakota health` gives a call 5 s. The idle sockets come first from the health check's
    // own address (as clients behind one NAT or proxy share it), then from another client.
    for source in [[127, 0, 0, 1], [127, 0, 0, 2]] {
        let idle = idle_connections(server.grpc_addr, source.into(), 300).await;
        let checked = tokio::time::timeout(Duration::from_secs(5), serving(&url, &ca)).await;
        assert!(
            matches!(checked, Ok(Ok(()))),
            "a health check within 5 s while 300 idle sockets from {source:?} are open: {checked:?}"
        );
        drop(idle);
    }
    server.shutdown();
}

#[tokio::test]
async fn a_tls_connection_that_sends_nothing_is_closed_within_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let (server, _, _) = serving_tls_server(&pki).await;
    let mut silent = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    // A client that has begun its ClientHello (the record type byte) keeps the full handshake
    // time: only silence is cut short.
    let mut started = tokio::net::TcpStream::connect(server.grpc_addr)
        .await
        .unwrap();
    started.write_all(&[0x16]).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(6), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a silent connection is closed by the server within a few seconds: {read:?}"
    );
    let still_open =
        tokio::time::timeout(Duration::from_millis(100), started.read(&mut byte)).await;
    assert!(
        still_open.is_err(),
        "a started handshake is not cut at the first-byte timeout: {still_open:?}"
    );
    server.shutdown();
}
