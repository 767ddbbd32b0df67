//! The fork alarm every member (participant, mediator, topology manager) raises the same way
//! when its sequencer client reports a fork: the member processed events the sequencer's
//! history no longer has (a database failover that lost asynchronously replicated events), or
//! the sequencer serves events that do not follow what the member processed.
//!
//! A forked member must never go on processing, but it must not exit either: an exited process
//! hides the alarm from whoever looks at it (and a supervisor would restart it into the same
//! fork, in a loop). So the member halts its processing and keeps its admin endpoint up, with
//! three signs an operator and a monitor see: one ERROR log line, `/readyz` not ready with the
//! `fork` condition (naming the member's last event and what the sequencer serves now), and
//! the gauge `meridian_fork_detected` at 1. `/status` carries the same under `fork`.

use std::sync::{Arc, Mutex, PoisonError};

use meridian_core::sequencing::{ForkError, ForkPoint};
use meridian_core::Timestamp;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::conditions::Conditions;
use crate::metrics::RoleRegistry;

/// The readiness condition a fork fails.
pub const CONDITION: &str = "fork";

/// One member's fork alarm. Clones share the state.
#[derive(Clone)]
pub struct ForkAlarm {
    readiness: Conditions,
    detected: Gauge,
    /// The fork and the role's own details about it (the participant's lost transactions).
    raised: Arc<Mutex<Option<(ForkError, Value)>>>,
}

impl std::fmt::Debug for ForkAlarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkAlarm")
            .field("raised", &self.raised())
            .finish_non_exhaustive()
    }
}

impl ForkAlarm {
    /// Registers `meridian_fork_detected` (one name for every role, so one alert rule covers
    /// them all; the process says which role it is).
    pub fn register(registry: &mut Registry, readiness: Conditions) -> Self {
        let mut r = RoleRegistry::new(registry, "fork");
        let detected = r.gauge(
            "detected",
            "1 once this member detected a fork of the sequencer's history and halted",
        );
        Self {
            readiness,
            detected,
            raised: Arc::default(),
        }
    }

    /// Raises the alarm: logs it (once per fork), fails readiness, sets the gauge; `details`
    /// (a JSON object, or null) joins the fork in `/status`. The caller then stops processing
    /// ([`ForkAlarm::halt`]).
    pub fn raise(&self, member: &str, fork: &ForkError, details: Value) {
        {
            let mut raised = self.raised.lock().unwrap_or_else(PoisonError::into_inner);
            if raised.as_ref().map(|(f, _)| f) != Some(fork) {
                tracing::error!(
                    %member,
                    last_processed = ?fork.last_processed(),
                    fork_point = ?fork.fork_point(),
                    %fork,
                    "FORK: halting; this member processed a history the sequencer no longer \
                     serves; see the fork repair in docs/operations.md"
                );
            }
            *raised = Some((fork.clone(), details));
        }
        self.readiness.fail(CONDITION, reason(fork));
        self.detected.set(1);
    }

    /// The fork raised, if any.
    pub fn raised(&self) -> Option<ForkError> {
        self.raised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(fork, _)| fork.clone())
    }

    /// The `fork` object of `/status`: `null` until a fork is raised.
    pub fn status(&self) -> Value {
        let raised = self.raised.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((fork, details)) = raised.as_ref() else {
            return Value::Null;
        };
        let mut status = status_of(fork);
        if let (Some(status), Some(details)) = (status.as_object_mut(), details.as_object()) {
            status.extend(details.clone());
        }
        status
    }

    /// Halts the caller until the node shuts down: the forked member processes nothing more,
    /// while the admin endpoint keeps showing the alarm.
    pub async fn halt(&self, shutdown: &CancellationToken) {
        shutdown.cancelled().await;
    }
}

/// The `/readyz` reason: the sequencer client's text names the member's last event and what
/// the sequencer serves now; the rest says what it means and where to look.
pub fn reason(fork: &ForkError) -> String {
    format!(
        "{fork}; processing halted (never continues on a forked history); the operator repairs \
         it as docs/operations.md says (Fork after a region loss)"
    )
}

fn micros(t: Option<Timestamp>) -> Value {
    t.map_or(Value::Null, |t| json!(t.as_micros()))
}

/// The JSON form of a fork: the last event the member processed, the last one both histories
/// share (`null` when none or unknown, `fork_point_known` tells which) and the text.
pub fn status_of(fork: &ForkError) -> Value {
    let (known, shared) = match fork.fork_point() {
        ForkPoint::Shared(shared) => (true, shared),
        ForkPoint::Unknown => (false, None),
    };
    let sequencer_serves = match *fork {
        ForkError::UnknownLastEvent {
            sequencer_latest, ..
        } => json!({ "latest_event_us": micros(sequencer_latest) }),
        ForkError::PreviousMismatch {
            timestamp,
            claimed_previous,
            ..
        } => json!({
            "event_us": timestamp.as_micros(),
            "previous_event_us": micros(claimed_previous),
        }),
        ForkError::NotIncreasing { timestamp, .. } => json!({ "event_us": timestamp.as_micros() }),
    };
    json!({
        "detected": true,
        "last_processed_us": micros(fork.last_processed()),
        "fork_point_known": known,
        "last_shared_event_us": micros(shared),
        "sequencer_serves": sequencer_serves,
        "reason": fork.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    #[test]
    fn raising_fails_readiness_and_sets_the_gauge() {
        let readiness = Conditions::new(Health::new());
        let mut registry = Registry::default();
        let alarm = ForkAlarm::register(&mut registry, readiness.clone());
        assert_eq!(alarm.status(), Value::Null);
        let fork = ForkError::UnknownLastEvent {
            last_processed: Timestamp::from_micros(30),
            last_shared: Some(Timestamp::from_micros(20)),
            sequencer_latest: Some(Timestamp::from_micros(50)),
        };
        alarm.raise("participant1", &fork, json!({ "lost_transactions": [] }));
        let failing = readiness.reason().expect("a fork makes the node not ready");
        assert!(failing.contains("fork"), "{failing}");
        assert!(
            failing.contains("30us") && failing.contains("50us"),
            "{failing}"
        );
        assert_eq!(alarm.detected.get(), 1);
        let status = alarm.status();
        assert_eq!(status["last_processed_us"], 30);
        assert_eq!(status["last_shared_event_us"], 20);
        assert_eq!(status["sequencer_serves"]["latest_event_us"], 50);
        assert_eq!(status["lost_transactions"], json!([]));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encodes");
        assert!(text.contains("fork_detected 1"), "{text}");
    }
}
