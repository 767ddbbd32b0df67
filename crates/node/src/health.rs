//! A node's own verdict on whether it can serve: one shared, cheaply cloned handle that the
//! node's tasks update (ready, not ready with a reason, fatally failed) and that every outward
//! face reads — `/readyz` and `/livez` for load balancers and Kubernetes, `/status` for
//! operators, and gRPC health through [`follow_grpc_health`] (built on [`Health::subscribe`]).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Longest reason kept, in bytes. Reasons often carry an error's text, which can be long (a
/// whole error chain, a SQL statement); they end up in every probe response and log line.
pub const MAX_REASON_BYTES: usize = 512;

/// Whether the node can serve, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Readiness {
    /// Serving: `/readyz` is 200.
    Ready,
    /// Alive but not serving (starting, passive replica, lost its database): `/readyz` is 503,
    /// `/livez` stays 200 so the process is not restarted.
    NotReady { reason: String },
    /// Fatally broken: `/livez` and `/readyz` are 503 and the process should be restarted.
    /// Sticky: once failed, a node does not become ready or merely not-ready again.
    Failed { reason: String },
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    pub fn is_failed(&self) -> bool {
        matches!(self, Readiness::Failed { .. })
    }

    /// The reason for not being ready, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Readiness::Ready => None,
            Readiness::NotReady { reason } | Readiness::Failed { reason } => Some(reason),
        }
    }
}

/// The readiness and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    pub readiness: Readiness,
    /// When `readiness` last changed, for measuring how long it has held.
    pub since: Instant,
    /// The same moment on the wall clock, for showing to people and other machines.
    pub since_wall: SystemTime,
}

impl HealthSnapshot {
    /// Milliseconds since `readiness` last changed.
    pub fn age_ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// `since_wall` as milliseconds since the Unix epoch (0 if the clock is before 1970).
    pub fn since_unix_ms(&self) -> u64 {
        self.since_wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Shared readiness state of a node. Clones share the same state.
///
/// A new `Health` starts not ready ("starting"). Setting the state it already has (the same
/// readiness and reason) changes nothing, so `since` keeps measuring how long the current state
/// has held even when a task re-asserts it on every loop.
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<HealthSnapshot>>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// A new state: not ready, reason "starting".
    pub fn new() -> Self {
        let (state, _) = watch::channel(HealthSnapshot {
            readiness: Readiness::NotReady {
                reason: "starting".to_owned(),
            },
            since: Instant::now(),
            since_wall: SystemTime::now(),
        });
        Health {
            state: Arc::new(state),
        }
    }

    /// The node can serve. Ignored once failed.
    pub fn set_ready(&self) {
        self.set(Readiness::Ready);
    }

    /// The node is alive but cannot serve. Ignored once failed.
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.set(Readiness::NotReady {
            reason: bounded(reason.into()),
        });
    }

    /// The node is fatally broken and should be restarted; `/livez` turns 503. The first
    /// failure's reason is kept: later ones are usually consequences of it.
    pub fn set_failed(&self, reason: impl Into<String>) {
        self.set(Readiness::Failed {
            reason: bounded(reason.into()),
        });
    }

    pub fn is_ready(&self) -> bool {
        self.state.borrow().readiness.is_ready()
    }

    pub fn is_failed(&self) -> bool {
        self.state.borrow().readiness.is_failed()
    }

    pub fn readiness(&self) -> Readiness {
        self.state.borrow().readiness.clone()
    }

    /// The readiness together with when it last changed.
    pub fn snapshot(&self) -> HealthSnapshot {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change, e.g. to drive `grpc.health.v1.Health`. Its current
    /// value is the present state.
    pub fn subscribe(&self) -> watch::Receiver<HealthSnapshot> {
        self.state.subscribe()
    }

    fn set(&self, next: Readiness) {
        let changed = self.state.send_if_modified(|current| {
            if current.readiness == next || current.readiness.is_failed() {
                return false;
            }
            *current = HealthSnapshot {
                readiness: next.clone(),
                since: Instant::now(),
                since_wall: SystemTime::now(),
            };
            true
        });
        // Logged outside the lock so a slow log writer cannot stall readers such as probes.
        if changed {
            match &next {
                Readiness::Ready => tracing::info!("node is ready"),
                Readiness::NotReady { reason } => tracing::info!(%reason, "node is not ready"),
                Readiness::Failed { reason } => tracing::error!(%reason, "node has failed"),
            }
        }
    }
}

/// A node's `grpc.health.v1.Health` service, kept in step with `health` for `services` by a
/// spawned [`follow_grpc_health`] task until `shutdown`. Call it inside a Tokio runtime.
pub fn grpc_health_service(
    health: &Health,
    services: Vec<&'static str>,
    shutdown: &CancellationToken,
) -> HealthServer<impl tonic_health::pb::health_server::Health> {
    let (reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(follow_grpc_health(
        health.clone(),
        reporter,
        services,
        shutdown.clone(),
    ));
    service
}

/// Mirrors readiness into `grpc.health.v1.Health` until `shutdown` (or until `health` is gone):
/// each name in `services` (a gRPC service's `NamedService::NAME`, or `""` for the server as a
/// whole) reports SERVING exactly while the node is ready. Every node runs this so a gRPC
/// health probe and `/readyz` can never disagree.
pub async fn follow_grpc_health(
    health: Health,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let mut changes = health.subscribe();
    loop {
        // Read the state afresh rather than from `changes`: it is the latest, so a burst of
        // changes ends with the right status even if some were not seen one by one.
        let status = if health.is_ready() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in &services {
            reporter.set_service_status(service, status).await;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

fn bounded(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_not_ready_and_flips() {
        let health = Health::new();
        assert_eq!(
            health.readiness(),
            Readiness::NotReady {
                reason: "starting".into()
            }
        );
        health.set_ready();
        assert!(health.is_ready());
        health.set_not_ready("lost database");
        assert_eq!(health.readiness().reason(), Some("lost database"));
        assert!(!health.is_ready());
    }

    #[test]
    fn failed_is_sticky_and_keeps_first_reason() {
        let health = Health::new();
        health.set_failed("disk full");
        health.set_ready();
        health.set_not_ready("x");
        health.set_failed("later");
        assert_eq!(
            health.readiness(),
            Readiness::Failed {
                reason: "disk full".into()
            }
        );
        assert!(health.is_failed());
    }

    #[test]
    fn repeating_a_state_keeps_since() {
        let health = Health::new();
        health.set_ready();
        let first = health.snapshot();
        std::thread::sleep(std::time::Duration::from_millis(5));
        health.set_ready();
        assert_eq!(health.snapshot().since, first.since);
        health.set_not_ready("a");
        assert!(health.snapshot().since > first.since);
    }

    #[test]
    fn subscribers_see_changes() {
        let health = Health::new();
        let mut rx = health.subscribe();
        assert!(!rx.borrow_and_update().readiness.is_ready());
        health.set_ready();
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().readiness.is_ready());
        health.set_ready();
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn long_reasons_are_truncated_on_a_char_boundary() {
        let health = Health::new();
        health.set_not_ready("é".repeat(MAX_REASON_BYTES));
        let readiness = health.readiness();
        let reason = readiness.reason().unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(reason.ends_with('…'));
    }

    #[test]
    fn serializes_with_status_tag() {
        let json = serde_json::to_value(Readiness::NotReady {
            reason: "passive".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"status": "not_ready", "reason": "passive"})
        );
        assert_eq!(
            serde_json::to_value(Readiness::Ready).unwrap(),
            serde_json::json!({"status": "ready"})
        );
    }
}
