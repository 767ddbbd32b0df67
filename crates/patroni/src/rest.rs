//! Patroni's REST API, the parts the lab uses: `GET /leader` (does this member hold the leader
//! key), `GET /cluster` (every member's role, state and timeline as the DCS has them) and
//! `POST /switchover`. Every request is bounded; an unreachable member (killed, frozen) is an
//! answer, not a hang.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

use crate::{MemberName, PatroniError};

/// Loopback answers in milliseconds; a frozen member must not stall a poll loop.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);
/// Patroni answers a switchover only after it polled the result for up to ~20 s.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(60);

/// A member's role as `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRole {
    Leader,
    SyncStandby,
    Replica,
    Other(String),
}

/// One member as `GET /cluster` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub role: MemberRole,
    /// `running`, `streaming`, `stopped`, `starting`, `creating replica`, ...
    pub state: String,
    pub timeline: Option<u64>,
    /// Replication lag in bytes; `None` where Patroni says `unknown` or for the leader.
    pub lag_bytes: Option<u64>,
}

#[derive(Deserialize)]
struct ClusterBody {
    members: Vec<MemberBody>,
}

#[derive(Deserialize)]
struct MemberBody {
    name: String,
    role: String,
    #[serde(default)]
    state: String,
    timeline: Option<u64>,
    /// A number, or the string `unknown`.
    lag: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Rest {
    http: reqwest::Client,
}

impl Rest {
    pub fn new() -> Self {
        Self {
            http: reqwest::Client::new(),
        }
    }

    /// Whether the member on `api_port` says it holds the leader key (`GET /leader` is 200).
    /// `None` when it does not answer at all.
    pub async fn holds_leader_key(&self, api_port: u16) -> Option<bool> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{api_port}/leader"))
            .timeout(QUERY_TIMEOUT)
            .send()
            .await
            .ok()?;
        Some(response.status() == reqwest::StatusCode::OK)
    }

    /// The cluster as the member on `api_port` sees it in the DCS.
    pub async fn cluster(&self, api_port: u16) -> anyhow::Result<Vec<MemberView>> {
        let body: ClusterBody = self
            .http
            .get(format!("http://127.0.0.1:{api_port}/cluster"))
            .timeout(QUERY_TIMEOUT)
            .send()
            .await
            .context("GET /cluster")?
            .error_for_status()
            .context("GET /cluster")?
            .json()
            .await
            .context("decoding GET /cluster")?;
        Ok(body.members.into_iter().map(MemberView::from).collect())
    }

    /// Asks the leader on `api_port` to hand over to `candidate` (or to the synchronous
    /// standby Patroni picks). Patroni answers once the new leader holds the key.
    pub async fn switchover(
        &self,
        api_port: u16,
        leader: &MemberName,
        candidate: Option<&MemberName>,
    ) -> Result<String, PatroniError> {
        let mut request = serde_json::json!({ "leader": leader.as_str() });
        if let Some(candidate) = candidate {
            request["candidate"] = candidate.as_str().into();
        }
        let response = self
            .http
            .post(format!("http://127.0.0.1:{api_port}/switchover"))
            .timeout(SWITCHOVER_TIMEOUT)
            .json(&request)
            .send()
            .await
            .context("POST /switchover")?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::OK {
            return Err(PatroniError::SwitchoverRefused {
                member: leader.clone(),
                status: status.as_u16(),
                body,
            });
        }
        Ok(body)
    }
}

impl From<MemberBody> for MemberView {
    fn from(body: MemberBody) -> Self {
        let role = match body.role.as_str() {
            "leader" => MemberRole::Leader,
            "sync_standby" => MemberRole::SyncStandby,
            "replica" => MemberRole::Replica,
            other => MemberRole::Other(other.to_owned()),
        };
        MemberView {
            name: body.name,
            role,
            state: body.state,
            timeline: body.timeline,
            lag_bytes: body.lag.and_then(|lag| lag.as_u64()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_patronis_cluster_view() {
        // As Patroni 3.0.2 answered on this machine (api_url and host trimmed).
        let text = r#"{"members": [
            {"name": "m1", "role": "leader", "state": "running", "port": 14001, "timeline": 1},
            {"name": "m2", "role": "sync_standby", "state": "running", "timeline": 1, "lag": 0},
            {"name": "m3", "role": "replica", "state": "creating replica", "lag": "unknown"}
        ]}"#;
        let body: ClusterBody = serde_json::from_str(text).expect("decodes");
        let members: Vec<MemberView> = body.members.into_iter().map(MemberView::from).collect();
        assert_eq!(members[0].role, MemberRole::Leader);
        assert_eq!(members[1].role, MemberRole::SyncStandby);
        assert_eq!(members[1].lag_bytes, Some(0));
        assert_eq!(members[2].role, MemberRole::Replica);
        assert_eq!(members[2].state, "creating replica");
        assert_eq!(members[2].timeline, None);
        assert_eq!(members[2].lag_bytes, None);
    }
}
