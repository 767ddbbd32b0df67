//! The one way a node waits for something it cannot work without — its database, the topology
//! manager, the sequencer: try, and while it fails, say so on `/readyz` and try again after a
//! [`Backoff`] delay, until it works, the node stops, or the retry's limit is reached.
//!
//! Why readiness-aware: an operator (or a load balancer) looking at a node that does not serve
//! must see *what* it waits for and the last error, not just "not ready". Each wait reports
//! under its own readiness condition ("database", "topology", "sequencer", ...), so one
//! dependency coming back does not hide another one still missing, and clears it on success.
//!
//! Bounded: every [`Retry`] has a limit — the backoff's attempts, optionally a deadline — and
//! a stop token. Start-up waits use [`UNTIL_STOPPED`]: a node cannot serve without what it
//! waits for, and an operator who starts the database after the node must not have to restart
//! the node, so they wait until the node is stopped (the attempts cap is then beyond any
//! process's life, but still a number).

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use meridian_core::backoff::Backoff;
use tokio_util::sync::CancellationToken;

use crate::conditions::Conditions;

/// The backoff of a node's start-up and recovery waits: from 100 ms up to 2 s between
/// attempts (a database or sequencer failover takes seconds; a longer cap would only delay
/// noticing its end), and as many attempts as the node lives.
pub const UNTIL_STOPPED: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
    max_attempts: u32::MAX,
};

/// Every attempt a bounded retry allowed has failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: gave up after {attempts} attempts: {last}")]
pub struct GaveUp<E: Display> {
    pub what: String,
    pub attempts: u32,
    /// The last attempt's error.
    pub last: E,
}

/// How a node retries: where it reports, when it stops, how it spaces attempts.
#[derive(Clone)]
pub struct Retry {
    readiness: Conditions,
    stop: CancellationToken,
    backoff: Backoff,
    deadline: Option<Duration>,
}

impl Retry {
    /// Retries reporting on `readiness`, giving up (`Ok(None)`) once `stop` is cancelled, with
    /// the [`UNTIL_STOPPED`] backoff.
    pub fn new(readiness: &Conditions, stop: &CancellationToken) -> Self {
        Self {
            readiness: readiness.clone(),
            stop: stop.clone(),
            backoff: UNTIL_STOPPED,
            deadline: None,
        }
    }

    /// Spaces and bounds the attempts with `backoff` instead.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Gives up once `deadline` has passed since the first attempt (no attempt starts later).
    pub fn within(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    pub fn readiness(&self) -> &Conditions {
        &self.readiness
    }

    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// Runs `attempt` until it succeeds (`Ok(Some)`, and `condition` is cleared), `stop` is
    /// cancelled (`Ok(None)`; an attempt in progress is dropped), or the limit is reached
    /// ([`GaveUp`] with the last error). While attempts fail, `condition` fails with
    /// "`what`: error" (just the error when `what` is empty), and the first failure of a run of
    /// equal ones is logged.
    ///
    /// An attempt that fails because the stop token was cancelled meanwhile (say, it found
    /// this replica fenced and cancelled it) reports nothing: the node is not waiting for
    /// anything any more.
    pub async fn until<T, E, F, Fut>(
        &self,
        condition: &'static str,
        what: &str,
        mut attempt: F,
    ) -> Result<Option<T>, GaveUp<E>>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = tokio::time::Instant::now();
        let mut delays = self.backoff.delays();
        let mut attempts = 0u32;
        loop {
            attempts = attempts.saturating_add(1);
            let result = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(None),
                result = attempt() => result,
            };
            let error = match result {
                Ok(value) => {
                    self.readiness.clear(condition);
                    return Ok(Some(value));
                }
                Err(_) if self.stop.is_cancelled() => return Ok(None),
                Err(error) => error,
            };
            let reason = if what.is_empty() {
                error.to_string()
            } else {
                format!("{what}: {error}")
            };
            if self.readiness.fail(condition, reason.clone()) {
                tracing::warn!(condition, "{reason}; retrying");
            }
            let delay = delays.next().filter(|delay| {
                self.deadline
                    .is_none_or(|deadline| started.elapsed() + *delay < deadline)
            });
            let Some(delay) = delay else {
                return Err(GaveUp {
                    what: what.to_owned(),
                    attempts,
                    last: error,
                });
            };
            tokio::select! {
                () = self.stop.cancelled() => return Ok(None),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::health::Health;

    /// A retry with millisecond delays that gives up after `max_attempts`, and the readiness
    /// it reports to.
    fn quick_retry(max_attempts: u32) -> (Retry, Conditions) {
        let readiness = Conditions::new(Health::new());
        let retry = Retry::new(&readiness, &CancellationToken::new()).with_backoff(Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_attempts,
        });
        (retry, readiness)
    }

    #[tokio::test]
    async fn reports_the_condition_while_waiting_and_clears_it_on_success() {
        let (retry, readiness) = quick_retry(10);
        let calls = AtomicU32::new(0);
        let seen = std::sync::Mutex::new(Vec::new());
        let value = retry
            .until("topology", "waiting for the topology manager", || {
                let call = calls.fetch_add(1, Ordering::Relaxed);
                seen.lock().unwrap().push(readiness.reason());
                async move {
                    if call < 2 {
                        Err("connection refused")
                    } else {
                        Ok(call)
                    }
                }
            })
            .await
            .expect("within the attempts");
        assert_eq!(value, Some(2));
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen[0], None);
        assert_eq!(
            seen[2].as_deref(),
            Some("topology: waiting for the topology manager: connection refused")
        );
        assert_eq!(readiness.reason(), None, "cleared on success");
    }

    #[tokio::test]
    async fn gives_up_after_the_attempts_with_the_last_error() {
        let (retry, readiness) = quick_retry(3);
        let calls = AtomicU32::new(0);
        let gave_up = retry
            .until("database", "", || {
                let call = calls.fetch_add(1, Ordering::Relaxed);
                async move { Err::<(), _>(format!("failure {call}")) }
            })
            .await
            .expect_err("never succeeds");
        assert_eq!(gave_up.attempts, 3);
        assert_eq!(gave_up.last, "failure 2");
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(readiness.reason().as_deref(), Some("database: failure 2"));
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let readiness = Conditions::new(Health::new());
        let stop = CancellationToken::new();
        let retry = Retry::new(&readiness, &stop)
            .with_backoff(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(20),
                max_attempts: u32::MAX,
            })
            .within(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let gave_up = retry
            .until("instance", "waiting", || async { Err::<(), _>("in use") })
            .await
            .expect_err("never succeeds");
        assert!(gave_up.attempts >= 2, "{gave_up}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn stops_when_told_and_reports_nothing_for_a_stopping_attempt() {
        let readiness = Conditions::new(Health::new());
        let stop = CancellationToken::new();
        let retry = Retry::new(&readiness, &stop);
        let outcome = retry
            .until("database", "writing", || {
                stop.cancel();
                async { Err::<(), _>("fenced") }
            })
            .await
            .expect("stopped, not exhausted");
        assert_eq!(outcome, None);
        assert_eq!(readiness.reason(), None);

        let pending = Retry::new(&readiness, &stop)
            .until("database", "", std::future::pending::<Result<(), String>>)
            .await
            .expect("stopped");
        assert_eq!(pending, None, "an attempt in progress is dropped at stop");
    }
}
