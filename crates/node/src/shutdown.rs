//! Turning the operator's stop signals into one cancellation token that every task of a node
//! watches, so SIGTERM (orchestrators, `kill`) and Ctrl-C (a terminal) both start the same
//! graceful shutdown. A second signal exits at once: after the first, the process no longer has
//! the default die-on-signal behaviour, and an operator must still be able to stop a shutdown
//! that hangs.

use std::time::Duration;

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
