//! The admin HTTP server every node runs on its admin port: `/livez` and `/readyz` for process
//! supervisors, Kubernetes and load balancers (HAProxy routes on `/readyz`), `/status` for
//! operators and the controller, `/metrics` for Prometheus (OpenMetrics when asked for, else the
//! Prometheus text format). Every response, errors included, is
//! JSON except `/metrics`, so scripts never have to parse an HTML error page.
//!
//! Who may call what ([`AdminHttpAuth`]): with an admin token configured, every mutating route
//! (`POST /admin/step-down`) needs `Authorization: Bearer <token>`, checked by the same
//! constant-time [`AdminToken`] as the admin gRPC calls; `/livez` and `/readyz` are always open
//! (orchestrators and load balancers probe them without credentials); `/status` and `/metrics`
//! are open unless `[admin_http] protect_status` / `protect_metrics` say otherwise. A refusal
//! is 401 with `WWW-Authenticate: Bearer` and a JSON `error` saying what was missing or wrong,
//! never the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin_token::{AdminToken, TokenError};
use crate::conditions::Conditions;
use crate::health::{Health, Readiness};
use crate::metrics::Metrics;
use crate::tls::ServerTls;

/// Content type of `/metrics` for a scraper that asks for OpenMetrics (Prometheus does): the
/// format `prometheus_client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of `/metrics` otherwise: the Prometheus text format, which `curl` users and
/// `promtool check metrics` read (OpenMetrics read as text misnames every counter).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// After shutdown is requested, in-flight requests get this long before the server stops
/// anyway, so a stuck client cannot hold up a node's exit.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Longest request path echoed back in a 404 or 405 body.
const MAX_ECHOED_PATH_CHARS: usize = 256;

/// What a node reports at `/status`: role, epoch, lag and so on, as a JSON object whose keys
/// appear at the top level of the response.
///
/// Called on every `/status` request on a runtime worker thread, so it must be cheap and must
/// not block: read a snapshot the node keeps up to date rather than querying a database.
pub trait StatusSource: Send + Sync {
    fn status(&self) -> Value;
}

impl<F> StatusSource for F
where
    F: Fn() -> Value + Send + Sync,
{
    fn status(&self) -> Value {
        self()
    }
}

/// Asks the active replica to hand over (manual switchover); false when this replica is not
/// the active one.
pub type StepDown = Arc<dyn Fn() -> bool + Send + Sync>;

/// Asks the active replica to stop admitting new calls while it keeps its lease and goes on
/// taking part in the protocol: the first half of fencing a whole region, whose replicas must
/// all stop admitting before any exits, since each one's submissions in flight need the
/// others' confirmations. Idempotent; `Some(n)`: `n` admitted calls are still running.
/// `None` when this replica is not the active one.
pub type Quiesce = Arc<dyn Fn() -> Option<usize> + Send + Sync>;

/// The `[admin_http]` table of every role's config: which read-only routes also need the admin
/// token. Both open by default: `/metrics` so that a Prometheus scrape needs no credentials,
/// `/status` because it reports no secret and the lab, the controller and operators read it
/// to find the active replica; protect them when the admin port is reachable from networks
/// you do not trust. Mutating routes always need the token when one is configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminHttpConfig {
    /// `/status` needs the admin token.
    pub protect_status: bool,
    /// `/metrics` needs the admin token (the scraper then sends it, e.g. Prometheus's
    /// `authorization` with `credentials_file`).
    pub protect_metrics: bool,
}

impl AdminHttpConfig {
    /// Whether nothing is protected, so that a config file need not write the table.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// Which admin HTTP routes need the token, and the token.
#[derive(Debug, Clone)]
pub struct AdminHttpAuth {
    pub token: AdminToken,
    pub config: AdminHttpConfig,
}

impl AdminHttpAuth {
    /// Every route open: for a node without an admin token.
    pub fn open() -> Self {
        Self {
            token: AdminToken::new(None, ""),
            config: AdminHttpConfig::default(),
        }
    }

    /// Checks a request's `Authorization` header; `Err` is the 401 response to send.
    fn require(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        self.token.verify_http(headers).map_err(|error| {
            let reason = match error {
                TokenError::Missing => "no `Authorization` header",
                TokenError::Malformed => "the `Authorization` header is not `Bearer <token>`",
                TokenError::Wrong => "the admin token does not match",
            };
            Box::new(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    Json(json!({
                        "error": format!(
                            "this route needs `Authorization: Bearer <admin token>` (the node's admin_token_file): {reason}"
                        ),
                    })),
                )
                    .into_response(),
            )
        })
    }
}

/// What every node has from its first moment and shows on its admin port: its health, its
/// readiness (not ready, for "startup", until the node clears that) and its metric registry.
#[derive(Clone)]
pub struct NodeState {
    pub health: Health,
    pub readiness: Conditions,
    pub metrics: Arc<Metrics>,
    /// The admin port serves TLS with this; plaintext when `None` (`[tls] plaintext = true`).
    tls: Option<Arc<ServerTls>>,
    quiesce: Option<Quiesce>,
}

impl NodeState {
    pub fn starting() -> Self {
        let health = Health::new();
        Self {
            readiness: Conditions::starting(health.clone()),
            health,
            metrics: Arc::new(Metrics::new("meridian")),
            tls: None,
            quiesce: None,
        }
    }

    /// Serves the admin port over TLS with `tls` (see [`crate::tls::NodeTls::server`]).
    pub fn with_tls(mut self, tls: Option<Arc<ServerTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// Offers `POST /admin/quiesce` with `quiesce` (a replicated participant).
    pub fn with_quiesce(mut self, quiesce: Option<Quiesce>) -> Self {
        self.quiesce = quiesce;
        self
    }

    /// Serves the admin HTTP API on `listener` until `shutdown`, reporting `status` and, on a
    /// replicated node, offering `step_down`.
    pub fn spawn_admin(
        &self,
        listener: TcpListener,
        status: Arc<dyn StatusSource>,
        step_down: Option<StepDown>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        self.spawn_admin_with(listener, status, step_down, AdminHttpAuth::open(), shutdown)
    }

    /// [`Self::spawn_admin`] guarded by `auth`. A node without an admin token says at start-up
    /// that its admin endpoints are open, so that it is never so by accident.
    pub fn spawn_admin_with(
        &self,
        listener: TcpListener,
        status: Arc<dyn StatusSource>,
        step_down: Option<StepDown>,
        auth: AdminHttpAuth,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        if !auth.token.is_required() {
            tracing::warn!(
                "no admin token configured (admin_token_file): the admin endpoints, including POST /admin/step-down, are open to anyone who can reach them"
            );
        }
        let state = AdminState {
            health: self.health.clone(),
            metrics: self.metrics.clone(),
            status,
            step_down,
            quiesce: self.quiesce.clone(),
            auth,
        };
        tokio::spawn(serve_admin_tls(listener, state, self.tls.clone(), shutdown))
    }
}

/// Everything the admin server reads.
#[derive(Clone)]
pub struct AdminState {
    pub health: Health,
    pub metrics: Arc<Metrics>,
    pub status: Arc<dyn StatusSource>,
    /// For replicated nodes only.
    pub step_down: Option<StepDown>,
    /// For replicated participants only.
    pub quiesce: Option<Quiesce>,
    /// Which routes need the admin token.
    pub auth: AdminHttpAuth,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("health", &self.health)
            .field("metrics", &self.metrics)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Binds the admin HTTP listener, with an error that names the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    // The io error is part of the message (not only the source chain) so it shows however the
    // caller prints the error.
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot bind admin HTTP on {addr}: {err}"))
}

/// The admin routes, for serving on a listener or for testing without one.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/admin/step-down", axum::routing::post(step_down))
        .route("/admin/quiesce", axum::routing::post(quiesce))
        // Must come after the routes: it only applies to routes already added.
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

/// Serves the admin routes on `listener` until `shutdown` is cancelled, then lets in-flight
/// requests finish for up to [`SHUTDOWN_GRACE_MS`].
pub async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_admin_tls(listener, state, None, shutdown).await
}

/// [`serve_admin`] over TLS when `tls` is given (https), plaintext otherwise.
pub async fn serve_admin_tls(
    listener: TcpListener,
    state: AdminState,
    tls: Option<Arc<ServerTls>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener
        .local_addr()
        .context("admin HTTP listener has no local address")?;
    if let Some(tls) = tls {
        tracing::info!(%addr, "admin HTTPS listening");
        crate::tls::serve_router_tls(
            listener,
            router(state),
            tls,
            shutdown,
            Duration::from_millis(SHUTDOWN_GRACE_MS),
        )
        .await
        .with_context(|| format!("admin HTTPS server on {addr} failed"))?;
        tracing::info!(%addr, "admin HTTPS stopped");
        return Ok(());
    }
    tracing::info!(%addr, "admin HTTP listening");
    let server = axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(Duration::from_millis(SHUTDOWN_GRACE_MS)).await;
    };
    tokio::select! {
        served = server => served.with_context(|| format!("admin HTTP server on {addr} failed"))?,
        () = deadline => {
            tracing::warn!(%addr, grace_ms = SHUTDOWN_GRACE_MS, "admin HTTP requests still open at shutdown; dropping them");
        }
    }
    tracing::info!(%addr, "admin HTTP stopped");
    Ok(())
}

async fn livez(State(state): State<AdminState>) -> Response {
    match state.health.readiness() {
        failed @ Readiness::Failed { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(failed)).into_response()
        }
        Readiness::Ready | Readiness::NotReady { .. } => {
            Json(json!({"status": "alive"})).into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let readiness = state.health.readiness();
    let code = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(readiness)).into_response()
}

async fn status(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.auth.config.protect_status {
        if let Err(refusal) = state.auth.require(&headers) {
            return *refusal;
        }
    }
    let mut body = match state.status.status() {
        Value::Object(map) => map,
        Value::Null => Map::new(),
        other => Map::from_iter([("status".to_owned(), other)]),
    };
    // Readiness is the node's own verdict, so it overrides a source key of the same name.
    let health = state.health.snapshot();
    body.insert("readiness".to_owned(), json!(health.readiness));
    body.insert(
        "readiness_since_unix_ms".to_owned(),
        json!(health.since_unix_ms()),
    );
    body.insert("readiness_age_ms".to_owned(), json!(health.age_ms()));
    Json(Value::Object(body)).into_response()
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.auth.config.protect_metrics {
        if let Err(refusal) = state.auth.require(&headers) {
            return *refusal;
        }
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("application/openmetrics-text"));
    let (encoded, content_type) = if openmetrics {
        (state.metrics.encode(), OPENMETRICS_CONTENT_TYPE)
    } else {
        (
            state.metrics.encode_prometheus_text(),
            PROMETHEUS_TEXT_CONTENT_TYPE,
        )
    };
    match encoded {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": err.to_string()})),
            )
                .into_response()
        }
    }
}

async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "not found", "path": echoed_path(&uri)})),
    )
        .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({
            "error": "method not allowed",
            "method": method.as_str(),
            "path": echoed_path(&uri),
        })),
    )
        .into_response()
}

fn echoed_path(uri: &Uri) -> String {
    uri.path().chars().take(MAX_ECHOED_PATH_CHARS).collect()
}

/// `POST /admin/step-down`: the switchover hook. 202 when the active replica starts handing
/// over, 409 on a passive replica, 404 on a node that is not replicated; 401 without the admin
/// token when one is configured, checked first so that an unauthenticated caller learns
/// nothing about the node.
async fn quiesce(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = state.auth.require(&headers) {
        return *refusal;
    }
    match &state.quiesce {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "this node has no submissions to quiesce (only a replicated participant has)"})),
        )
            .into_response(),
        Some(hook) => match hook() {
            Some(running) => (
                StatusCode::OK,
                Json(json!({"status": "quiesced: admitting no new calls", "running": running})),
            )
                .into_response(),
            None => (
                StatusCode::CONFLICT,
                Json(json!({"error": "this replica is not the active one"})),
            )
                .into_response(),
        },
    }
}

async fn step_down(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if let Err(refusal) = state.auth.require(&headers) {
        return *refusal;
    }
    match &state.step_down {
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "this node is not replicated; there is nothing to switch over"})),
        )
            .into_response(),
        Some(hook) if hook() => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "stepping down; a passive replica takes over"})),
        )
            .into_response(),
        Some(_) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "this replica is not the active one"})),
        )
            .into_response(),
    }
}
