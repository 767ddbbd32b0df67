//! Region health with a dwell time. A region is *down* while every replica that should run
//! in it (supervised: warm ones, and cold ones the controller or a plan started) is down by the
//! probes or crash-looping; it is *failed* once it has been down continuously for
//! `region_failure_dwell_ms`, and *recovered* as soon as one of them is up again.
//!
//! A region with nothing that should run (only cold replicas, or everything fenced by a plan)
//! keeps the verdict it had: it neither fails nor recovers, so that fencing a failed region
//! does not read as its recovery. A replica with no verdict yet (a controller just took over)
//! is not down: the controller never fails a region on what it has not seen.

use std::time::Duration;

use meridian_core::Timestamp;

use super::probe::Verdict;
use super::supervise::ReplicaState;

/// The health of a region's supervised replicas, as one summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Nothing should run there.
    Empty,
    /// At least one is up.
    Up,
    /// Every one is down (or failed).
    Down,
    /// Neither: some have no verdict yet.
    Unsure,
}

impl Presence {
    pub fn of<'a>(replicas: impl IntoIterator<Item = &'a ReplicaState>) -> Self {
        let mut presence = Presence::Empty;
        for replica in replicas {
            match (replica.failed.is_some(), replica.health.verdict) {
                (_, Verdict::Up) => return Presence::Up,
                (true, _) | (false, Verdict::Down) => {
                    if presence == Presence::Empty {
                        presence = Presence::Down;
                    }
                }
                (false, Verdict::Unknown) => presence = Presence::Unsure,
            }
        }
        presence
    }
}

/// A region's change, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionEvent {
    Failed { down_since: Timestamp },
    Recovered,
}

#[derive(Debug, Clone, Default)]
pub struct RegionState {
    /// Since when every supervised replica has been down.
    pub down_since: Option<Timestamp>,
    /// Since when the region counts as failed (the dwell elapsed then).
    pub failed_since: Option<Timestamp>,
    /// This failure's region-loss plan was proposed (at most one per failure).
    pub proposed: bool,
    /// This failure's held proposal was audited (once).
    pub hold_audited: bool,
}

impl RegionState {
    /// Takes in the region's presence at `now`.
    pub fn update(
        &mut self,
        now: Timestamp,
        presence: Presence,
        dwell: Duration,
    ) -> Option<RegionEvent> {
        match presence {
            Presence::Empty => None,
            Presence::Unsure => {
                self.down_since = None;
                None
            }
            Presence::Up => {
                self.down_since = None;
                self.failed_since.take().map(|_| {
                    self.proposed = false;
                    self.hold_audited = false;
                    RegionEvent::Recovered
                })
            }
            Presence::Down => {
                let down_since = *self.down_since.get_or_insert(now);
                if self.failed_since.is_none() && now >= down_since.saturating_add(dwell) {
                    self.failed_since = Some(now);
                    return Some(RegionEvent::Failed { down_since });
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_fails_after_the_dwell_and_recovers_when_one_is_up() {
        let dwell = Duration::from_secs(3);
        let at = |ms: u64| Timestamp::from_micros(ms * 1_000);
        let mut region = RegionState::default();
        assert_eq!(region.update(at(0), Presence::Down, dwell), None);
        // Up for a moment: the dwell starts again.
        assert_eq!(region.update(at(2_000), Presence::Up, dwell), None);
        assert_eq!(region.update(at(2_500), Presence::Down, dwell), None);
        assert_eq!(region.update(at(5_000), Presence::Down, dwell), None);
        assert_eq!(
            region.update(at(5_500), Presence::Down, dwell),
            Some(RegionEvent::Failed {
                down_since: at(2_500)
            })
        );
        assert_eq!(region.update(at(6_000), Presence::Down, dwell), None);
        // Fenced: nothing should run; still failed.
        assert_eq!(region.update(at(7_000), Presence::Empty, dwell), None);
        assert_eq!(region.failed_since, Some(at(5_500)));
        assert_eq!(
            region.update(at(8_000), Presence::Up, dwell),
            Some(RegionEvent::Recovered)
        );
    }
}
