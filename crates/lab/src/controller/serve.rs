//! The controller's HTTP API as this process serves it.
//!
//! MERGE: the web helper's `meridian_controller::http::router(handle, admin)` (status, plans,
//! approve/reject behind the admin token, server-sent events, the dashboard, /livez /readyz)
//! replaces this minimal router, which serves only what the runtime's tests read:
//! `GET /api/status` and `POST /api/commands` (one [`Command`] as JSON, admin token
//! required).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_controller::api::Command;
use meridian_controller::handle::ControllerHandle;
use meridian_node::admin_token::AdminToken;

#[derive(Clone)]
struct Api {
    handle: ControllerHandle,
    admin: std::sync::Arc<AdminToken>,
}

pub fn router(handle: ControllerHandle, admin: AdminToken) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/commands", post(command))
        .with_state(Api {
            handle,
            admin: std::sync::Arc::new(admin),
        })
}

async fn status(State(api): State<Api>) -> Response {
    Json(api.handle.status()).into_response()
}

async fn command(
    State(api): State<Api>,
    headers: HeaderMap,
    Json(command): Json<Command>,
) -> Response {
    if let Err(error) = api.admin.verify_http(&headers) {
        return (StatusCode::UNAUTHORIZED, error.to_string()).into_response();
    }
    match api.handle.submit(command).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(error) => (
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Json(error),
        )
            .into_response(),
    }
}
