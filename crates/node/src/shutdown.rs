//! Turning the operator's stop signals into one cancellation token that every task of a node
//! watches, so SIGTERM (orchestrators, `kill`) and Ctrl-C (a terminal) both start the same
//! graceful shutdown. A second signal exits at once: after the first, the process no longer has
//! the default die-on-signal behaviour, and an operator must still be able to stop a shutdown
//! that hangs.
//!
//! A replicated node does not stop on the first signal as it is: [`stop_after_hand_over`]
//! turns the signal into the same step-down `meridian admin switchover` asks for, so an
//! active replica stops accepting, finishes (and persists) what it accepted, releases the
//! lease and only then stops. Without that, a rolling restart hands the new active replica
//! submissions whose fate it can only learn by waiting out their max sequencing time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// The clock of a node's periodic background task: a tick every `period` until the node's
/// shutdown token is cancelled. A late tick delays the next rather than bursting, so a slow
/// round is not followed by a catch-up storm.
#[derive(Debug)]
pub struct Ticker {
    interval: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Ticker {
    /// The first tick is immediate. Must be called from within a Tokio runtime.
    pub fn new(period: Duration, shutdown: CancellationToken) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Waits for the next tick: `true`, or `false` once shutdown is cancelled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            _ = self.shutdown.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// How long a stopping replica may take to hand over (drain, release the lease, wind its term
/// down) before it stops anyway. The participant's own drain is bounded at 5 s; this leaves
/// room for the term to end after it, and stays well inside the 30 s that orchestrators
/// (Kubernetes' default grace period) wait before SIGKILL.
pub const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(12);
/// How often a stopping replica checks whether its hand-over is done.
const HAND_OVER_POLL: Duration = Duration::from_millis(20);

/// A replicated node's graceful hand-over, the hooks `meridian admin switchover` uses.
#[derive(Clone)]
pub struct HandOver {
    /// Asks this replica to step down; `false` when it is not active (nothing to hand over).
    pub step_down: Arc<dyn Fn() -> bool + Send + Sync>,
    /// Whether this replica is still active (holding the lease, possibly draining).
    pub is_active: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// The token a node's tasks stop on, given the operator's `stop` token (see
/// [`shutdown_token`]). Without `hand_over` it is cancelled when `stop` is. With one, a stop
/// first asks the replica to step down and waits — at most [`HAND_OVER_TIMEOUT`] — until it
/// is passive again, so the lease is released only after the work in flight was answered;
/// a passive replica stops at once. Cancelling the returned token (a fatal error) does not
/// touch `stop`. Must be called from within a Tokio runtime.
pub fn stop_after_hand_over(
    stop: CancellationToken,
    hand_over: Option<HandOver>,
) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            // Stopped for another reason: nothing left to hand over.
            () = cancel.cancelled() => return,
        }
        if let Some(hand_over) = hand_over {
            hand_over_within(&hand_over, HAND_OVER_TIMEOUT, &cancel).await;
        }
        cancel.cancel();
    });
    shutdown
}

/// Steps an active replica down and waits (bounded by `bound`, or until `stopped`) until it
/// is passive.
async fn hand_over_within(hand_over: &HandOver, bound: Duration, stopped: &CancellationToken) {
    if !(hand_over.step_down)() {
        return;
    }
    let started = Instant::now();
    tracing::info!(
        bound_ms = bound.as_millis() as u64,
        "stopping: stepping down first (finishing the work in flight, then releasing the lease)"
    );
    while (hand_over.is_active)() {
        if started.elapsed() >= bound {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "stopping: the hand-over did not finish in time; stopping anyway"
            );
            return;
        }
        tokio::select! {
            () = stopped.cancelled() => return,
            () = tokio::time::sleep(HAND_OVER_POLL) => {}
        }
    }
    tracing::info!(
        hand_over_ms = started.elapsed().as_millis() as u64,
        "stopping: handed over; this replica is passive"
    );
}

/// Exit status for a forced exit on a second signal: 128 + SIGINT, what shells report for
/// Ctrl-C.
const FORCED_EXIT_CODE: i32 = 130;

/// Returns a token that is cancelled when the process receives SIGTERM or SIGINT (Ctrl-C).
///
/// The signal handlers are installed before this returns, so a signal sent right afterwards is
/// not lost. A second signal after the first exits the process immediately with status 130.
///
/// Must be called from within a Tokio runtime. If a handler cannot be installed (which needs
/// the OS to refuse a `sigaction`), that is logged and the other signal still works.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let signals = Signals::install();
    let cancel = token.clone();
    tokio::spawn(async move {
        let mut signals = signals;
        let first = signals.next().await;
        tracing::info!(
            signal = first,
            "received stop signal; shutting down gracefully"
        );
        cancel.cancel();
        let second = signals.next().await;
        tracing::warn!(
            signal = second,
            "received second stop signal; exiting immediately"
        );
        std::process::exit(FORCED_EXIT_CODE);
    });
    token
}

#[cfg(unix)]
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(sig) => Some(sig),
            Err(err) => {
                tracing::error!(signal = name, error = %err, "cannot install signal handler");
                None
            }
        };
        Signals {
            term: install(SignalKind::terminate(), "SIGTERM"),
            int: install(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Waits for the next SIGTERM or SIGINT and names it. Never returns if neither handler
    /// could be installed, which is the right outcome: nothing can ask us to stop.
    async fn next(&mut self) -> &'static str {
        async fn recv(sig: &mut Option<tokio::signal::unix::Signal>) {
            if let Some(sig) = sig {
                // `recv` yields None only once the driver is gone, i.e. the runtime is shutting
                // down; there is then nothing left to wait for.
                if sig.recv().await.is_some() {
                    return;
                }
            }
            std::future::pending().await
        }
        tokio::select! {
            () = recv(&mut self.term) => "SIGTERM",
            () = recv(&mut self.int) => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Signals
    }

    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for Ctrl-C");
                std::future::pending().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn hand_over(active: Arc<AtomicBool>, accepts: bool) -> HandOver {
        HandOver {
            step_down: Arc::new(move || accepts),
            is_active: Arc::new(move || active.load(Ordering::SeqCst)),
        }
    }

    /// The node's tasks keep running until the stepping-down replica is passive.
    #[tokio::test]
    async fn an_active_replica_stops_only_once_it_handed_over() {
        let stop = CancellationToken::new();
        let active = Arc::new(AtomicBool::new(true));
        let shutdown = stop_after_hand_over(stop.clone(), Some(hand_over(active.clone(), true)));
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!shutdown.is_cancelled(), "stopped before the hand-over");
        active.store(false, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(2), shutdown.cancelled())
            .await
            .expect("stops once passive");
    }

    #[tokio::test]
    async fn a_passive_replica_and_an_unreplicated_node_stop_at_once() {
        for hand_over in [
            None,
            Some(hand_over(Arc::new(AtomicBool::new(true)), false)),
        ] {
            let stop = CancellationToken::new();
            let shutdown = stop_after_hand_over(stop.clone(), hand_over);
            stop.cancel();
            tokio::time::timeout(Duration::from_millis(500), shutdown.cancelled())
                .await
                .expect("stops at once");
        }
    }

    #[tokio::test]
    async fn a_hand_over_that_hangs_is_cut_short_by_its_bound() {
        let active = Arc::new(AtomicBool::new(true));
        let stopped = CancellationToken::new();
        let started = Instant::now();
        hand_over_within(
            &hand_over(active, true),
            Duration::from_millis(100),
            &stopped,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
