//! The admin HTTP guard as a caller sees it: with an admin token configured, a mutating route
//! (`POST /admin/step-down`) answers 401 with `WWW-Authenticate: Bearer` and a JSON reason
//! unless the request carries `Authorization: Bearer <token>`, and the step-down hook is not
//! called; `/livez` and `/readyz` stay open; `/status` and `/metrics` follow `[admin_http]`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_node::{
    bind, serve_admin, AdminHttpAuth, AdminHttpConfig, AdminState, AdminToken, Health, Metrics,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "0123456789abcdef-admin-token";

struct Server {
    base: String,
    client: reqwest::Client,
    step_downs: Arc<AtomicUsize>,
    quiesces: Arc<AtomicUsize>,
    shutdown: CancellationToken,
}

impl Server {
    async fn start(token: Option<&str>, config: AdminHttpConfig) -> Self {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind admin port");
        let addr = listener.local_addr().expect("listener address");
        let health = Health::new();
        health.set_ready();
        let step_downs = Arc::new(AtomicUsize::new(0));
        let counted = step_downs.clone();
        let quiesces = Arc::new(AtomicUsize::new(0));
        let quiesced = quiesces.clone();
        let state = AdminState {
            health,
            metrics: Arc::new(Metrics::new("meridian")),
            status: Arc::new(|| json!({"role": "participant"})),
            step_down: Some(Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                true
            })),
            quiesce: Some(Arc::new(move || {
                quiesced.fetch_add(1, Ordering::SeqCst);
                Some(2)
            })),
            auth: AdminHttpAuth {
                token: AdminToken::new(token, "from the test config"),
                config,
            },
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_admin(listener, state, shutdown.clone()));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build HTTP client");
        Server {
            base: format!("http://{addr}"),
            client,
            step_downs,
            quiesces,
            shutdown,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        request.send().await.expect("admin request")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The refusals every guarded route gives: (Authorization header, what the error says).
fn refusals() -> [(Option<&'static str>, &'static str); 5] {
    [
        (None, "no `Authorization` header"),
        (Some("Bearer wrong-token"), "does not match"),
        (Some("Basic Zm9vOmJhcg=="), "not `Bearer <token>`"),
        (Some(TOKEN), "not `Bearer <token>`"),
        (Some("Bearer "), "not `Bearer <token>`"),
    ]
}

async fn assert_refused(response: reqwest::Response, expected: &str, case: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
    assert_eq!(
        response.headers()[reqwest::header::WWW_AUTHENTICATE],
        "Bearer",
        "{case}"
    );
    let body: Value = response.json().await.expect("JSON refusal");
    let error = body["error"].as_str().expect("an error string");
    assert!(error.contains(expected), "{case}: {error}");
    assert!(
        !error.contains(TOKEN),
        "{case}: the refusal names the token"
    );
}

#[tokio::test]
async fn quiesce_needs_the_token_and_answers_the_calls_still_running() {
    let server = Server::start(Some(TOKEN), AdminHttpConfig::default()).await;
    for (authorization, expected) in refusals() {
        let response = server
            .call(reqwest::Method::POST, "/admin/quiesce", authorization)
            .await;
        assert_refused(response, expected, &format!("{authorization:?}")).await;
    }
    assert_eq!(
        server.quiesces.load(Ordering::SeqCst),
        0,
        "nothing quiesced"
    );
    let bearer = format!("Bearer {TOKEN}");
    let response = server
        .call(reqwest::Method::POST, "/admin/quiesce", Some(&bearer))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("JSON answer");
    assert_eq!(body["running"], 2);
    assert_eq!(server.quiesces.load(Ordering::SeqCst), 1);
    let response = server
        .call(reqwest::Method::GET, "/admin/quiesce", Some(&bearer))
        .await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn step_down_needs_the_token_and_a_refusal_changes_nothing() {
    let server = Server::start(Some(TOKEN), AdminHttpConfig::default()).await;
    for (authorization, expected) in refusals() {
        let response = server
            .call(reqwest::Method::POST, "/admin/step-down", authorization)
            .await;
        assert_refused(response, expected, &format!("{authorization:?}")).await;
    }
    assert_eq!(
        server.step_downs.load(Ordering::SeqCst),
        0,
        "nothing stepped down"
    );

    let response = server
        .call(
            reqwest::Method::POST,
            "/admin/step-down",
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(server.step_downs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn probes_status_and_metrics_are_open_by_default() {
    let server = Server::start(Some(TOKEN), AdminHttpConfig::default()).await;
    for path in ["/livez", "/readyz", "/status", "/metrics"] {
        let response = server.call(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        // A wrong token on an open route is not a reason to refuse it.
        let response = server
            .call(reqwest::Method::GET, path, Some("Bearer wrong"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn status_and_metrics_need_the_token_when_protected() {
    let protect = AdminHttpConfig {
        protect_status: true,
        protect_metrics: true,
    };
    let server = Server::start(Some(TOKEN), protect).await;
    for path in ["/status", "/metrics"] {
        for (authorization, expected) in refusals() {
            let response = server.call(reqwest::Method::GET, path, authorization).await;
            assert_refused(response, expected, &format!("{path} {authorization:?}")).await;
        }
        let response = server
            .call(reqwest::Method::GET, path, Some(&format!("Bearer {TOKEN}")))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
    // Probes never need credentials: orchestrators and load balancers have none.
    for path in ["/livez", "/readyz"] {
        let response = server.call(reqwest::Method::GET, path, None).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn without_a_token_step_down_is_open() {
    let server = Server::start(None, AdminHttpConfig::default()).await;
    let response = server
        .call(reqwest::Method::POST, "/admin/step-down", None)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(server.step_downs.load(Ordering::SeqCst), 1);
}
