//! When a passive replica may depose the active one: only after it has *watched* the lease row
//! go unrenewed for a whole lease timeout while the database answered promptly.
//!
//! The row's `renewed_at_us` alone cannot decide it. During a database stall (the server frozen,
//! a storage hiccup) nobody can renew, and the row keeps the time of the last renewal made
//! before the stall; judging that time against the passive's clock once the database answers
//! again would depose a healthy active for the database's fault. It also mixes two machines'
//! clocks. So a passive measures the row's age itself, on its own monotonic clock, and only
//! over stretches in which the database answered: a read that took longer than the stall bound
//! restarts the watch, as does a read that failed or a row that changed. After a stall of any
//! length the active gets a full lease timeout of working database to renew before anyone may
//! take over; a holder that really stopped (SIGSTOP, hung) is still deposed about one lease
//! timeout after the passives last saw it renew.
//!
//! Sans-I/O: the manager feeds it each read with the instants around it.

use std::time::{Duration, Instant};

use meridian_store::{Epoch, LeaseState};

/// What identifies one renewal of the lease row: any renewal or takeover changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Renewal {
    epoch: Epoch,
    holder: Option<String>,
    renewed_at_us: i64,
}

#[derive(Debug)]
pub struct LeaseWatch {
    /// Reads slower than this count as a database stall.
    stall_after: Duration,
    /// The row as last read, and since when (monotonic) it has been seen unchanged over prompt
    /// reads. `None` before the first prompt read and after a failed one.
    seen: Option<(Option<Renewal>, Instant)>,
}

impl LeaseWatch {
    /// A watch for a lease of `lease_timeout`: a read taking more than half of it is a stall
    /// (the active renews every quarter timeout, so a prompt database shows a renewal well
    /// within one).
    pub fn new(lease_timeout: Duration) -> Self {
        Self {
            stall_after: lease_timeout / 2,
            seen: None,
        }
    }

    /// Records a read of the lease row sent at `asked` and answered at `answered`.
    pub fn observed(&mut self, row: Option<&LeaseState>, asked: Instant, answered: Instant) {
        let renewal = row.map(|state| Renewal {
            epoch: state.epoch,
            holder: state.holder.clone(),
            renewed_at_us: state.renewed_at.as_i64(),
        });
        let stalled = answered.saturating_duration_since(asked) > self.stall_after;
        match &mut self.seen {
            Some((seen, since)) if *seen == renewal => {
                if stalled {
                    *since = answered;
                }
            }
            _ => self.seen = Some((renewal, answered)),
        }
    }

    /// A read failed: nothing is known about the holder's renewals meanwhile.
    pub fn failed(&mut self) {
        self.seen = None;
    }

    /// How long, as of `now`, the row has been watched unchanged over prompt reads.
    pub fn unchanged_for(&self, now: Instant) -> Duration {
        self.seen.as_ref().map_or(Duration::ZERO, |(_, since)| {
            now.saturating_duration_since(*since)
        })
    }
}

#[cfg(test)]
mod tests {
    use meridian_core::Timestamp;

    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(1000);
    const PROMPT: Duration = Duration::from_millis(5);

    fn row(epoch: i64, renewed_at_us: i64) -> LeaseState {
        LeaseState {
            epoch: Epoch(epoch),
            holder: Some("a".into()),
            holder_endpoint: Some("http://a".into()),
            renewed_at: Timestamp::from_i64(renewed_at_us),
        }
    }

    /// Polls every 100 ms from `from` for `polls` reads of `state`, each answering `took` later.
    fn poll(
        watch: &mut LeaseWatch,
        state: &LeaseState,
        from: Instant,
        polls: u32,
        took: Duration,
    ) -> Instant {
        let mut at = from;
        for _ in 0..polls {
            watch.observed(Some(state), at, at + took);
            at += Duration::from_millis(100);
        }
        at
    }

    /// A fresh watch after `polls` prompt reads of `state`, and the instant after them.
    fn watched(state: &LeaseState, polls: u32) -> (LeaseWatch, Instant) {
        let mut watch = LeaseWatch::new(TIMEOUT);
        let start = Instant::now();
        assert_eq!(watch.unchanged_for(start), Duration::ZERO);
        let end = poll(&mut watch, state, start, polls, PROMPT);
        (watch, end)
    }

    #[test]
    fn a_row_unchanged_over_prompt_reads_ages_from_its_first_sighting() {
        let (watch, end) = watched(&row(1, 10), 12);
        assert!(watch.unchanged_for(end) >= TIMEOUT);
    }

    #[test]
    fn a_renewal_restarts_the_watch() {
        let (mut watch, at) = watched(&row(1, 10), 8);
        let end = poll(&mut watch, &row(1, 20), at, 5, PROMPT);
        assert!(watch.unchanged_for(end) < TIMEOUT);
    }

    #[test]
    fn a_stall_of_any_length_gives_the_holder_a_fresh_timeout() {
        let stuck = row(1, 10);
        let (mut watch, at) = watched(&stuck, 3);
        // The database freezes for 10 s: the read sent at `at` answers only then, still showing
        // the renewal from before the freeze.
        let thawed = at + Duration::from_secs(10);
        watch.observed(Some(&stuck), at, thawed);
        assert_eq!(watch.unchanged_for(thawed), Duration::ZERO);
        // Prompt reads afterwards age the row from the thaw, not from before the stall.
        let later = poll(&mut watch, &stuck, thawed, 5, PROMPT);
        assert!(watch.unchanged_for(later) < TIMEOUT);
        let deposable = poll(&mut watch, &stuck, later, 7, PROMPT);
        assert!(watch.unchanged_for(deposable) >= TIMEOUT);
    }

    #[test]
    fn a_failed_read_forgets_what_was_seen() {
        let (mut watch, at) = watched(&row(1, 10), 11);
        watch.failed();
        assert_eq!(watch.unchanged_for(at), Duration::ZERO);
    }
}
