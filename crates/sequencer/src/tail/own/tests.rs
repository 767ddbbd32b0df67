//! The own writes against a model of two sequencer instances sharing a store: whatever the
//! interleaving of this instance's commits (some failing, committed or not), the other
//! instance's commits, its going offline and coming back, this instance's rejoins and the
//! tail's advances, the ring holds exactly the store's events up to where it has read.

use meridian_core::MessageId;
use meridian_store::MemberSeq;
use proptest::prelude::*;

use super::*;
use crate::tail::{RingRead, TailRing};

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

fn event(ts: u64) -> RoutedEvent {
    RoutedEvent {
        timestamp: t(ts),
        sender: MemberSeq(1),
        message_id: MessageId::new(format!("m{ts}")).expect("message id"),
        recipients: vec![MemberSeq(1)],
        batch: vec![0; 10],
    }
}

fn commit(after: Option<u64>, watermark: u64, events: &[u64], safe_point: u64) -> OwnCommit {
    OwnCommit {
        after: after.map(t),
        watermark: t(watermark),
        events: events.iter().map(|&ts| event(ts)).collect(),
        safe_point: t(safe_point),
        others_latest_event: None,
    }
}

fn stamps(events: &[RoutedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.timestamp.as_micros()).collect()
}

#[test]
fn a_chain_of_commits_serves_the_tail_up_to_the_safe_point() {
    let mut own = OwnWrites::new(100, usize::MAX);
    assert_eq!(own.take(t(10), t(20)), None, "nothing reported yet");
    own.record(commit(Some(10), 14, &[12, 14], 14), t(10));
    own.record(commit(Some(14), 20, &[16, 18], 20), t(10));
    let (events, through) = own.take(t(10), t(17)).expect("served");
    assert_eq!((stamps(&events), through), (vec![12, 14, 16], t(17)));
    let (events, through) = own.take(t(17), t(30)).expect("served");
    assert_eq!(
        (stamps(&events), through),
        (vec![18], t(20)),
        "never beyond the commit's safe point"
    );
    assert_eq!(own.take(t(20), t(30)), None, "nothing beyond it yet");
}

#[test]
fn what_cannot_be_shown_complete_goes_to_the_store() {
    // The chain starts above the tail's position: what lies between is unknown.
    let mut own = OwnWrites::new(100, usize::MAX);
    own.record(commit(Some(12), 14, &[14], 14), t(10));
    assert_eq!(own.take(t(10), t(14)), None);
    own.discard_through(t(12));
    assert!(
        own.take(t(12), t(14)).is_some(),
        "once the store read to 12"
    );

    // A failed write breaks the chain until the tail has read past the next commit.
    let mut own = OwnWrites::new(100, usize::MAX);
    own.record(commit(Some(10), 12, &[12], 12), t(10));
    own.record(commit(None, 16, &[16], 16), t(10));
    assert_eq!(own.take(t(10), t(16)), None);
    own.record(commit(Some(16), 18, &[18], 18), t(10));
    assert_eq!(own.take(t(10), t(18)), None, "12 to 16 only the store has");
    assert_eq!(
        own.take(t(16), t(18)).map(|(e, _)| stamps(&e)),
        Some(vec![18])
    );

    // Another instance's event the tail has not read.
    let mut own = OwnWrites::new(100, usize::MAX);
    let mut peer_wrote = commit(Some(10), 12, &[12], 12);
    peer_wrote.others_latest_event = Some(t(11));
    own.record(peer_wrote, t(10));
    assert_eq!(own.take(t(10), t(12)), None);
    assert!(own.take(t(11), t(12)).is_some(), "once read");

    // More than the bounds hold: dropped, and the chain restarts at the next commit.
    let mut own = OwnWrites::new(2, usize::MAX);
    own.record(commit(Some(10), 16, &[12, 14, 16], 16), t(10));
    assert_eq!((own.len(), own.take(t(10), t(16))), (0, None));
    own.record(commit(Some(16), 18, &[18], 18), t(16));
    assert!(own.take(t(16), t(18)).is_some());
}

/// The model: instance 0 (this one) issues even timestamps, instance 1 odd ones.
#[derive(Debug)]
struct Model {
    /// Every committed event: (instance, timestamp), in timestamp order.
    store: Vec<(u8, u64)>,
    watermarks: [u64; 2],
    other_online: bool,
    /// Instance 0's writer: its engine's watermark (advanced by failed writes too) and chain.
    engine: u64,
    chain_after: Option<u64>,
}

impl Model {
    /// `count` timestamps of `instance` above `above`.
    fn issue(instance: u8, above: u64, count: usize) -> Vec<u64> {
        let mut first = above + 1;
        if first % 2 != u64::from(instance) {
            first += 1;
        }
        (0..count as u64).map(|i| first + 2 * i).collect()
    }

    fn safe_point(&self) -> u64 {
        if self.other_online {
            self.watermarks[0].min(self.watermarks[1])
        } else {
            self.watermarks[0]
        }
    }

    fn others_latest(&self) -> Option<u64> {
        self.store
            .iter()
            .filter(|(instance, _)| *instance == 1)
            .map(|(_, ts)| *ts)
            .max()
    }

    fn insert(&mut self, instance: u8, stamps: &[u64]) {
        self.store.extend(stamps.iter().map(|&ts| (instance, ts)));
        self.store.sort_by_key(|(_, ts)| *ts);
    }

    fn between(&self, after: u64, up_to: u64) -> Vec<u64> {
        self.store
            .iter()
            .map(|(_, ts)| *ts)
            .filter(|ts| *ts > after && *ts <= up_to)
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// This instance commits this many events (0: a heartbeat); `Some(true)`: the write
    /// failed after committing, `Some(false)`: it failed and wrote nothing.
    Own(usize, Option<bool>),
    /// The other instance commits this many events (0: a heartbeat).
    Other(usize),
    /// The other instance is marked offline, or rejoins above every watermark.
    ToggleOther,
    /// This instance rejoins with a new incarnation above every watermark.
    Rejoin,
    /// The tail advances to the safe point as a fresh read has it.
    Tail,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..4, prop::option::weighted(0.15, any::<bool>()))
            .prop_map(|(count, failure)| Op::Own(count, failure)),
        2 => (0usize..3).prop_map(Op::Other),
        1 => Just(Op::ToggleOther),
        1 => Just(Op::Rejoin),
        4 => Just(Op::Tail),
    ]
}

fn ring_stamps(ring: &TailRing) -> Vec<u64> {
    match ring.read(MemberSeq(1), Some(ring.covers().0), usize::MAX) {
        RingRead::Events { events, .. } => events.iter().map(|e| e.timestamp.as_micros()).collect(),
        RingRead::Behind | RingRead::UpToDate => Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn the_ring_holds_exactly_the_stores_events_whatever_the_interleaving(
        ops in prop::collection::vec(op(), 0..120),
        own_bound in 1usize..8,
    ) {
        let mut model = Model {
            store: Vec::new(),
            watermarks: [0, 0],
            other_online: true,
            engine: 0,
            chain_after: Some(0),
        };
        let mut own = OwnWrites::new(own_bound, usize::MAX);
        let mut ring = TailRing::new(t(0), usize::MAX, usize::MAX);
        for op in ops {
            match op {
                Op::Own(count, failure) => {
                    let stamps = Model::issue(0, model.engine, count);
                    let watermark = stamps.last().copied().unwrap_or(model.engine + 1);
                    model.engine = watermark;
                    if failure != Some(false) {
                        model.insert(0, &stamps);
                        model.watermarks[0] = watermark;
                    }
                    if failure.is_some() {
                        model.chain_after = None;
                        continue;
                    }
                    let commit = OwnCommit {
                        after: model.chain_after.map(t),
                        watermark: t(watermark),
                        events: stamps.iter().map(|&ts| event(ts)).collect(),
                        safe_point: t(model.safe_point()),
                        others_latest_event: model.others_latest().map(t),
                    };
                    own.record(commit, ring.covers().1);
                    model.chain_after = Some(watermark);
                }
                Op::Other(count) => {
                    if model.other_online {
                        let stamps = Model::issue(1, model.watermarks[1], count);
                        model.watermarks[1] =
                            stamps.last().copied().unwrap_or(model.watermarks[1] + 1);
                        model.insert(1, &stamps);
                    }
                }
                Op::ToggleOther => {
                    if model.other_online {
                        model.other_online = false;
                    } else {
                        model.watermarks[1] = model.watermarks[0].max(model.watermarks[1]) + 1;
                        model.other_online = true;
                    }
                }
                Op::Rejoin => {
                    let start = model.watermarks[0].max(model.watermarks[1]).max(model.engine) + 1;
                    model.watermarks[0] = start;
                    model.engine = start;
                    model.chain_after = Some(start);
                }
                Op::Tail => {
                    let to = ring.covers().1;
                    let up_to = t(model.safe_point());
                    if up_to > to {
                        if let Some((events, through)) = own.take(to, up_to) {
                            ring.extend(events, through);
                        } else {
                            let stamps = model.between(to.as_micros(), up_to.as_micros());
                            ring.extend(stamps.into_iter().map(event), up_to);
                            own.discard_through(up_to);
                        }
                    }
                }
            }
            let to = ring.covers().1.as_micros();
            prop_assert!(to <= model.safe_point(), "never beyond the safe point");
            prop_assert_eq!(ring_stamps(&ring), model.between(0, to));
        }
    }
}
