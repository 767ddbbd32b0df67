//! The admin HTTP server as probes, operators and Prometheus see it: real requests to a server
//! on an ephemeral port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meridian_node::admin::{OPENMETRICS_CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE};
use meridian_node::{bind, serve_admin, AdminHttpAuth, AdminState, Health, Metrics};
use prometheus_client::metrics::counter::Counter;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Server {
    base: String,
    health: Health,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    async fn start(metrics: Metrics) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind admin port");
        let addr = listener.local_addr().expect("listener address");
        let health = Health::new();
        let state = AdminState {
            health: health.clone(),
            metrics: Arc::new(metrics),
            status: Arc::new(|| json!({"role": "sequencer", "epoch": 7, "readiness": "bogus"})),
            step_down: None,
            quiesce: None,
            auth: AdminHttpAuth::open(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve_admin(listener, state, shutdown.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build HTTP client");
        Server {
            base: format!("http://{addr}"),
            health,
            shutdown,
            task,
            client,
        }
    }

    /// A server with no metrics registered whose node reports ready.
    async fn start_ready() -> Self {
        let server = Server::start(Metrics::new("meridian")).await;
        server.health.set_ready();
        server
    }

    /// The answer to `method path`, whatever its status.
    async fn request(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, format!("{}{path}", self.base))
            .send()
            .await
            .expect("admin request")
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self.request(reqwest::Method::GET, path).await;
        let status = response.status();
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].clone();
        assert_eq!(content_type, "application/json", "{path}");
        (status, response.json().await.expect("JSON body"))
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("admin server stops after cancel")
            .expect("admin server task did not panic")
            .expect("admin server returns Ok");
    }
}

#[tokio::test]
async fn readyz_follows_health() {
    let server = Server::start(Metrics::new("meridian")).await;

    let not_ready = |reason: &str| {
        let body = json!({"status": "not_ready", "reason": reason});
        (StatusCode::SERVICE_UNAVAILABLE, body)
    };
    let ready = (StatusCode::OK, json!({"status": "ready"}));
    let alive = (StatusCode::OK, json!({"status": "alive"}));

    assert_eq!(server.get("/readyz").await, not_ready("starting"));
    server.health.set_ready();
    assert_eq!(server.get("/readyz").await, ready);
    server.health.set_not_ready("passive replica");
    assert_eq!(server.get("/readyz").await, not_ready("passive replica"));
    // Not ready is still alive: the process must not be restarted for it.
    assert_eq!(server.get("/livez").await, alive);

    server.stop().await;
}

#[tokio::test]
async fn livez_fails_on_fatal_failure() {
    let server = Server::start_ready().await;
    server
        .health
        .set_failed("database schema is newer than this binary");

    let failed = json!({
        "status": "failed",
        "reason": "database schema is newer than this binary",
    });
    let failed = (StatusCode::SERVICE_UNAVAILABLE, failed);
    assert_eq!(server.get("/livez").await, failed);
    assert_eq!(server.get("/readyz").await, failed);

    server.stop().await;
}

#[tokio::test]
async fn status_merges_source_keys_with_readiness() {
    let server = Server::start_ready().await;

    let (status, body) = server.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "sequencer");
    assert_eq!(body["epoch"], 7);
    // The node's readiness overrides a source key of the same name.
    assert_eq!(body["readiness"], json!({"status": "ready"}));
    assert!(body["readiness_since_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert!(body["readiness_age_ms"].is_u64(), "{body}");

    server.stop().await;
}

#[tokio::test]
async fn metrics_expose_registered_counter() {
    let metrics = Metrics::new("meridian");
    let counter: Counter = Counter::default();
    metrics
        .register("test_events", "Events seen by the test", counter.clone())
        .unwrap();
    counter.inc_by(5);
    let server = Server::start(metrics).await;

    // Prometheus asks for OpenMetrics and gets it.
    let response = server
        .client
        .get(format!("{}/metrics", server.base))
        .header(
            reqwest::header::ACCEPT,
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .expect("admin request");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        OPENMETRICS_CONTENT_TYPE
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE meridian_test_events counter"),
        "{text}"
    );
    assert!(text.contains("meridian_test_events_total 5"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");

    // Anyone else (curl, promtool) gets the text format, where a counter's family is named
    // like its sample.
    let response = server.request(reqwest::Method::GET, "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        PROMETHEUS_TEXT_CONTENT_TYPE
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("# TYPE meridian_test_events_total counter"),
        "{text}"
    );
    assert!(text.contains("meridian_test_events_total 5"), "{text}");
    assert!(!text.contains("# EOF"), "{text}");

    server.stop().await;
}

#[tokio::test]
async fn unknown_path_and_wrong_method_are_json() {
    let server = Server::start(Metrics::new("meridian")).await;

    let not_found = json!({"error": "not found", "path": "/nope"});
    assert_eq!(
        server.get("/nope").await,
        (StatusCode::NOT_FOUND, not_found)
    );

    let response = server.request(reqwest::Method::POST, "/readyz").await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = response.headers()[reqwest::header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET"), "{allow}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"error": "method not allowed", "method": "POST", "path": "/readyz"})
    );

    server.stop().await;
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = bind(addr).await.unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot bind admin HTTP on {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let server = Server::start(Metrics::new("meridian")).await;
    // Leaves a pooled keep-alive connection open; graceful shutdown must not wait for it.
    let (status, _) = server.get("/livez").await;
    assert_eq!(status, StatusCode::OK);
    let started = std::time::Instant::now();
    let base = server.base.clone();
    let client = server.client.clone();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(client.get(format!("{base}/livez")).send().await.is_err());
}
