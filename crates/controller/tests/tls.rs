//! The API on a socket, as `meridian controller` serves it ([`meridian_controller::http::serve`]):
//! with a certificate it answers `https://` to a client that trusts the CA — commands with the
//! admin token included — and nothing else: a plaintext `http://` request to the same port gets
//! no answer, and a client that does not trust the CA is refused by its own certificate check.
//! Without a certificate (explicit plaintext) it serves `http://` and warns at start-up, which
//! the TLS server never does.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_controller::client::{ClientError, ControllerClient};
use meridian_controller::http::router;
use meridian_controller::plan::PlanState;
use meridian_node::admin_token::AdminToken;
use support::{sample_status, serve_tls, start, ADMIN_TOKEN};

/// The warning `serve` logs when it serves plaintext.
const PLAINTEXT_WARNING: &str = "TLS is OFF";

fn app(scripted: &support::Scripted) -> axum::Router {
    router(
        scripted.handle.clone(),
        AdminToken::new(Some(ADMIN_TOKEN), "from the test"),
    )
}

/// Everything logged on this thread while the guard lives, as text.
fn capture_log() -> (Arc<Mutex<Vec<u8>>>, tracing::subscriber::DefaultGuard) {
    #[derive(Clone)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Sink(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || sink.clone())
        .finish();
    (buffer, tracing::subscriber::set_default(subscriber))
}

fn text(buffer: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(
        &buffer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

// Current-thread runtime: the server's tasks run on this thread and log into its subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_api_answers_https_with_the_ca_and_refuses_plaintext_http() {
    let (log, _guard) = capture_log();
    let scripted = start(sample_status(true), 20);
    let server = serve_tls(app(&scripted)).await;
    assert!(server.url.starts_with("https://"), "{}", server.url);

    // Over TLS with the CA: reads and a command with the admin token.
    let client =
        ControllerClient::new(server.http.clone(), server.url.clone()).with_token(ADMIN_TOKEN);
    assert_eq!(
        client
            .status()
            .await
            .expect("status over https")
            .regions
            .len(),
        2
    );
    let plan = client
        .propose("region-2".into(), Vec::new(), None)
        .await
        .expect("a command over https");
    assert_eq!(plan.state, PlanState::AwaitingApproval);

    // Plaintext to the same port: no HTTP answer at all (the TLS handshake fails), so the
    // admin token is never accepted in cleartext.
    let plaintext_url = server.url.replacen("https://", "http://", 1);
    let plaintext = ControllerClient::new(
        reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
        plaintext_url.clone(),
    )
    .with_token(ADMIN_TOKEN);
    for refusal in [
        plaintext.status().await.expect_err("plaintext status"),
        plaintext
            .reject(&plan.id, None)
            .await
            .expect_err("plaintext command"),
    ] {
        assert!(
            matches!(refusal, ClientError::Transport { .. }),
            "no HTTP answer to plaintext: {refusal}"
        );
        assert_eq!(refusal.http_status(), None, "{refusal}");
    }
    // The plan is still waiting: the plaintext reject changed nothing.
    let status = client.status().await.expect("status");
    let still = status
        .plans
        .iter()
        .find(|p| p.id == plan.id)
        .expect("the plan");
    assert_eq!(still.state, PlanState::AwaitingApproval);

    // A client that does not trust the lab CA refuses the certificate.
    let untrusting = ControllerClient::new(
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .build()
            .expect("client"),
        server.url.clone(),
    );
    let refusal = untrusting.status().await.expect_err("unknown CA");
    assert!(
        matches!(refusal, ClientError::Transport { .. }),
        "{refusal}"
    );

    let log = text(&log);
    assert!(
        !log.contains(PLAINTEXT_WARNING),
        "no plaintext warning with TLS: {log}"
    );
    server.stop.cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn plaintext_serving_warns_at_start_up() {
    let (log, _guard) = capture_log();
    let scripted = start(sample_status(true), 20);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("bound"));
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(meridian_controller::http::serve(
        listener,
        app(&scripted),
        None,
        "controller-plain".to_owned(),
        stop.clone(),
    ));
    let client = ControllerClient::new(reqwest::Client::new(), url);
    assert_eq!(
        client
            .status()
            .await
            .expect("status over http")
            .regions
            .len(),
        2
    );

    let log = text(&log);
    let warning = log
        .lines()
        .find(|line| line.contains(PLAINTEXT_WARNING))
        .unwrap_or_else(|| panic!("a start-up warning: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains("controller-plain"),
        "names the replica: {warning}"
    );
    assert!(
        warning.contains("admin token"),
        "says what is exposed: {warning}"
    );

    stop.cancel();
    served
        .await
        .expect("the server task")
        .expect("stops cleanly");
}
