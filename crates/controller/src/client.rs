//! The controller API's client: what `meridian ctl`, the drills and the tests call. The caller
//! hands in a configured `reqwest::Client` (timeouts, and the CA the controller's certificate
//! is checked with, are its business) and the base URL of one controller replica; a refusal
//! comes back as the server's own [`CommandError`] when it is one (so a caller can tell a
//! cooldown from an unknown plan), else with the server's message and status code.

use std::time::Duration;

use meridian_core::placement::{NodeName, RegionName};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{CommandError, CommandOutcome, Status};
use crate::http::{ApproveRequest, ErrorBody, ProposeRequest, Readiness, RejectRequest};
use crate::plan::{Plan, PlanId};

/// How often [`ControllerClient::wait_for_plan`] reads the status.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The controller refused the command; nothing changed.
    #[error("{0}")]
    Command(CommandError),
    /// Any other refusal (401, 400, ...): the server's status code and message.
    #[error("{message} (HTTP {status}, {kind})")]
    Refused {
        status: u16,
        kind: String,
        message: String,
    },
    #[error("cannot reach the controller at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the controller at {url} answered HTTP {status} with a body that is not its API's: {detail}")]
    Unexpected {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("plan {plan} did not reach the awaited state within {waited_ms} ms; it is {last}")]
    WaitTimedOut {
        plan: PlanId,
        waited_ms: u64,
        last: String,
    },
}

impl ClientError {
    /// The HTTP status the server answered, if it answered.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            ClientError::Command(refusal) => Some(refusal.http_status()),
            ClientError::Refused { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            ClientError::Transport { .. } | ClientError::WaitTimedOut { .. } => None,
        }
    }
}

/// A client of one controller replica's API.
#[derive(Debug, Clone)]
pub struct ControllerClient {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl ControllerClient {
    /// A client of the replica at `base` (e.g. `https://127.0.0.1:7300`, as the controller's
    /// URL file says), through `http`, which must trust the controller's CA.
    pub fn new(http: reqwest::Client, base: impl Into<String>) -> Self {
        let base = base.into().trim().trim_end_matches('/').to_owned();
        Self {
            http,
            base,
            token: None,
        }
    }

    /// Sends `token` as `Authorization: Bearer` on commands.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into().trim().to_owned());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn transport(&self, url: &str, source: reqwest::Error) -> ClientError {
        ClientError::Transport {
            url: url.to_owned(),
            source,
        }
    }

    /// The answer's body as `T` when it succeeded, the server's refusal otherwise.
    async fn answer<T: DeserializeOwned>(
        &self,
        url: &str,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|source| self.transport(url, source))?;
        let unexpected = |detail: String| ClientError::Unexpected {
            url: url.to_owned(),
            status: status.as_u16(),
            detail,
        };
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| unexpected(e.to_string()));
        }
        if let Ok(refusal) = serde_json::from_slice::<CommandError>(&body) {
            return Err(ClientError::Command(refusal));
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(refusal) => Err(ClientError::Refused {
                status: status.as_u16(),
                kind: refusal.error,
                message: refusal.message,
            }),
            Err(_) => Err(unexpected(
                String::from_utf8_lossy(&body).chars().take(200).collect(),
            )),
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| self.transport(&url, source))?;
        self.answer(&url, response).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let mut request = self.http.post(&url).json(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|source| self.transport(&url, source))?;
        self.answer(&url, response).await
    }

    /// `GET /api/status`.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.get("/api/status").await
    }

    /// `GET /readyz`: whether this replica is the active one (a passive one answers 503 with
    /// the same body).
    pub async fn readiness(&self) -> Result<Readiness, ClientError> {
        let url = self.url("/readyz");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| self.transport(&url, source))?;
        let status = response.status();
        if status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE {
            let body = response
                .bytes()
                .await
                .map_err(|source| self.transport(&url, source))?;
            return serde_json::from_slice(&body).map_err(|e| ClientError::Unexpected {
                url: url.clone(),
                status: status.as_u16(),
                detail: e.to_string(),
            });
        }
        self.answer(&url, response).await
    }

    /// `POST /api/plans`: proposes a switchover of `components` (every node when empty) to
    /// `to`; the plan waits for approval.
    pub async fn propose(
        &self,
        to: RegionName,
        components: Vec<NodeName>,
        by: Option<String>,
    ) -> Result<Plan, ClientError> {
        let body = ProposeRequest { to, components, by };
        let outcome: CommandOutcome = self.post("/api/plans", &body).await?;
        Ok(outcome.plan)
    }

    /// `POST /api/plans/{id}/approve`.
    pub async fn approve(
        &self,
        plan: &PlanId,
        acknowledge_loss: bool,
        by: Option<String>,
    ) -> Result<Plan, ClientError> {
        let body = ApproveRequest {
            acknowledge_loss,
            by,
        };
        let outcome: CommandOutcome = self
            .post(&format!("/api/plans/{plan}/approve"), &body)
            .await?;
        Ok(outcome.plan)
    }

    /// `POST /api/plans/{id}/reject`.
    pub async fn reject(&self, plan: &PlanId, by: Option<String>) -> Result<Plan, ClientError> {
        let body = RejectRequest { by };
        let outcome: CommandOutcome = self
            .post(&format!("/api/plans/{plan}/reject"), &body)
            .await?;
        Ok(outcome.plan)
    }

    /// Reads the status until plan `id` satisfies `done` (e.g. `|p| !p.state.is_open()`), at
    /// most `timeout`; the error says what the plan was last.
    pub async fn wait_for_plan(
        &self,
        id: &PlanId,
        done: impl Fn(&Plan) -> bool,
        timeout: Duration,
    ) -> Result<Plan, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status().await?;
            let plan = status.plans.into_iter().find(|plan| &plan.id == id);
            let last = match plan {
                Some(plan) if done(&plan) => return Ok(plan),
                Some(plan) => plan.state.name().to_owned(),
                None => "not in the controller's status".to_owned(),
            };
            if tokio::time::Instant::now() + WAIT_POLL_INTERVAL > deadline {
                return Err(ClientError::WaitTimedOut {
                    plan: id.clone(),
                    waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    last,
                });
            }
            tokio::time::sleep(WAIT_POLL_INTERVAL).await;
        }
    }
}
