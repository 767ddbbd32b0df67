//! Which peers are dead, judged by observation alone (sans I/O), on two kinds of evidence.
//!
//! - **Presence** (`SequencerStore::present_instances`): a live instance holds a lock that
//!   the kernel (SQLite) or the database server (PostgreSQL) releases the moment its process
//!   dies. A peer whose lock is gone is dead once its watermark has also stood still for
//!   `presence_grace` (one and a half watermark intervals, counted from when this instance
//!   first saw that watermark): a live instance that lost its lock with a broken database
//!   session goes on advancing its watermark while it takes the lock again, so the grace keeps
//!   it online. This finds a killed instance about 100 ms after its death.
//! - **The watermark's age**, the fallback for a process that is alive but stopped or stalled
//!   (SIGSTOP keeps the lock): a peer is stale when this instance has not seen its watermark
//!   *advance* for `offline_after`.
//!
//! Both are timed by this instance's monotonic clock. The watermark's value is never compared
//! with this instance's wall clock: a peer whose clock differs from ours (or ours from it)
//! advances its watermark all the same, and fencing it for our clock's error would only take a
//! healthy instance out of service. Every live instance advances its watermark at least every
//! `watermark_interval` (see `OrderingEngine::idle_watermark`), so an unchanged watermark
//! means a dead, paused or stalled process.
//!
//! Detection time by age matches a comparison with the wall clock: the peers are read every
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

/// How often to ask who holds a presence lock: the delay it adds to finding a killed peer.
pub const PRESENCE_CHECK_INTERVAL: Duration = Duration::from_millis(25);

/// How long a peer without its presence lock may keep its watermark still before it counts as
/// dead: one and a half of its watermark intervals, so a live one (which advances at least
/// once per interval) is not taken for dead while it retakes a lock lost with its database
/// session, unless a commit of its stalls for more than half an interval beyond that.
/// Counted from this instance's first sight of the watermark, which is no earlier than its
/// commit. It was two intervals until issue 14: every millisecond of it is a millisecond that
/// every subscriber of the other instances waits after a kill.
pub fn presence_grace(watermark_interval: Duration) -> Duration {
    watermark_interval + watermark_interval / 2
}

/// Why a peer is judged dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// Its presence lock is released and its watermark stood still for `presence_grace`.
    LockReleased,
    /// Its watermark stood still for `offline_after` (its lock held, or presence unknown).
    WatermarkStill,
}

impl Evidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Evidence::LockReleased => "lock_released",
            Evidence::WatermarkStill => "watermark_still",
        }
    }
}

/// A peer found stale: mark it offline only while its watermark is still `watermark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StalePeer {
    pub index: InstanceIndex,
    pub watermark: Timestamp,
    /// How long its watermark has stood still, as far as this instance has seen.
    pub unchanged_for: Duration,
    pub evidence: Evidence,
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
    /// Whether its presence lock was released at the last look.
    lock_released: bool,
}

/// What this instance has seen of its online peers' watermarks.
#[derive(Debug)]
pub struct PeerWatch {
    own: InstanceIndex,
    offline_after: Duration,
    presence_grace: Duration,
    seen: HashMap<InstanceIndex, Sighting>,
}

impl PeerWatch {
    pub fn new(own: InstanceIndex, offline_after: Duration, presence_grace: Duration) -> Self {
        Self {
            own,
            offline_after,
            presence_grace,
            seen: HashMap::new(),
        }
    }

    /// The peers online at the last observation, in index order: whose presence to ask.
    pub fn online_peers(&self) -> Vec<InstanceIndex> {
        let mut peers: Vec<InstanceIndex> = self.seen.keys().copied().collect();
        peers.sort_unstable();
        peers
    }

    /// Records the rows read at `now`, with who held a presence lock then (`None`: unknown),
    /// and returns the online peers judged dead (see the module documentation). A peer seen
    /// for the first time (or rejoined with a new incarnation) starts its count now: nothing is
    /// judged from before this instance looked.
    pub fn observe(
        &mut self,
        instances: &[InstanceState],
        present: Option<&[InstanceIndex]>,
        now: Instant,
    ) -> Vec<StalePeer> {
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
                    lock_released: false,
                },
            };
            let unchanged_for = now.saturating_duration_since(sighting.since);
            let lock_released = present.is_some_and(|present| !present.contains(&peer.index));
            let sighting = Sighting {
                lock_released,
                ..sighting
            };
            let evidence = if unchanged_for >= self.offline_after {
                Some(Evidence::WatermarkStill)
            } else if lock_released && unchanged_for >= self.presence_grace {
                Some(Evidence::LockReleased)
            } else {
                None
            };
            if let Some(evidence) = evidence {
                stale.push(StalePeer {
                    index: peer.index,
                    watermark: peer.watermark,
                    unchanged_for,
                    evidence,
                });
            }
            seen.insert(peer.index, sighting);
        }
        // Offline or vanished peers are forgotten: when they come back, they start afresh.
        self.seen = seen;
        stale
    }

    /// When a peer seen without its presence lock will have stood still for `presence_grace`,
    /// if it has not moved by then: the moment to look again, so that a killed peer is marked
    /// the moment its grace is over rather than at the next periodic check.
    pub fn next_judgement(&self) -> Option<Instant> {
        self.seen
            .values()
            .filter(|sighting| sighting.lock_released)
            .map(|sighting| sighting.since + self.presence_grace)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFLINE_AFTER: Duration = Duration::from_millis(500);
    const GRACE: Duration = Duration::from_millis(100);

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
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        // Watermarks from 1970: only their movement counts.
        for step in 0..20 {
            let rows = [row(0, 5), row(1, 1_000 + step)];
            assert!(watch
                .observe(&rows, None, after(start, step * 125))
                .is_empty());
        }
    }

    #[test]
    fn a_peer_whose_watermark_stands_still_is_stale_after_offline_after() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        // A watermark far in our future, as a fast clock writes it, does not save it.
        let future = Timestamp::now().as_micros() + 3_600_000_000;
        assert!(watch.observe(&[row(1, future)], None, start).is_empty());
        assert!(watch
            .observe(&[row(1, future)], None, after(start, 499))
            .is_empty());
        let stale = watch.observe(&[row(1, future)], None, after(start, 500));
        assert_eq!(
            stale,
            vec![StalePeer {
                index: InstanceIndex(1),
                watermark: Timestamp::from_micros(future),
                unchanged_for: OFFLINE_AFTER,
                evidence: Evidence::WatermarkStill,
            }]
        );
        assert_eq!(stale[0].stale_before(), Timestamp::from_micros(future + 1));
    }

    #[test]
    fn own_offline_and_rejoined_rows_are_judged_afresh() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        let offline = InstanceState {
            online: false,
            ..row(2, 7)
        };
        assert!(watch
            .observe(&[row(0, 1), row(1, 7), offline], None, start)
            .is_empty());
        let rows = [row(0, 1), row(1, 7), offline];
        let stale = watch.observe(&rows, None, after(start, 600));
        assert_eq!(stale.len(), 1, "only peer 1: {stale:?}");
        // Peer 1 rejoins with a new incarnation at the same watermark: a fresh start.
        let rejoined = InstanceState {
            incarnation: Incarnation(2),
            ..row(1, 7)
        };
        assert!(watch
            .observe(&[rejoined], None, after(start, 700))
            .is_empty());
        assert_eq!(
            watch.observe(&[rejoined], None, after(start, 1_200)).len(),
            1
        );
    }

    #[test]
    fn a_peer_whose_lock_is_released_is_dead_once_its_watermark_stood_still_briefly() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        let held = [InstanceIndex(1), InstanceIndex(2)];
        let released = [InstanceIndex(2)];
        let rows = |peer_one: u64| [row(0, 1), row(1, peer_one), row(2, 9)];
        assert!(watch.observe(&rows(7), Some(&held), start).is_empty());
        assert_eq!(
            watch.online_peers(),
            vec![InstanceIndex(1), InstanceIndex(2)]
        );
        assert_eq!(watch.next_judgement(), None, "every lock held");
        // Lock gone, watermark still for less than the grace: not yet, but due at its end.
        assert!(watch
            .observe(&rows(7), Some(&released), after(start, 99))
            .is_empty());
        assert_eq!(watch.next_judgement(), Some(after(start, 100)));
        let stale = watch.observe(&rows(7), Some(&released), after(start, 100));
        assert_eq!(
            stale,
            vec![StalePeer {
                index: InstanceIndex(1),
                watermark: Timestamp::from_micros(7),
                unchanged_for: GRACE,
                evidence: Evidence::LockReleased,
            }],
            "peer 2 holds its lock and stood still only 100 ms"
        );
    }

    #[test]
    fn a_live_peer_that_lost_its_lock_is_kept_while_its_watermark_advances() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        // Its database session broke: no lock for a whole second, but it goes on writing.
        for step in 0..40 {
            let rows = [row(1, 1_000 + step)];
            assert!(watch
                .observe(&rows, Some(&[]), after(start, step * 25))
                .is_empty());
            // Each advance moves the judgement to a grace after it was seen.
            assert_eq!(
                watch.next_judgement(),
                Some(after(start, step * 25) + GRACE)
            );
        }
    }

    #[test]
    fn a_stopped_peer_holding_its_lock_is_judged_by_its_watermark_age_alone() {
        let mut watch = PeerWatch::new(InstanceIndex(0), OFFLINE_AFTER, GRACE);
        let start = Instant::now();
        let held = [InstanceIndex(1)];
        assert!(watch.observe(&[row(1, 7)], Some(&held), start).is_empty());
        assert!(watch
            .observe(&[row(1, 7)], Some(&held), after(start, 499))
            .is_empty());
        let stale = watch.observe(&[row(1, 7)], Some(&held), after(start, 500));
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].evidence, Evidence::WatermarkStill);
    }
}
