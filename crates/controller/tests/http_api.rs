//! The controller's HTTP API in-process (tower `oneshot`, no socket) against the scripted
//! controller loop: every route, the admin token checked before anything else, bad input
//! refused with a JSON message naming the problem and nothing changed, the loop's refusals
//! mapped to their status codes, and the server-sent event stream (first status, audit records,
//! throttled status, a lagging subscriber skipping ahead).

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use futures::StreamExt as _;
use meridian_controller::api::{AuditKind, AuditRecord, Command, Status};
use meridian_controller::handle::ControllerHandle;
use meridian_controller::http::{router, BODY_LIMIT_BYTES};
use meridian_controller::plan::{Actor, PlanId, PlanKind};
use meridian_core::Timestamp;
use meridian_node::admin_token::AdminToken;
use serde_json::{json, Value};
use support::{sample_status, start, start_with_plan, Scripted, ADMIN_TOKEN};
use tower::ServiceExt as _;

fn app(scripted: &Scripted) -> Router {
    router(
        scripted.handle.clone(),
        AdminToken::new(Some(ADMIN_TOKEN), "from the test"),
    )
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).expect("request")
}

fn post(uri: &str, token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(body.into()).expect("request")
}

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, value)
}

/// The refusal's kind and message.
fn refusal(body: &Value) -> (&str, &str) {
    (
        body["error"].as_str().expect("an error kind"),
        body["message"].as_str().expect("a message"),
    )
}

#[tokio::test]
async fn livez_readyz_and_status() {
    let scripted = start(sample_status(true), 10);
    let app = app(&scripted);
    let (status, _, body) = call(&app, get("/livez")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, Value::String("ok".into()));

    let (status, _, body) = call(&app, get("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], json!(true));

    let (status, _, body) = call(&app, get("/api/status")).await;
    assert_eq!(status, StatusCode::OK);
    let served: Status = serde_json::from_value(body).expect("a Status");
    assert_eq!(served, scripted.handle.status());

    let passive = start(sample_status(false), 10);
    let (status, _, body) = call(&self::app(&passive), get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["active"], json!(false));
    assert_eq!(body["active_replica"], json!("controller-a"));
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("the active controller replica is controller-a"),
        "{body}"
    );
}

#[tokio::test]
async fn dashboard_and_its_assets_are_served_without_a_build_step() {
    let scripted = start(sample_status(true), 10);
    let app = app(&scripted);
    for (path, content_type, needle) in [
        ("/", "text/html", "/dashboard.js"),
        ("/dashboard.js", "text/javascript", "EventSource"),
        ("/dashboard.css", "text/css", ".replica"),
    ] {
        let (status, headers, body) = call(&app, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        let served_type = headers[header::CONTENT_TYPE].to_str().expect("ascii");
        assert!(
            served_type.starts_with(content_type),
            "{path}: {served_type}"
        );
        assert!(body.as_str().expect("text").contains(needle), "{path}");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{path}"
        );
    }
    let (status, _, body) = call(&app, get("/nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(refusal(&body).0, "not-found");
}

#[tokio::test]
async fn commands_need_the_admin_token_checked_before_the_body() {
    let mut scripted = start(sample_status(true), 10);
    let app = app(&scripted);
    let cases = [
        (None, "no `authorization`"),
        (Some("wrong"), "does not match"),
    ];
    for (token, reason) in cases {
        for (uri, body) in [
            ("/api/plans", r#"{"to":"region-2"}"#),
            // A bad body too: the token is checked first, so its absence is what is reported.
            ("/api/plans", "{not json"),
            ("/api/plans/plan-1/approve", "{}"),
            ("/api/plans/plan-1/reject", ""),
            (
                "/api/commands",
                r#"{"command":"reject","plan":"plan-1","by":{"kind":"controller"}}"#,
            ),
        ] {
            let (status, headers, answer) = call(&app, post(uri, token, body)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} {token:?}");
            assert_eq!(
                headers[header::WWW_AUTHENTICATE],
                "Bearer realm=\"meridian-controller\""
            );
            let (kind, message) = refusal(&answer);
            assert_eq!(kind, "unauthorized");
            assert!(message.contains(reason), "{message}");
            assert!(!message.contains(ADMIN_TOKEN), "{message}");
        }
    }
    // Nothing reached the controller, and nothing changed.
    assert!(scripted.received.try_recv().is_err());
    assert!(scripted.handle.status().plans.is_empty());
}

#[tokio::test]
async fn bad_bodies_are_refused_naming_the_problem_and_change_nothing() {
    let mut scripted = start(sample_status(true), 10);
    let app = app(&scripted);
    let too_large = format!(r#"{{"to":"{}"}}"#, "x".repeat(BODY_LIMIT_BYTES));
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "/api/plans",
            "{not json".into(),
            StatusCode::BAD_REQUEST,
            "not valid",
        ),
        (
            "/api/plans",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "missing field `to`",
        ),
        (
            "/api/plans",
            r#"{"to":"region-2","force":true}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown field `force`",
        ),
        (
            "/api/plans",
            r#"{"to":"region-2","components":"participant1"}"#.into(),
            StatusCode::BAD_REQUEST,
            "field `components`",
        ),
        (
            "/api/plans",
            r#"{"to":"region-2"} trailing"#.into(),
            StatusCode::BAD_REQUEST,
            "trailing",
        ),
        (
            "/api/plans",
            r#"{"to":"region-2","by":""}"#.into(),
            StatusCode::BAD_REQUEST,
            "field `by`",
        ),
        (
            "/api/plans",
            format!(r#"{{"to":"region-2","by":"{}"}}"#, "a".repeat(65)),
            StatusCode::BAD_REQUEST,
            "field `by`",
        ),
        (
            "/api/plans",
            r#"{"to":"region-2","by":"al\nice"}"#.into(),
            StatusCode::BAD_REQUEST,
            "field `by`",
        ),
        (
            "/api/plans",
            too_large,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "/api/plans/plan-1/approve",
            r#"{"acknowledge_loss":"yes"}"#.into(),
            StatusCode::BAD_REQUEST,
            "field `acknowledge_loss`",
        ),
        (
            "/api/plans/plan-1/reject",
            r#"{"reason":"no"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown field `reason`",
        ),
        (
            "/api/plans/plan%201/approve",
            "{}".into(),
            StatusCode::BAD_REQUEST,
            "not a plan id",
        ),
        (
            "/api/commands",
            r#"{"command":"launch"}"#.into(),
            StatusCode::BAD_REQUEST,
            "unknown variant",
        ),
    ];
    for (uri, body, expected, needle) in cases {
        let (status, _, answer) = call(&app, post(uri, Some(ADMIN_TOKEN), body)).await;
        assert_eq!(status, expected, "{uri}: {answer}");
        let (_, message) = refusal(&answer);
        assert!(message.contains(needle), "{uri}: {message}");
    }
    assert!(
        scripted.received.try_recv().is_err(),
        "nothing reached the loop"
    );
    assert_eq!(scripted.handle.status(), sample_status(true));
}

#[tokio::test]
async fn propose_approve_reject_and_the_loops_refusals() {
    let mut scripted = start(sample_status(true), 5);
    let app = app(&scripted);

    let (status, _, body) = call(
        &app,
        post("/api/plans", Some(ADMIN_TOKEN), r#"{"to":"region-9"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refusal(&body).0, "unknown-region");
    assert!(refusal(&body).1.contains("region-1, region-2"), "{body}");
    assert_eq!(
        body["region"],
        json!("region-9"),
        "the error's own fields come along"
    );

    let (status, headers, body) = call(
        &app,
        post(
            "/api/plans",
            Some(ADMIN_TOKEN),
            r#"{"to":"region-2","components":["participant1"]}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers[header::LOCATION], "/api/plans/plan-1");
    assert_eq!(body["plan"]["id"], json!("plan-1"));
    assert_eq!(body["plan"]["state"]["state"], json!("awaiting-approval"));
    let _ = scripted.received.recv().await;
    let _ = scripted.received.recv().await;

    let (status, _, body) = call(&app, get("/api/plans/plan-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["plan"]["id"], json!("plan-1"));
    let (status, _, body) = call(&app, get("/api/plans/plan-7")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(refusal(&body).0, "unknown-plan");

    // One plan at a time: the loop says which one is open.
    let (status, _, body) = call(
        &app,
        post("/api/plans", Some(ADMIN_TOKEN), r#"{"to":"region-2"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refusal(&body).0, "plan-open");
    let _ = scripted.received.recv().await;

    let (status, _, body) = call(
        &app,
        post("/api/plans/plan-7/approve", Some(ADMIN_TOKEN), "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(refusal(&body).0, "unknown-plan");
    assert_eq!(refusal(&body).1, "no plan plan-7");
    let _ = scripted.received.recv().await;

    let (status, _, body) = call(
        &app,
        post(
            "/api/plans/plan-1/approve",
            Some(ADMIN_TOKEN),
            r#"{"by":"alice"}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plan"]["state"]["state"], json!("running"));
    assert_eq!(
        scripted.received.recv().await,
        Some(Command::Approve {
            plan: PlanId("plan-1".into()),
            by: Actor::Operator("alice".into()),
            acknowledge_loss: false,
        })
    );

    // Approving twice, or rejecting a running plan: 409, nothing changes.
    let (status, _, body) = call(
        &app,
        post("/api/plans/plan-1/approve", Some(ADMIN_TOKEN), "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(refusal(&body).0, "not-awaiting-approval");
    let (status, _, _) = call(
        &app,
        post("/api/plans/plan-1/reject", Some(ADMIN_TOKEN), ""),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_region_loss_needs_the_acknowledgement_and_reject_records_the_default_actor() {
    let mut scripted = start_with_plan(PlanKind::RegionLoss, 5);
    let app = app(&scripted);
    let (status, _, body) = call(
        &app,
        post("/api/plans/plan-1/approve", Some(ADMIN_TOKEN), "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refusal(&body).0, "loss-not-acknowledged");
    assert!(refusal(&body).1.contains("--acknowledge-loss"), "{body}");
    let _ = scripted.received.recv().await;
    assert!(scripted.handle.status().plans[0].state.is_open());

    // An empty body is `{}`; no `by` is the token's holder.
    let (status, _, body) = call(
        &app,
        post("/api/plans/plan-1/reject", Some(ADMIN_TOKEN), ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plan"]["state"]["state"], json!("rejected"));
    assert_eq!(
        scripted.received.recv().await,
        Some(Command::Reject {
            plan: PlanId("plan-1".into()),
            by: Actor::Operator("admin-token".into()),
        })
    );

    let mut scripted = start_with_plan(PlanKind::RegionLoss, 5);
    let (status, _, body) = call(
        &self::app(&scripted),
        post(
            "/api/plans/plan-1/approve",
            Some(ADMIN_TOKEN),
            r#"{"acknowledge_loss":true}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(matches!(
        scripted.received.recv().await,
        Some(Command::Approve {
            acknowledge_loss: true,
            ..
        })
    ));
}

#[tokio::test]
async fn a_passive_replica_refuses_commands_naming_the_active_one() {
    let passive = start(sample_status(false), 5);
    let app = app(&passive);
    let (status, _, body) = call(
        &app,
        post("/api/plans/plan-1/approve", Some(ADMIN_TOKEN), "{}"),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal(&body).0, "not-active");
    assert!(refusal(&body).1.contains("controller-a"), "{body}");
    // The status is still served.
    let (status, _, body) = call(&app, get("/api/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["controller"]["active"], json!(false));
}

/// Reads SSE frames off a response body: (event name, data).
struct Frames {
    stream: axum::body::BodyDataStream,
    buffer: String,
}

impl Frames {
    async fn open(app: &Router) -> Self {
        let response = app
            .clone()
            .oneshot(get("/api/events"))
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers()[header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .starts_with("text/event-stream"));
        Self {
            stream: response.into_body().into_data_stream(),
            buffer: String::new(),
        }
    }

    async fn next(&mut self) -> (String, Value) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in frame.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data.push_str(value);
                    }
                }
                if name.is_empty() {
                    continue; // a keep-alive comment
                }
                return (name, serde_json::from_str(&data).expect("JSON data"));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.stream.next())
                .await
                .expect("an event within 5 s")
                .expect("the stream goes on")
                .expect("a chunk");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn events_start_with_the_status_then_follow_audit_records_and_status_changes() {
    let mut scripted = start(sample_status(true), 5);
    let app = app(&scripted);
    let mut frames = Frames::open(&app).await;
    let (name, first) = frames.next().await;
    assert_eq!(name, "status");
    assert_eq!(first["regions"][0]["name"], json!("region-1"));

    let (status, _, _) = call(
        &app,
        post("/api/plans", Some(ADMIN_TOKEN), r#"{"to":"region-2"}"#),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let _ = scripted.received.recv().await;
    let mut saw_audit = false;
    let mut saw_plan = false;
    while !(saw_audit && saw_plan) {
        let (name, data) = frames.next().await;
        match name.as_str() {
            "audit" => {
                assert_eq!(data["kind"], json!("plan-proposed"));
                saw_audit = true;
            }
            "status" => saw_plan |= data["plans"][0]["id"] == json!("plan-1"),
            other => panic!("unexpected event {other}"),
        }
    }
}

#[tokio::test]
async fn status_events_are_throttled_and_a_lagging_subscriber_skips_ahead() {
    let (handle, side) = ControllerHandle::new(sample_status(true));
    let app = router(handle, AdminToken::new(Some(ADMIN_TOKEN), "from the test"));
    let mut frames = Frames::open(&app).await;
    assert_eq!(frames.next().await.0, "status");

    // 40 changes within ~400 ms: at most ~5 status events a second reach the subscriber, the
    // last one carrying the latest status.
    let started = tokio::time::Instant::now();
    let reader = tokio::spawn(async move {
        let mut seen = 0u32;
        loop {
            let (name, data) = frames.next().await;
            assert_eq!(name, "status");
            seen += 1;
            if data["automatic_actions_last_hour"] == json!(40) {
                return (seen, frames);
            }
        }
    });
    for n in 1..=40 {
        side.status
            .send_modify(|status| status.automatic_actions_last_hour = n);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (seen, mut frames) = reader.await.expect("reader");
    let elapsed = started.elapsed();
    let allowed = 2 + u32::try_from(elapsed.as_millis() / 200).expect("small");
    assert!(seen <= allowed, "{seen} status events in {elapsed:?}");

    // 300 audit records with nobody reading: more than the broadcast keeps. The subscriber is
    // not blocked and does not block the controller; it gets a fresh status, then goes on.
    for seq in 1..=300u64 {
        let record = AuditRecord {
            seq,
            at: Timestamp::now(),
            kind: AuditKind::ReplicaUp,
            actor: Actor::Controller,
            plan: None,
            step: None,
            replica: None,
            region: None,
            detail: format!("record {seq}"),
        };
        side.events.send(record).expect("a subscriber");
    }
    let (name, _) = frames.next().await;
    assert_eq!(
        name, "status",
        "a lagging subscriber resyncs from a fresh status"
    );
    let (name, data) = frames.next().await;
    assert_eq!(name, "audit");
    assert!(
        data["seq"].as_u64().expect("seq") > 40,
        "skipped ahead: {data}"
    );
}
