//! Bounding this instance's clock skew. Every timestamp an instance issues comes from its own
//! wall clock, and its peers deliver nothing above the lowest watermark: a clock that runs
//! ahead pushes timestamps past clients' max sequencing times, one that runs behind holds every
//! reader back. So an instance compares its wall clock with a reference every instance of the
//! deployment shares — the database server's clock on PostgreSQL, the kernel's on SQLite (see
//! `SequencerStore::reference_time`) — and beyond `[timing] max_clock_skew_ms` it issues
//! nothing (no events, no watermark): it reports itself not ready with the measured skew, its
//! peers mark it offline once its watermark stops, and it rejoins once the clocks agree again.
//!
//! Between two comparisons the wall clock is watched against the monotonic clock: a step of
//! the wall clock (an operator's `date -s`, an NTP step) stops issuing at once instead of at
//! the next comparison, so not even one watermark is written from a clock that just jumped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_core::Timestamp;
use meridian_node::conditions::Conditions;
use meridian_store::{ReferenceTime, SequencerStore, StoreError};

/// The readiness condition this module owns.
const CONDITION: &str = "clock";

/// One comparison of this instance's wall clock with the reference, pure arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkewMeasurement {
    /// This instance's wall clock minus the reference, in microseconds: positive when ahead.
    pub skew_us: i64,
    /// Half the round trip: the reference was read at most this far from the midpoint.
    pub uncertainty: Duration,
    /// This instance's wall clock at the midpoint of the round trip.
    pub local_at_midpoint: Timestamp,
    pub source: &'static str,
}

impl SkewMeasurement {
    /// Compares `reference` with the local wall clock at the midpoint of the call that read it:
    /// `before` is the wall clock when the call started, `round_trip` its duration by the
    /// monotonic clock (so a wall-clock step during the call cannot distort it).
    pub fn new(before: Timestamp, round_trip: Duration, reference: ReferenceTime) -> Self {
        let uncertainty = round_trip / 2;
        let local_at_midpoint = before.saturating_add(uncertainty);
        Self {
            skew_us: local_at_midpoint.as_i64() - reference.time.as_i64(),
            uncertainty,
            local_at_midpoint,
            source: reference.source,
        }
    }

    /// The skew in whole milliseconds, for messages.
    pub fn skew_ms(&self) -> i64 {
        self.skew_us / 1_000
    }

    /// Whether the skew is beyond `bound` however the uncertainty falls (`Some(true)`),
    /// within it however it falls (`Some(false)`), or the measurement cannot tell (`None`,
    /// e.g. a round trip slowed down by a stalled database).
    pub fn beyond(&self, bound: Duration) -> Option<bool> {
        let skew = Duration::from_micros(self.skew_us.unsigned_abs());
        if skew.saturating_sub(self.uncertainty) > bound {
            Some(true)
        } else if skew + self.uncertainty <= bound {
            Some(false)
        } else {
            None
        }
    }
}

/// The last conclusive comparison: the wall and monotonic clocks at that moment, from which a
/// later step of the wall clock shows.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    wall: Timestamp,
    monotonic: Instant,
    source: &'static str,
}

#[derive(Debug)]
struct GateState {
    refusal: Option<String>,
    anchor: Option<Anchor>,
}

/// Whether this instance may issue timestamps now, as far as its clock is concerned. Shared by
/// the clock check (which settles it) and the writer (which asks before every batch and
/// heartbeat); it owns the node's `clock` readiness condition.
#[derive(Clone)]
pub struct ClockGate {
    bound: Duration,
    readiness: Conditions,
    state: Arc<Mutex<GateState>>,
}

impl ClockGate {
    /// A gate that refuses until the first comparison within `bound`.
    pub fn new(bound: Duration, readiness: Conditions) -> Self {
        Self {
            bound,
            readiness,
            state: Arc::new(Mutex::new(GateState {
                refusal: Some("the clock has not been compared with the database's yet".into()),
                anchor: None,
            })),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        // A panic while holding this lock leaves plain data behind, still consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `Err(reason)` while this instance must not issue timestamps: the last comparison found
    /// the clock too far off, or the wall clock (`wall`) stepped away from the monotonic clock
    /// (`monotonic`) since the last comparison by more than the bound.
    pub fn check(&self, wall: Timestamp, monotonic: Instant) -> Result<(), String> {
        let mut state = self.state();
        if let Some(reason) = &state.refusal {
            return Err(reason.clone());
        }
        let Some(anchor) = state.anchor else {
            return Ok(());
        };
        let wall_elapsed_us = wall.as_i64() - anchor.wall.as_i64();
        let monotonic_elapsed_us =
            i64::try_from(monotonic.duration_since(anchor.monotonic).as_micros())
                .unwrap_or(i64::MAX);
        let step_us = wall_elapsed_us.saturating_sub(monotonic_elapsed_us);
        if Duration::from_micros(step_us.unsigned_abs()) <= self.bound {
            return Ok(());
        }
        let reason = format!(
            "this instance's wall clock stepped {} by {} ms since it was last compared with {}; \
             issuing no timestamps until the next comparison finds it within {} ms",
            if step_us > 0 { "forward" } else { "back" },
            step_us.unsigned_abs() / 1_000,
            anchor.source,
            self.bound.as_millis(),
        );
        self.refuse(&mut state, reason.clone());
        Err(reason)
    }

    /// Settles the gate with a comparison taken at `monotonic_at_midpoint`. An inconclusive
    /// one changes nothing.
    pub fn settle(&self, measurement: &SkewMeasurement, monotonic_at_midpoint: Instant) {
        let mut state = self.state();
        match measurement.beyond(self.bound) {
            None => {}
            Some(true) => {
                let reason =
                    format!(
                    "this instance's clock is {} ms {} {} (measured to ±{} ms), beyond the bound \
                     [timing] max_clock_skew_ms = {}: issuing no timestamps until the clocks \
                     agree; check NTP/chrony on this host",
                    measurement.skew_ms().unsigned_abs(),
                    if measurement.skew_us > 0 { "ahead of" } else { "behind" },
                    measurement.source,
                    measurement.uncertainty.as_millis(),
                    self.bound.as_millis(),
                );
                state.anchor = None;
                self.refuse(&mut state, reason);
            }
            Some(false) => {
                state.anchor = Some(Anchor {
                    wall: measurement.local_at_midpoint,
                    monotonic: monotonic_at_midpoint,
                    source: measurement.source,
                });
                if state.refusal.take().is_some() {
                    tracing::info!(
                        skew_ms = measurement.skew_ms(),
                        "the clock agrees with the database's again; issuing timestamps"
                    );
                }
                self.readiness.clear(CONDITION);
            }
        }
    }

    fn refuse(&self, state: &mut GateState, reason: String) {
        if self.readiness.fail(CONDITION, reason.clone()) {
            tracing::error!("{reason}");
        }
        state.refusal = Some(reason);
    }

    /// Compares the clock with the store's reference once and settles the gate with it.
    /// Returns the measurement, or the store's error (which leaves the gate as it was).
    pub async fn compare(&self, store: &dyn SequencerStore) -> Result<SkewMeasurement, StoreError> {
        let before = Timestamp::now();
        let started = Instant::now();
        let reference = store.reference_time().await?;
        let round_trip = started.elapsed();
        let measurement = SkewMeasurement::new(before, round_trip, reference);
        self.settle(&measurement, started + round_trip / 2);
        Ok(measurement)
    }

    /// Whether the gate lets timestamps through now (as of its last settling).
    pub fn is_open(&self) -> bool {
        self.state().refusal.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_node::health::Health;

    const BOUND: Duration = Duration::from_millis(250);

    /// The local clock read `local_us` when the call that read `reference_us` started.
    fn measure(local_us: u64, round_trip: Duration, reference_us: u64) -> SkewMeasurement {
        let reference = ReferenceTime {
            time: Timestamp::from_micros(reference_us),
            source: "the test's clock",
        };
        SkewMeasurement::new(Timestamp::from_micros(local_us), round_trip, reference)
    }

    fn gate() -> (ClockGate, Conditions) {
        let readiness = Conditions::new(Health::new());
        (ClockGate::new(BOUND, readiness.clone()), readiness)
    }

    #[test]
    fn the_skew_is_taken_at_the_midpoint_of_the_round_trip() {
        // Sent at 10.000 s local, answered after 20 ms; the reference said 9.000 s.
        let measured = measure(10_000_000, Duration::from_millis(20), 9_000_000);
        assert_eq!(measured.skew_us, 1_010_000);
        assert_eq!(measured.uncertainty, Duration::from_millis(10));
        assert_eq!(measured.beyond(BOUND), Some(true));
        let behind = measure(10_000_000, Duration::ZERO, 10_300_000);
        assert_eq!(behind.skew_ms(), -300);
        assert_eq!(behind.beyond(BOUND), Some(true));
    }

    #[test]
    fn a_slow_round_trip_is_inconclusive_near_the_bound() {
        let near = measure(10_000_000, Duration::from_millis(200), 9_800_000);
        // 300 ms ± 100 ms: could be 200 ms (within) or 400 ms (beyond).
        assert_eq!(near.beyond(BOUND), None);
    }

    #[test]
    fn the_gate_refuses_beyond_the_bound_naming_the_skew_and_reopens_within_it() {
        let (gate, readiness) = gate();
        assert!(gate.check(Timestamp::now(), Instant::now()).is_err());
        let now = Instant::now();
        let ahead = measure(12_000_000, Duration::ZERO, 10_000_000);
        gate.settle(&ahead, now);
        let reason = gate
            .check(Timestamp::from_micros(12_000_000), now)
            .unwrap_err();
        assert!(
            reason.contains("2000 ms ahead of the test's clock"),
            "{reason}"
        );
        assert!(reason.contains("max_clock_skew_ms = 250"), "{reason}");
        assert_eq!(readiness.reason(), Some(format!("clock: {reason}")));

        let agreed = measure(10_000_000, Duration::ZERO, 10_000_000);
        gate.settle(&agreed, now);
        assert_eq!(gate.check(Timestamp::from_micros(10_000_000), now), Ok(()));
        assert_eq!(readiness.reason(), None);
    }

    #[test]
    fn a_step_of_the_wall_clock_closes_the_gate_before_the_next_comparison() {
        let (gate, readiness) = gate();
        let anchor = Instant::now();
        let agreed = measure(10_000_000, Duration::ZERO, 10_000_000);
        gate.settle(&agreed, anchor);
        // One second later by both clocks: fine.
        let later = anchor + Duration::from_secs(1);
        assert_eq!(
            gate.check(Timestamp::from_micros(11_000_000), later),
            Ok(())
        );
        // The wall clock jumped two seconds ahead of the monotonic one.
        let reason = gate
            .check(Timestamp::from_micros(13_000_000), later)
            .unwrap_err();
        assert!(reason.contains("stepped forward by 2000 ms"), "{reason}");
        assert!(readiness.reason().is_some());
        assert!(!gate.is_open());
    }
}
