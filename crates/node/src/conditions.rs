//! Readiness as a set of named failing conditions ("database", "instance", ...). The node is
//! ready only when none fails; `/readyz` and gRPC health report the joined reasons. Keeping
//! conditions separate stops one subsystem's recovery from masking another's failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::health::Health;

/// How long a database call may run before the node reports itself not ready while it waits.
/// A healthy commit takes milliseconds, a large batch on a slow disk some hundreds; a call
/// still running after this is as good as an outage to the node's clients, who wait with it.
pub const DATABASE_STALL: Duration = Duration::from_secs(1);

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

    /// The readiness of a node that has just started: failing `startup` ("starting") until
    /// the role clears it once it serves, so no probe sees a half-started node as ready.
    pub fn starting(health: Health) -> Self {
        let readiness = Self::new(health);
        readiness.fail("startup", "starting");
        readiness
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

    /// Awaits `call` (a database call); if it is still running after `after`, fails
    /// `condition` with `reason()`. The caller settles the condition once the call returns, as
    /// it does after every database call: clears it on success, sets the error otherwise.
    ///
    /// Why: an unreachable PostgreSQL server does not make a call fail at once. The pool keeps
    /// retrying the connection for its whole acquire timeout (seconds), and a server that
    /// stopped answering can hold a query far longer, so without this a short outage would
    /// never show in `/readyz` although every request waits on it.
    pub async fn fail_while_stalled<T>(
        &self,
        condition: &'static str,
        after: Duration,
        reason: impl FnOnce() -> String,
        call: impl Future<Output = T>,
    ) -> T {
        tokio::pin!(call);
        tokio::select! {
            biased;
            done = &mut call => return done,
            () = tokio::time::sleep(after) => {}
        }
        let reason = reason();
        // Logged when the condition starts failing, not on every stalled retry of an outage.
        let was_failing = self.is_failing(condition);
        if self.fail(condition, reason.clone()) && !was_failing {
            tracing::warn!(condition, "{reason}");
        }
        call.await
    }

    /// [`Self::fail_while_stalled`] for a database call: fails the `database` condition once
    /// the call has run for [`DATABASE_STALL`].
    pub async fn watch_database_call<T>(&self, call: impl Future<Output = T>) -> T {
        self.fail_while_stalled(
            "database",
            DATABASE_STALL,
            || {
                format!(
                    "a database call has been waiting for over {} ms (database unreachable?)",
                    DATABASE_STALL.as_millis()
                )
            },
            call,
        )
        .await
    }

    /// Whether `condition` is failing now.
    pub fn is_failing(&self, condition: &str) -> bool {
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.contains_key(condition)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stalled_call_fails_its_condition_until_the_caller_settles_it() {
        let conditions = Conditions::new(Health::new());
        let stalled = conditions.fail_while_stalled(
            "database",
            Duration::from_millis(20),
            || "stalled".to_owned(),
            tokio::time::sleep(Duration::from_millis(300)),
        );
        tokio::pin!(stalled);
        // Still running past the threshold: failing, while the call goes on.
        assert!(
            tokio::time::timeout(Duration::from_millis(150), &mut stalled)
                .await
                .is_err()
        );
        assert_eq!(conditions.reason().as_deref(), Some("database: stalled"));
        stalled.await;
        assert!(conditions.is_failing("database"), "the caller settles it");
        conditions.clear("database");
        assert_eq!(conditions.reason(), None);
    }

    #[tokio::test]
    async fn a_prompt_call_changes_nothing() {
        let conditions = Conditions::new(Health::new());
        let answer = conditions
            .fail_while_stalled(
                "database",
                Duration::from_secs(5),
                || unreachable!("not stalled"),
                async { 42 },
            )
            .await;
        assert_eq!(answer, 42);
        assert!(!conditions.is_failing("database"));
        assert_eq!(conditions.reason(), None);
    }
}
