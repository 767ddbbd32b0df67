//! Which peers are dead, judged by observation alone (sans I/O). A peer is stale when this
//! instance has not seen its watermark *advance* for `offline_after`, timed by this
//! instance's monotonic clock. The watermark's value is never compared with this instance's
//! wall clock: a peer whose clock differs from ours (or ours from it) advances its watermark
//! all the same, and fencing it for our clock's error would only take a healthy instance out
//! of service. Every live instance advances its watermark at least every
//! `watermark_interval` (see `OrderingEngine::idle_watermark`), so an unchanged watermark
//! means a dead, paused or stalled process.
//!
//! Detection time matches a comparison with the wall clock: the peers are read every
//! `offline_after / 4`, so a change is seen at most that late and a stale peer is found at
//! most that late again — `offline_after` plus at most half of it after its last write.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_core::{InstanceIndex, Timestamp};
use meridian_store::{Incarnation, InstanceState};

/// How often to read the peers' rows, for a given `offline_after`.
pub fn peers_check_interval(offline_after: Duration) -> Duration {
    (offline_after / 4).max(Duration::from_millis(1))
}

/// A peer found stale: mark it offline only while its watermark is still `watermark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalePeer {
    pub index: InstanceIndex,
    pub watermark: Timestamp,
    /// How long its watermark has stood still, as far as this instance has seen.
    pub unchanged_for: Duration,
}

impl StalePeer {
    /// The `stale_before` of `SequencerStore::mark_offline` that matches only the unchanged
    /// watermark: if the peer advanced it since it was read, the update marks nothing.
    pub fn stale_before(&self) -> Timestamp {
        self.watermark.saturating_add(Duration::from_micros(1))
    }
}

#[derive(Debug, Clone, Copy)]
struct Sighting {
    watermark: Timestamp,
    incarnation: Incarnation,
    /// When this watermark was first seen.
    since: Instant,
}

/// What this instance has seen of its online peers' watermarks.
#[derive(Debug)]
pub struct PeerWatch {
    own: InstanceIndex,
    offline_after: Duration,
    seen: HashMap<InstanceIndex, Sighting>,
}

impl PeerWatch {
    pub fn new(own: InstanceIndex, offline_after: Duration) -> Self {
        Self {
            own,
            offline_after,
            seen: HashMap::new(),
        }
    }

    /// Records the rows read at `now` and returns the online peers whose watermark has not
    /// moved for `offline_after`. A peer seen for the first time (or rejoined with a new
    /// incarnation) starts its count now: nothing is judged from before this instance looked.
    pub fn observe(&mut self, instances: &[InstanceState], now: Instant) -> Vec<StalePeer> {
        let mut stale = Vec::new();
        let mut seen = HashMap::with_capacity(instances.len());
        for peer in instances
            .iter()
            .filter(|peer| peer.online && peer.index != self.own)
        {
            let sighting = match self.seen.get(&peer.index) {
                Some(before)
                    if before.watermark == peer.watermark
                        && before.incarnation == peer.incarnation =>
                {
                    *before
                }
                _ => Sighting {
                    watermark: peer.watermark,
                    incarnation: peer.incarnation,
                    since: now,
                },
            };
            let unchanged_for = now.saturating_duration_since(sighting.since);
            if unchanged_for >= self.offline_after {
                stale.push(StalePeer {
                    index: peer.index,
                    watermark: peer.watermark,
                    unchanged_for,
                });
            }
            seen.insert(peer.index, sighting);
        }
        // Offline or vanished peers are forgotten: when they come back, they start afresh.
        self.seen = seen;
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFLINE_AFTER: Duration = Duration::from_millis(500);

    fn row(index: u32, watermark: u64) -> InstanceState {
        InstanceState {
            index: InstanceIndex(index),
            watermark: Timestamp::from_micros(watermark),
            online: true,
            incarnation: Incarnation(1),
        }
    }

    fn after(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn a_peer_far_behind_our_clock_is_healthy_while_its_watermark_advances() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER);
        let start = Instant::now();
        // Watermarks from 1970: only their movement counts.
        for step in 0..20 {
            let rows = [row(0, 5), row(1, 1_000 + step)];
            assert!(watch.observe(&rows, after(start, step * 125)).is_empty());
        }
    }

    #[test]
    fn a_peer_whose_watermark_stands_still_is_stale_after_offline_after() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER);
        let start = Instant::now();
        // A watermark far in our future, as a fast clock writes it, does not save it.
        let future = Timestamp::now().as_micros() + 3_600_000_000;
        assert!(watch.observe(&[row(1, future)], start).is_empty());
        assert!(watch
            .observe(&[row(1, future)], after(start, 499))
            .is_empty());
        let stale = watch.observe(&[row(1, future)], after(start, 500));
        assert_eq!(
            stale,
            vec![StalePeer {
                index: InstanceIndex(1),
                watermark: Timestamp::from_micros(future),
                unchanged_for: OFFLINE_AFTER,
            }]
        );
        assert_eq!(stale[0].stale_before(), Timestamp::from_micros(future + 1));
    }

    #[test]
    fn own_offline_and_rejoined_rows_are_judged_afresh() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER);
        let start = Instant::now();
        let offline = InstanceState {
            online: false,
            ..row(2, 7)
        };
        assert!(watch
            .observe(&[row(0, 1), row(1, 7), offline], start)
            .is_empty());
        let rows = [row(0, 1), row(1, 7), offline];
        let stale = watch.observe(&rows, after(start, 600));
        assert_eq!(stale.len(), 1, "only peer 1: {stale:?}");
        // Peer 1 rejoins with a new incarnation at the same watermark: a fresh start.
        let rejoined = InstanceState {
            incarnation: Incarnation(2),
            ..row(1, 7)
        };
        assert!(watch.observe(&[rejoined], after(start, 700)).is_empty());
        assert_eq!(watch.observe(&[rejoined], after(start, 1_200)).len(), 1);
    }
}
