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
//! It also says when to read next ([`LeaseWatch::next_read_in`]): at the poll interval, but no
//! later than the moment the watched row reaches the lease timeout, so a stopped holder is
//! deposed at that moment rather than at the next poll tick after it.
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

/// The shortest wait [`LeaseWatch::next_read_in`] asks for.
pub const MIN_READ_INTERVAL: Duration = Duration::from_millis(2);

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

    /// How long to wait, as of `now`, before the next read: `poll_interval`, or less when the
    /// row, still unchanged then, reaches `lease_timeout` sooner, so the read that may depose
    /// its holder comes right at expiry instead of up to a poll interval after it. Never less
    /// than [`MIN_READ_INTERVAL`], so a clock quirk cannot turn the poll into a busy loop.
    pub fn next_read_in(
        &self,
        now: Instant,
        poll_interval: Duration,
        lease_timeout: Duration,
    ) -> Duration {
        let Some((Some(renewal), _)) = &self.seen else {
            // Nothing to watch (no read yet, a failed read, no row): the ordinary poll.
            return poll_interval;
        };
        if renewal.holder.is_none() {
            // Released: it is taken at the next read whenever that is; nothing expires.
            return poll_interval;
        }
        let unchanged = self.unchanged_for(now);
        match lease_timeout.checked_sub(unchanged) {
            Some(left) if left < poll_interval => left.max(MIN_READ_INTERVAL),
            Some(_) => poll_interval,
            // Already past it: the read just made was the deposing one (or failed to be);
            // keep trying at the ordinary pace.
            None => poll_interval,
        }
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

    /// A stopped holder is read again right when its row reaches the lease timeout, not at
    /// the next poll tick after it: up to a poll interval sooner.
    #[test]
    fn the_read_that_may_depose_comes_at_expiry_not_at_the_next_tick() {
        let poll = Duration::from_millis(100);
        let stuck = row(1, 10);
        let mut watch = LeaseWatch::new(TIMEOUT);
        let first = Instant::now();
        watch.observed(Some(&stuck), first, first + PROMPT);
        let seen = first + PROMPT;
        // Far from expiry: the ordinary poll.
        assert_eq!(watch.next_read_in(seen, poll, TIMEOUT), poll);
        // 930 ms watched: 70 ms left, so the next read is in 70 ms, not 100.
        let late = seen + Duration::from_millis(930);
        watch.observed(Some(&stuck), late - PROMPT, late);
        let wait = watch.next_read_in(late, poll, TIMEOUT);
        assert_eq!(wait, Duration::from_millis(70));
        assert!(watch.unchanged_for(late + wait) >= TIMEOUT);
        // Right at expiry the wait has a floor, and past it the ordinary poll resumes.
        assert_eq!(
            watch.next_read_in(seen + TIMEOUT, poll, TIMEOUT),
            MIN_READ_INTERVAL
        );
        assert_eq!(
            watch.next_read_in(seen + TIMEOUT + poll, poll, TIMEOUT),
            poll
        );
    }

    /// Nothing to expire — no read yet, a failed read, a released lease — means the ordinary
    /// poll; a renewal starts the countdown again.
    #[test]
    fn only_a_held_watched_row_shortens_the_poll() {
        let poll = Duration::from_millis(100);
        let mut watch = LeaseWatch::new(TIMEOUT);
        let now = Instant::now();
        assert_eq!(watch.next_read_in(now, poll, TIMEOUT), poll);
        let released = LeaseState {
            holder: None,
            holder_endpoint: None,
            ..row(1, 10)
        };
        watch.observed(Some(&released), now, now + PROMPT);
        assert_eq!(watch.next_read_in(now + TIMEOUT, poll, TIMEOUT), poll);
        let (mut watch, at) = watched(&row(1, 10), 10);
        assert!(watch.next_read_in(at, poll, TIMEOUT) < poll);
        watch.observed(Some(&row(1, 20)), at, at + PROMPT);
        assert_eq!(watch.next_read_in(at + PROMPT, poll, TIMEOUT), poll);
        watch.failed();
        assert_eq!(watch.next_read_in(at + PROMPT, poll, TIMEOUT), poll);
    }

    #[test]
    fn a_failed_read_forgets_what_was_seen() {
        let (mut watch, at) = watched(&row(1, 10), 11);
        watch.failed();
        assert_eq!(watch.unchanged_for(at), Duration::ZERO);
    }
}
