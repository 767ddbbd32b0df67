//! Readiness as a set of named failing conditions ("database", "instance", ...). The node is
//! ready only when none fails; `/readyz` and gRPC health report the joined reasons. Keeping
//! conditions separate stops one subsystem's recovery from masking another's failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::health::Health;

#[derive(Clone)]
pub struct Conditions {
    health: Health,
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Conditions {
    pub fn new(health: Health) -> Self {
        Self {
            health,
            failing: Arc::default(),
        }
    }

    /// Marks a condition failing. Returns true when this changed the reported state (new
    /// condition or new reason), so callers can log once per incident.
    pub fn fail(&self, condition: &'static str, reason: impl Into<String>) -> bool {
        let reason = reason.into();
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        let changed = failing.get(condition) != Some(&reason);
        if changed {
            failing.insert(condition, reason);
            self.publish(&failing);
        }
        changed
    }

    pub fn clear(&self, condition: &'static str) {
        let mut failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        if failing.remove(condition).is_some() {
            self.publish(&failing);
        }
    }

    /// The joined reasons of all failing conditions, or `None` when ready.
    pub fn reason(&self) -> Option<String> {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        (!failing.is_empty()).then(|| joined(&failing))
    }

    fn publish(&self, failing: &BTreeMap<&'static str, String>) {
        if failing.is_empty() {
            self.health.set_ready();
        } else {
            self.health.set_not_ready(joined(failing));
        }
    }
}

fn joined(failing: &BTreeMap<&'static str, String>) -> String {
    failing
        .iter()
        .map(|(condition, reason)| format!("{condition}: {reason}"))
        .collect::<Vec<_>>()
        .join("; ")
}
