//! The controller's HTTP API and dashboard: one axum [`Router`] over a [`ControllerHandle`].
//! Reads are open (`/livez`, `/readyz`, `/api/status`, `/api/events`, the dashboard); every
//! `POST` needs the deployment's admin token and is checked for it before its body is even
//! read, so an unauthenticated caller learns nothing about what the controller would accept.
//! Request bodies are bounded ([`BODY_LIMIT_BYTES`]) and parsed strictly (unknown fields are
//! refused, naming the field); a refusal always answers JSON `{ "error": kind, "message": ... }`
//! and changes nothing. The router never decides anything itself: commands go to the
//! controller loop through the handle, and the loop's [`CommandError`] picks the status code.
//!
//! `GET /api/events` is a server-sent event stream for the dashboard: the current status
//! first, then every new audit record and a fresh status whenever it changes, at most
//! [`STATUS_EVENTS_PER_S`] a second. A subscriber that falls behind the audit broadcast skips
//! ahead (it is sent a fresh status, whose `events` hold the recent records) rather than
//! holding the controller up, and the number of open streams is capped ([`MAX_EVENT_STREAMS`]).
//!
//! [`serve`] puts the router on a socket: over TLS with the same acceptor the nodes' admin
//! HTTP uses ([`meridian_node::tls::serve_router_tls`]), so the admin token never travels in
//! cleartext; plaintext only when the caller has no certificate because plaintext was asked
//! for explicitly, and then with a warning at start-up.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use meridian_core::placement::{NodeName, RegionName};
use meridian_node::admin_token::AdminToken;
use meridian_node::tls::ServerTls;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{AuditRecord, Command, CommandError, CommandOutcome, Status};
use crate::handle::ControllerHandle;
use crate::plan::{Actor, PlanId};

/// The largest request body a `POST` may carry; a plan request is a few hundred bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
/// How many `status` events a second one event stream sends at most: the dashboard needs no
/// more, and a status is a few kilobytes.
pub const STATUS_EVENTS_PER_S: u32 = 5;
/// How many event streams may be open at once; more are refused with 503.
pub const MAX_EVENT_STREAMS: usize = 64;
/// How often an idle event stream sends a comment, so proxies and browsers keep it open.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// The actor a command is recorded under when the request names none.
pub const DEFAULT_ACTOR: &str = "admin-token";
/// The longest name `by` may give (it ends up in the audit log and the dashboard).
pub const ACTOR_MAX_CHARS: usize = 64;
/// The longest plan id a path may carry (`plan-<n>`).
const PLAN_ID_MAX_CHARS: usize = 64;

const DASHBOARD_HTML: &str = include_str!("../dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../dashboard/dashboard.css");

#[derive(Clone)]
struct Api {
    handle: ControllerHandle,
    admin: Arc<AdminToken>,
    streams: Arc<Semaphore>,
}

/// The controller's HTTP API and dashboard over `handle`; `POST`s need `admin`'s token.
pub fn router(handle: ControllerHandle, admin: AdminToken) -> Router {
    Router::new()
        .route("/", get(dashboard_html))
        .route("/dashboard.js", get(dashboard_js))
        .route("/dashboard.css", get(dashboard_css))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/plans", post(propose))
        .route("/api/plans/{id}", get(plan))
        .route("/api/plans/{id}/approve", post(approve))
        .route("/api/plans/{id}/reject", post(reject))
        .route("/api/commands", post(command))
        .fallback(not_found)
        .with_state(Api {
            handle,
            admin: Arc::new(admin),
            streams: Arc::new(Semaphore::new(MAX_EVENT_STREAMS)),
        })
}

/// How long requests still open at shutdown (event streams never end by themselves) may run
/// before they are dropped.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown`: over TLS with `tls`, in plaintext (with a
/// warning, as a node's `[tls] plaintext = true` gets) when `None`. `replica` names this
/// controller replica in the log.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<ServerTls>>,
    replica: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let addr = listener
        .local_addr()
        .context("the controller's listener has no local address")?;
    if let Some(tls) = tls {
        return meridian_node::tls::serve_router_tls(
            listener,
            router,
            tls,
            shutdown,
            SHUTDOWN_GRACE,
        )
        .await
        .with_context(|| format!("the controller's HTTPS server on {addr} failed"));
    }
    tracing::warn!(
        %replica,
        %addr,
        "TLS is OFF (--plaintext): the controller's API, dashboard and admin token travel in plaintext"
    );
    let server =
        axum::serve(listener, router).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.with_context(|| format!("the controller's HTTP server on {addr} failed"))?,
        () = deadline => {
            tracing::warn!(%addr, "controller API requests still open at shutdown; dropping them");
        }
    }
    Ok(())
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A kebab-case kind: a [`CommandError`]'s tag, or `unauthorized`, `bad-request`,
    /// `payload-too-large`, `not-found`, `too-many-streams`.
    pub error: String,
    pub message: String,
}

/// What `/readyz` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// This controller replica.
    pub replica: String,
    pub active: bool,
    /// The active replica, when known.
    pub active_replica: Option<String>,
    pub message: String,
}

/// `POST /api/plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeRequest {
    pub to: RegionName,
    /// The nodes to move; every node when empty.
    #[serde(default)]
    pub components: Vec<NodeName>,
    /// Who asks, for the audit log; "admin-token" when absent.
    #[serde(default)]
    pub by: Option<String>,
}

/// `POST /api/plans/{id}/approve`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// Required true for a region-loss plan: the approver accepts the loss it states.
    #[serde(default)]
    pub acknowledge_loss: bool,
    #[serde(default)]
    pub by: Option<String>,
}

/// `POST /api/plans/{id}/reject`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    #[serde(default)]
    pub by: Option<String>,
}

/// Why a request was refused; nothing changed. Answers JSON `{error, message}`.
#[derive(Debug)]
enum Refusal {
    Http {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    Unauthorized(String),
    Command(CommandError),
}

impl Refusal {
    fn bad_request(message: impl Into<String>) -> Self {
        Refusal::Http {
            status: StatusCode::BAD_REQUEST,
            kind: "bad-request",
            message: message.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Http {
                status,
                kind,
                message,
            } => (
                status,
                Json(ErrorBody {
                    error: kind.to_owned(),
                    message,
                }),
            )
                .into_response(),
            Refusal::Unauthorized(message) => {
                let mut response = (
                    StatusCode::UNAUTHORIZED,
                    Json(ErrorBody {
                        error: "unauthorized".to_owned(),
                        message,
                    }),
                )
                    .into_response();
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"meridian-controller\""),
                );
                response
            }
            // The error's kind and message, and its own fields beside them (a client can
            // read `until` of a cooldown without parsing the message).
            Refusal::Command(refusal) => {
                let status = StatusCode::from_u16(refusal.http_status())
                    .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                let mut body =
                    serde_json::to_value(&refusal).unwrap_or_else(|_| serde_json::json!({}));
                if let Some(fields) = body.as_object_mut() {
                    fields.insert(
                        "message".to_owned(),
                        serde_json::Value::String(refusal.to_string()),
                    );
                }
                (status, Json(body)).into_response()
            }
        }
    }
}

fn static_asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Everything the page loads comes from this server; no inline script runs.
            (
                axum::http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
            ),
        ],
        body,
    )
        .into_response()
}

async fn dashboard_html() -> Response {
    static_asset("text/html; charset=utf-8", DASHBOARD_HTML)
}

async fn dashboard_js() -> Response {
    static_asset("text/javascript; charset=utf-8", DASHBOARD_JS)
}

async fn dashboard_css() -> Response {
    static_asset("text/css; charset=utf-8", DASHBOARD_CSS)
}

async fn not_found() -> Refusal {
    Refusal::Http {
        status: StatusCode::NOT_FOUND,
        kind: "not-found",
        message: "no such route".to_owned(),
    }
}

async fn livez() -> &'static str {
    "ok"
}

/// 200 on the active controller replica, 503 on a passive one (naming the active one), so a
/// load balancer or `meridian ctl` finds the replica that takes commands.
async fn readyz(State(api): State<Api>) -> Response {
    let info = api.handle.status().controller;
    let message = if info.active {
        format!("{} is the active controller replica", info.replica)
    } else {
        match &info.active_replica {
            Some(active) => format!(
                "{} is passive; the active controller replica is {active}",
                info.replica
            ),
            None => format!(
                "{} is passive; no active controller replica is known",
                info.replica
            ),
        }
    };
    let status = if info.active {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        replica: info.replica,
        active: info.active,
        active_replica: info.active_replica,
        message,
    };
    (status, Json(body)).into_response()
}

async fn status(State(api): State<Api>) -> Json<Status> {
    Json(api.handle.status())
}

async fn plan(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<CommandOutcome>, Refusal> {
    let id = plan_id(&id)?;
    match api.handle.status().plans.into_iter().find(|p| p.id == id) {
        Some(plan) => Ok(Json(CommandOutcome { plan })),
        None => Err(Refusal::Command(CommandError::UnknownPlan {
            plan: id.to_string(),
        })),
    }
}

/// The admin token check every `POST` starts with.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), Refusal> {
    api.admin.verify_http(headers).map_err(|refusal| {
        Refusal::Unauthorized(format!(
            "this call needs `Authorization: Bearer <admin token>` (the deployment's \
             <data-dir>/secrets/admin-token): {refusal}"
        ))
    })
}

/// The body, bounded, parsed as `T`; an empty body counts as `{}`. The error names the field.
async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, Refusal> {
    let bytes: Bytes = axum::body::to_bytes(body, BODY_LIMIT_BYTES)
        .await
        .map_err(|_| Refusal::Http {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "payload-too-large",
            message: format!("the request body is larger than {BODY_LIMIT_BYTES} bytes"),
        })?;
    let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    let mut deserializer = serde_json::Deserializer::from_slice(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|refusal| {
        let path = refusal.path().to_string();
        let inner = refusal.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Refusal::bad_request(format!("the request body is not valid JSON: {inner}"))
        } else if path == "." {
            Refusal::bad_request(format!("the request body is not valid: {inner}"))
        } else {
            Refusal::bad_request(format!("the request body's field `{path}`: {inner}"))
        }
    })?;
    deserializer.end().map_err(|refusal| {
        Refusal::bad_request(format!("the request body is not valid: {refusal}"))
    })?;
    Ok(value)
}

/// `by` as an actor: absent means the token's holder; given, it is a short printable name.
fn actor(by: Option<String>) -> Result<Actor, Refusal> {
    let Some(name) = by else {
        return Ok(Actor::Operator(DEFAULT_ACTOR.to_owned()));
    };
    let name = name.trim().to_owned();
    let printable = name.chars().all(|c| !c.is_control());
    if name.is_empty() || name.chars().count() > ACTOR_MAX_CHARS || !printable {
        return Err(Refusal::bad_request(format!(
            "field `by`: give 1 to {ACTOR_MAX_CHARS} printable characters naming who acts \
             (or leave it out for \"{DEFAULT_ACTOR}\")"
        )));
    }
    Ok(Actor::Operator(name))
}

/// A plan id from a path: short printable text; whether such a plan exists is the loop's
/// answer (404 `unknown-plan`).
fn plan_id(id: &str) -> Result<PlanId, Refusal> {
    let well_formed = !id.is_empty()
        && id.len() <= PLAN_ID_MAX_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !well_formed {
        return Err(Refusal::bad_request(format!(
            "plan id {:?} is not a plan id (plan-<n>)",
            id.chars().take(PLAN_ID_MAX_CHARS).collect::<String>()
        )));
    }
    Ok(PlanId(id.to_owned()))
}

async fn submit(api: &Api, command: Command, created: bool) -> Result<Response, Refusal> {
    let outcome = api.handle.submit(command).await.map_err(Refusal::Command)?;
    if !created {
        return Ok(Json(outcome).into_response());
    }
    let location = HeaderValue::from_str(&format!("/api/plans/{}", outcome.plan.id)).ok();
    let mut response = (StatusCode::CREATED, Json(outcome)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(LOCATION, location);
    }
    Ok(response)
}

async fn propose(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    authorize(&api, &headers)?;
    let request: ProposeRequest = read_json(body).await?;
    let command = Command::ProposeSwitchover {
        to: request.to,
        components: request.components,
        by: actor(request.by)?,
    };
    submit(&api, command, true).await
}

async fn approve(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    authorize(&api, &headers)?;
    let plan = plan_id(&id)?;
    let request: ApproveRequest = read_json(body).await?;
    let command = Command::Approve {
        plan,
        by: actor(request.by)?,
        acknowledge_loss: request.acknowledge_loss,
    };
    submit(&api, command, false).await
}

async fn reject(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    authorize(&api, &headers)?;
    let plan = plan_id(&id)?;
    let request: RejectRequest = read_json(body).await?;
    let command = Command::Reject {
        plan,
        by: actor(request.by)?,
    };
    submit(&api, command, false).await
}

/// One [`Command`] as JSON (`{"command": "approve", ...}`): the form the drills and the
/// runtime's tests send. Same token, limits and errors as the routes above.
async fn command(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Refusal> {
    authorize(&api, &headers)?;
    let command: Command = read_json(body).await?;
    let (Command::ProposeSwitchover { by, .. }
    | Command::Approve { by, .. }
    | Command::Reject { by, .. }) = &command;
    if let Actor::Operator(name) = by {
        actor(Some(name.clone()))?;
    }
    submit(&api, command, false).await
}

async fn events(State(api): State<Api>) -> Result<Response, Refusal> {
    let permit = api
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::Http {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "too-many-streams",
            message: format!("{MAX_EVENT_STREAMS} event streams are open already; try again later"),
        })?;
    let feed = Feed {
        status: api.handle.watch_status(),
        audit: api.handle.subscribe(),
        first: true,
        last_status_at: None,
        _permit: permit,
    };
    let stream = futures::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(sse(stream).into_response())
}

fn sse<S>(stream: S) -> impl IntoResponse
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(KEEP_ALIVE_INTERVAL)
            .text("keep-alive"),
    )
}

/// One subscriber's event stream.
struct Feed {
    status: watch::Receiver<Status>,
    audit: broadcast::Receiver<AuditRecord>,
    first: bool,
    last_status_at: Option<Instant>,
    /// Held while the stream is open: counts it against [`MAX_EVENT_STREAMS`].
    _permit: OwnedSemaphorePermit,
}

impl Feed {
    fn min_status_interval() -> Duration {
        Duration::from_secs(1) / STATUS_EVENTS_PER_S
    }

    fn status_event(&mut self) -> Event {
        self.last_status_at = Some(Instant::now());
        let status = self.status.borrow_and_update().clone();
        json_event("status", &status)
    }

    /// The next event; `None` once the controller loop is gone (the browser reconnects).
    async fn next(&mut self) -> Option<Event> {
        if self.first {
            self.first = false;
            return Some(self.status_event());
        }
        let earliest = self
            .last_status_at
            .map(|at| at + Self::min_status_interval());
        tokio::select! {
            // Audit records first: they are the timeline, and each is small.
            biased;
            record = self.audit.recv() => match record {
                Ok(record) => Some(json_event("audit", &record)),
                // Fell behind: skip what was missed; a fresh status carries the recent
                // records, so the page's timeline is whole again.
                Err(broadcast::error::RecvError::Lagged(_)) => Some(self.status_event()),
                // Never while the handle lives (it keeps a sender); end the stream anyway.
                Err(broadcast::error::RecvError::Closed) => None,
            },
            changed = async {
                // Throttle before looking: `changed` is cancel-safe, the sleep holds no state,
                // and changes made meanwhile collapse into the one status sent after it.
                if let Some(earliest) = earliest {
                    tokio::time::sleep_until(earliest).await;
                }
                self.status.changed().await
            } => match changed {
                Ok(()) => Some(self.status_event()),
                Err(_) => None,
            },
        }
    }
}

fn json_event<T: Serialize>(name: &str, value: &T) -> Event {
    match Event::default().event(name).json_data(value) {
        Ok(event) => event,
        // Our own types always serialize; say so in the stream rather than panic.
        Err(refusal) => Event::default()
            .event("error")
            .data(format!("cannot encode {name}: {refusal}")),
    }
}
