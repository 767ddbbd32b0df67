//! Rise/fall tracking of one replica's health: a replica counts as up after `rise`
//! consecutive good probes and as down after `fall` consecutive bad ones, so that one lost
//! probe or one lucky answer never flips a decision. A process exit marks it down at once.
//!
//! A probe is *good* when the replica is live and either ready or a live passive (a passive
//! is healthy by design: it waits for the lease); *bad* when it is not live (no answer). A live
//! replica that is neither ready nor passive (an active whose database is away) is neither:
//! it breaks both streaks and keeps the verdict it had, because the lease, not the controller,
//! deals with an active that cannot serve.

use meridian_core::Timestamp;

use crate::model::{ProbeOutcome, ServingRole};

/// What the probes say about a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No verdict yet (since this controller became active): neither up nor down.
    Unknown,
    Up,
    Down,
}

/// A change of verdict, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    /// `from_unknown`: the first verdict since the controller became active.
    Down {
        from_unknown: bool,
    },
}

/// How a probe counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeClass {
    Good,
    Bad,
    Neutral,
}

impl ProbeClass {
    pub fn of(outcome: &ProbeOutcome) -> Self {
        if !outcome.live {
            ProbeClass::Bad
        } else if outcome.ready || outcome.role == Some(ServingRole::Passive) {
            ProbeClass::Good
        } else {
            ProbeClass::Neutral
        }
    }
}

/// One replica's rise/fall state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub verdict: Verdict,
    good_in_a_row: u32,
    bad_in_a_row: u32,
    /// When the verdict last changed (or the tracking began).
    pub since: Timestamp,
}

impl Health {
    pub fn new(now: Timestamp) -> Self {
        Self {
            verdict: Verdict::Unknown,
            good_in_a_row: 0,
            bad_in_a_row: 0,
            since: now,
        }
    }

    pub fn is_up(&self) -> bool {
        self.verdict == Verdict::Up
    }

    /// Its latest probe was bad (it may be on its way down).
    pub fn failing(&self) -> bool {
        self.bad_in_a_row > 0
    }

    /// Counts one probe. `ignore_bad` is set while a freshly started process is still
    /// starting: refused connections are expected then and must not mark it down.
    pub fn probe(
        &mut self,
        now: Timestamp,
        class: ProbeClass,
        rise: u32,
        fall: u32,
        ignore_bad: bool,
    ) -> Option<Transition> {
        match class {
            ProbeClass::Good => {
                self.bad_in_a_row = 0;
                self.good_in_a_row = self.good_in_a_row.saturating_add(1);
                if self.good_in_a_row >= rise && self.verdict != Verdict::Up {
                    self.set(now, Verdict::Up);
                    return Some(Transition::Up);
                }
            }
            ProbeClass::Bad if ignore_bad => {
                self.good_in_a_row = 0;
                self.bad_in_a_row = 0;
            }
            ProbeClass::Bad => {
                self.good_in_a_row = 0;
                self.bad_in_a_row = self.bad_in_a_row.saturating_add(1);
                if self.bad_in_a_row >= fall && self.verdict != Verdict::Down {
                    return Some(self.down(now));
                }
            }
            ProbeClass::Neutral => {
                self.good_in_a_row = 0;
                self.bad_in_a_row = 0;
            }
        }
        None
    }

    /// The process exited: down at once (no transition if it was down already).
    pub fn exited(&mut self, now: Timestamp) -> Option<Transition> {
        self.good_in_a_row = 0;
        self.bad_in_a_row = 0;
        (self.verdict != Verdict::Down).then(|| self.down(now))
    }

    fn down(&mut self, now: Timestamp) -> Transition {
        let from_unknown = self.verdict == Verdict::Unknown;
        self.set(now, Verdict::Down);
        Transition::Down { from_unknown }
    }

    fn set(&mut self, now: Timestamp, verdict: Verdict) {
        self.verdict = verdict;
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_micros(ms * 1_000)
    }

    #[test]
    fn rise_and_fall_need_consecutive_probes() {
        let mut health = Health::new(t(0));
        assert_eq!(health.probe(t(1), ProbeClass::Good, 2, 3, false), None);
        assert_eq!(
            health.probe(t(2), ProbeClass::Good, 2, 3, false),
            Some(Transition::Up)
        );
        // Two bad, one good, two bad: never three in a row.
        for (ms, class) in [
            (3, ProbeClass::Bad),
            (4, ProbeClass::Bad),
            (5, ProbeClass::Good),
            (6, ProbeClass::Bad),
            (7, ProbeClass::Bad),
        ] {
            assert_eq!(health.probe(t(ms), class, 2, 3, false), None);
        }
        assert_eq!(
            health.probe(t(8), ProbeClass::Bad, 2, 3, false),
            Some(Transition::Down {
                from_unknown: false
            })
        );
        // Further bad probes are no new transition.
        assert_eq!(health.probe(t(9), ProbeClass::Bad, 2, 3, false), None);
        assert_eq!(health.since, t(8));
    }

    #[test]
    fn a_starting_process_is_not_marked_down_and_an_exit_is_down_at_once() {
        let mut health = Health::new(t(0));
        for ms in 1..10 {
            assert_eq!(health.probe(t(ms), ProbeClass::Bad, 2, 3, true), None);
        }
        assert_eq!(health.verdict, Verdict::Unknown);
        assert_eq!(
            health.exited(t(10)),
            Some(Transition::Down { from_unknown: true })
        );
        assert_eq!(health.exited(t(11)), None);
    }

    #[test]
    fn a_live_passive_is_good_and_a_live_unready_active_is_neutral() {
        let passive = ProbeOutcome {
            live: true,
            ready: false,
            reason: Some("passive".into()),
            role: Some(ServingRole::Passive),
        };
        assert_eq!(ProbeClass::of(&passive), ProbeClass::Good);
        let unready_active = ProbeOutcome {
            role: Some(ServingRole::Active),
            ..passive
        };
        assert_eq!(ProbeClass::of(&unready_active), ProbeClass::Neutral);
        assert_eq!(
            ProbeClass::of(&ProbeOutcome::unreachable("refused")),
            ProbeClass::Bad
        );
    }
}
