//! TLS on a node's listeners as clients see it: the gRPC server and the admin HTTP port with
//! development certificates from `meridian certs`' function, refusing plaintext clients,
//! clients that trust another CA and (under mutual TLS) clients without a certificate; and the
//! `[tls]` rules a config must meet (explicit plaintext, private key files).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use meridian_client::ledger::answered_by_server;
use meridian_client::tls::ClientTls;
use meridian_node::certs::{write_dev_certs, DevCerts, NodeSpec};
use meridian_node::grpc::GrpcServer;
use meridian_node::tls::{ServerTls, TlsConfig, TlsError};
use meridian_node::{serve_admin_tls, AdminState, Health, Metrics};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn certs(dir: &Path) -> DevCerts {
    write_dev_certs(
        dir,
        &[
            "node".parse::<NodeSpec>().expect("a node spec"),
            "client".parse().expect("a node spec"),
        ],
    )
    .expect("certificates are written")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("a written file")
}

/// The node's server TLS, requiring client certificates from the CA when `mutual`.
fn server_tls(certs: &DevCerts, mutual: bool) -> Arc<ServerTls> {
    let node = certs.node("node").expect("node files");
    let ca = mutual.then(|| read(&certs.ca_cert_file));
    Arc::new(ServerTls::new(read(&node.cert_file), read(&node.key_file), ca).expect("usable"))
}

/// A client trusting `certs`' CA, presenting the "client" certificate when `identity`.
fn client_tls(certs: &DevCerts, identity: bool) -> ClientTls {
    let tls = ClientTls::new(read(&certs.ca_cert_file));
    if identity {
        let client = certs.node("client").expect("client files");
        tls.with_identity(read(&client.cert_file), read(&client.key_file))
    } else {
        tls
    }
}

/// Serves health over gRPC with `tls` (plaintext when `None`); returns the address.
async fn grpc_server(tls: Option<Arc<ServerTls>>, shutdown: &CancellationToken) -> SocketAddr {
    let health = Health::new();
    health.set_ready();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let serving = GrpcServer::new(&health, &[])
        .with_tls(tls)
        .serve(listener, shutdown.clone())
        .expect("the server builds");
    tokio::spawn(serving);
    address
}

/// A health check of the whole server at `url`; the error as text.
/// A frozen replica as a client meets it: its kernel accepts connections, and nothing answers
/// on them. Accepts and holds every connection until the test ends.
async fn frozen_listener() -> SocketAddr {
    let frozen = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = frozen.local_addr().expect("bound");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = frozen.accept().await {
            held.push(socket);
        }
    });
    address
}

async fn check(url: &str, tls: Option<&ClientTls>) -> Result<(), String> {
    let endpoint = meridian_client::tls::endpoint(url, tls, "test endpoint")
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|_| ())
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn grpc_over_tls_refuses_plaintext_clients_and_clients_of_another_ca() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(&dir.path().join("ours"));
    let theirs = certs(&dir.path().join("theirs"));
    let shutdown = CancellationToken::new();
    let address = grpc_server(Some(server_tls(&ours, false)), &shutdown).await;

    check(
        &format!("https://{address}"),
        Some(&client_tls(&ours, false)),
    )
    .await
    .expect("a client trusting the CA is served over TLS");
    check(&format!("http://{address}"), None)
        .await
        .expect_err("a plaintext client is refused by a TLS node");
    check(
        &format!("https://{address}"),
        Some(&client_tls(&theirs, false)),
    )
    .await
    .expect_err("a client trusting another CA refuses the node's certificate");
    shutdown.cancel();
}

#[tokio::test]
async fn a_tls_client_refuses_a_plaintext_node() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(dir.path());
    let shutdown = CancellationToken::new();
    let address = grpc_server(None, &shutdown).await;
    check(&format!("http://{address}"), None)
        .await
        .expect("the plaintext node serves plaintext");
    check(
        &format!("https://{address}"),
        Some(&client_tls(&ours, false)),
    )
    .await
    .expect_err("a TLS client does not fall back to plaintext");
    shutdown.cancel();
}

#[tokio::test]
async fn an_https_endpoint_without_a_ca_is_a_config_error() {
    let error = meridian_client::tls::endpoint("https://127.0.0.1:1", None, "sequencer endpoint")
        .expect_err("no CA, no TLS");
    assert!(error.to_string().contains("ca_file"), "{error}");
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_or_with_one_from_another_ca() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(&dir.path().join("ours"));
    let theirs = certs(&dir.path().join("theirs"));
    let shutdown = CancellationToken::new();
    let address = grpc_server(Some(server_tls(&ours, true)), &shutdown).await;
    let url = format!("https://{address}");

    check(&url, Some(&client_tls(&ours, true)))
        .await
        .expect("a client with a certificate from the CA is served");
    check(&url, Some(&client_tls(&ours, false)))
        .await
        .expect_err("mutual TLS refuses a client without a certificate");
    let foreign = client_tls(&ours, false).with_identity(
        read(&theirs.node("client").expect("files").cert_file),
        read(&theirs.node("client").expect("files").key_file),
    );
    check(&url, Some(&foreign))
        .await
        .expect_err("mutual TLS refuses a client certificate from another CA");
    shutdown.cancel();
}

fn https_client(certs: &DevCerts) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&read(&certs.ca_cert_file)).expect("a CA certificate"),
        )
        .timeout(Duration::from_secs(10))
        .build()
        .expect("an HTTP client")
}

#[tokio::test]
async fn admin_http_is_served_over_https_and_refuses_plaintext() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(dir.path());
    let listener = meridian_node::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let health = Health::new();
    health.set_ready();
    let state = AdminState {
        health,
        metrics: Arc::new(Metrics::new("meridian")),
        status: Arc::new(|| json!({"role": "test"})),
        step_down: None,
        quiesce: None,
        auth: meridian_node::AdminHttpAuth::open(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve_admin_tls(
        listener,
        state,
        Some(server_tls(&ours, false)),
        shutdown.clone(),
    ));
    let client = https_client(&ours);
    let ready = client
        .get(format!("https://{address}/readyz"))
        .send()
        .await
        .expect("https is served");
    assert_eq!(ready.status(), reqwest::StatusCode::OK);
    let plain = client.get(format!("http://{address}/readyz")).send().await;
    assert!(plain.is_err(), "plaintext HTTP is refused: {plain:?}");
    shutdown.cancel();
    task.await
        .expect("the server task ends")
        .expect("the server stops cleanly");
}

#[test]
fn a_key_file_readable_by_others_is_refused_naming_the_file() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(dir.path());
    let node = ours.node("node").expect("node files");
    let config = TlsConfig::files(
        node.cert_file.clone(),
        node.key_file.clone(),
        ours.ca_cert_file.clone(),
    );
    config.load().expect("a 0600 key loads");
    std::fs::set_permissions(&node.key_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let error = config.load().expect_err("a 0644 key is refused");
    assert!(matches!(error, TlsError::KeyPermissions { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&node.key_file.display().to_string()) && message.contains("chmod 600"),
        "{message}"
    );
}

#[test]
fn development_keys_are_written_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let ours = certs(dir.path());
    for key in [
        &ours.ca_key_file,
        &ours.node("node").expect("files").key_file,
    ] {
        let mode = std::fs::metadata(key)
            .expect("written")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
}

#[test]
fn a_config_with_neither_tls_nor_explicit_plaintext_is_refused() {
    let (key, reason) = TlsConfig::default().check().expect_err("refused");
    assert_eq!(key, "tls");
    assert!(
        reason.contains("cert_file") && reason.contains("plaintext = true"),
        "names both ways out: {reason}"
    );
    TlsConfig::plaintext()
        .check()
        .expect("explicit plaintext is allowed");
    let mixed = TlsConfig {
        plaintext: true,
        ..TlsConfig::files("a.crt".into(), "a.key".into(), "ca.crt".into())
    };
    mixed
        .check()
        .expect_err("plaintext with certificate files is ambiguous");
    let https = ["https://127.0.0.1:1".to_owned()];
    TlsConfig::plaintext()
        .check_endpoints("sequencer_endpoints", &https)
        .expect_err("an https endpoint with no ca_file");
    let http = ["http://127.0.0.1:1".to_owned()];
    TlsConfig::files("a.crt".into(), "a.key".into(), "ca.crt".into())
        .check_endpoints("sequencer_endpoints", &http)
        .expect_err("a plaintext endpoint on a TLS node");
}

/// A frozen replica (SIGSTOP) still completes TCP handshakes in its kernel but never answers
/// the TLS handshake. A ledger client whose retry lands on it must give up on it within about
/// a second and try the other replica: with the general 10 s handshake bound, that was ten of
/// the eleven seconds of a participant freeze's RTO.
#[tokio::test]
async fn a_ledger_client_gives_up_a_replica_that_never_answers_the_tls_handshake_within_a_second() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = certs(dir.path());
    let shutdown = CancellationToken::new();
    let live = grpc_server(Some(server_tls(&certs, false)), &shutdown).await;
    let frozen_address = frozen_listener().await;
    let endpoints = [
        format!("https://localhost:{}", frozen_address.port()),
        format!("https://localhost:{}", live.port()),
    ];
    let client = meridian_client::LedgerClient::with_tls(
        &endpoints,
        meridian_core::UserId::new("app").expect("user id"),
        Some(&client_tls(&certs, false)),
    )
    .expect("a client");
    let started = std::time::Instant::now();
    let answer = client
        .allocate_party(&meridian_core::PartyId::new("alice").expect("party id"))
        .await;
    let elapsed = started.elapsed();
    // The live server serves only health: its UNIMPLEMENTED is the proof the call reached it.
    let error = answer.expect_err("the live server does not serve the Ledger API");
    assert!(
        error.to_string().to_lowercase().contains("unimplemented"),
        "{error}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "left the frozen replica only after {elapsed:?}"
    );
    shutdown.cancel();
}

/// The ledger client's rotation tells a server's refusal (a passive replica's UNAVAILABLE: the
/// server is alive) from a connection that failed (a frozen or dead replica) by the response
/// headers a server's status carries: this is what `answered_by_server` relies on.
#[tokio::test]
async fn a_servers_status_is_told_from_a_failed_connection() {
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = certs(dir.path());
    let shutdown = CancellationToken::new();
    let tls = client_tls(&certs, false);
    let live = grpc_server(Some(server_tls(&certs, false)), &shutdown).await;
    let channel = meridian_client::tls::endpoint(
        &format!("https://localhost:{}", live.port()),
        Some(&tls),
        "test endpoint",
    )
    .expect("endpoint")
    .connect_lazy();
    let refused = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "not.served".into(),
        })
        .await
        .expect_err("an unknown service is NOT_FOUND");
    assert!(answered_by_server(&refused), "{refused:?}");

    let frozen_port = frozen_listener().await.port();
    let channel = meridian_client::tls::endpoint_within(
        &format!("https://localhost:{frozen_port}"),
        Some(&tls),
        "test endpoint",
        Duration::from_millis(300),
    )
    .expect("endpoint")
    .connect_lazy();
    let failed = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("the handshake never finishes");
    assert!(!answered_by_server(&failed), "{failed:?}");
    shutdown.cancel();
}
