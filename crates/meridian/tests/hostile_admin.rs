//! Hostile HTTP requests to the admin router every node serves (issue 11, item 6), driven in
//! process with `tower::ServiceExt::oneshot` (no socket): arbitrary methods, paths, query
//! strings, headers and bodies. Nothing may panic; no answer is a 5xx (the node reports ready,
//! so not even `/readyz`'s 503); every error is JSON; and the step-down hook runs only for a
//! `POST /admin/step-down` (once the admin token guards it, for fewer still).
//!
//! Case count: `MERIDIAN_HOSTILE_CASES` (see `meridian_testkit::hostile`).

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request};
use meridian_node::{
    router, AdminHttpAuth, AdminHttpConfig, AdminState, AdminToken, Health, Metrics,
};
use meridian_testkit::hostile::hostile_config;
use proptest::collection::vec;
use proptest::prelude::*;
use serde_json::json;
use tower::ServiceExt;

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![
            Just("GET"), Just("POST"), Just("PUT"), Just("DELETE"), Just("HEAD"),
            Just("OPTIONS"), Just("PATCH"), Just("TRACE"), Just("CONNECT"),
        ].prop_map(str::to_owned),
        1 => "[A-Za-z!#$%&'*+.^_`|~-]{1,20}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    let known = prop_oneof![
        Just("/livez"),
        Just("/readyz"),
        Just("/status"),
        Just("/metrics"),
        Just("/admin/step-down"),
        Just("/admin/step-down/"),
        Just("//admin/step-down"),
        Just("/admin/../admin/step-down"),
        Just("/ADMIN/STEP-DOWN"),
        Just("/admin/step%2Ddown"),
        Just("/"),
    ]
    .prop_map(str::to_owned);
    prop_oneof![
        4 => known.clone(),
        2 => (known, "[ -~]{0,30}").prop_map(|(p, q)| format!("{p}?{q}")),
        2 => "/[ -~]{0,60}",
        1 => "/[a-z%0-9/.]{1000,5000}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let name = prop_oneof![
        Just("accept".to_owned()),
        Just("content-type".to_owned()),
        Just("authorization".to_owned()),
        Just("content-length".to_owned()),
        Just("transfer-encoding".to_owned()),
        Just("host".to_owned()),
        "[a-z-]{1,20}",
    ];
    let value = prop_oneof![
        Just(b"application/openmetrics-text; version=1.0.0".to_vec()),
        Just(b"application/json".to_vec()),
        Just(b"Bearer not-the-token".to_vec()),
        Just(format!("Bearer {TOKEN}").into_bytes()),
        vec(any::<u8>(), 0..64),
    ];
    vec((name, value), 0..6)
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        Just(b"{\"confirm\":true}".to_vec()),
        vec(any::<u8>(), 0..512),
        (0usize..200_000).prop_map(|n| vec![b'{'; n]),
    ]
}

/// The admin token the router under test requires.
const TOKEN: &str = "hostile-test-admin-token";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(hostile_config())]

    #[test]
    fn hostile_admin_http_requests_get_json_client_answers(
        method in method(),
        path in path(),
        headers in headers(),
        body in body(),
        active in any::<bool>(),
        protect in any::<bool>(),
    ) {
        let Ok(method) = Method::from_bytes(method.as_bytes()) else { return Ok(()) };
        let mut builder = Request::builder().method(method.clone()).uri(path.as_str());
        for (name, value) in &headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                builder = builder.header(name, value);
            }
        }
        // What no HTTP parser lets through (an invalid URI) never reaches the router.
        let Ok(request) = builder.body(Body::from(body)) else { return Ok(()) };
        // Only the exact route with the configured token may step down; a hostile header
        // carrying the right token by chance is allowed to (the generator never makes it).
        let authorized = request
            .headers()
            .get("authorization")
            .is_some_and(|value| value.as_bytes().trim_ascii() == format!("Bearer {TOKEN}").as_bytes());
        let exact_step_down =
            method == Method::POST && request.uri().path() == "/admin/step-down" && authorized;

        let steps = Arc::new(AtomicUsize::new(0));
        let counted = steps.clone();
        let health = Health::new();
        health.set_ready();
        let state = AdminState {
            health,
            metrics: Arc::new(Metrics::new("meridian")),
            status: Arc::new(|| json!({"role": "hostile"})),
            step_down: Some(Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                active
            })),
            quiesce: None,
            auth: AdminHttpAuth {
                token: AdminToken::new(Some(TOKEN), "from the test"),
                config: AdminHttpConfig {
                    protect_status: protect,
                    protect_metrics: protect,
                },
            },
        };
        let (status, content_type, bytes) = runtime().block_on(async {
            let response = router(state).oneshot(request).await.unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, content_type, bytes)
        });
        prop_assert!(!status.is_server_error(), "{} {} -> {}", method, path, status);
        if status.is_client_error() && method != Method::HEAD {
            prop_assert!(content_type.starts_with("application/json"), "{}", content_type);
            prop_assert!(
                serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
                "{} {} -> {} {:?}", method, path, status, bytes
            );
        }
        if !exact_step_down {
            prop_assert_eq!(steps.load(Ordering::SeqCst), 0, "{} {}", method, path);
        }
    }
}
