//! The ring, the cursor and the ring-or-store decision, against a model store: whatever the
//! interleaving of commits, tail reads and a subscriber's steps, the subscriber receives
//! exactly its member's stream from the store (no gap, no duplicate, timestamp order, the
//! right previous timestamps).

use meridian_core::MessageId;
use proptest::prelude::*;

use super::*;

fn t(micros: u64) -> Timestamp {
    Timestamp::from_micros(micros)
}

const A: MemberSeq = MemberSeq(1);
const B: MemberSeq = MemberSeq(2);

fn routed(ts: u64, recipients: &[MemberSeq], batch_bytes: usize) -> RoutedEvent {
    RoutedEvent {
        timestamp: t(ts),
        sender: A,
        message_id: MessageId::new(format!("m{ts}")).expect("message id"),
        recipients: recipients.to_vec(),
        batch: vec![0; batch_bytes],
    }
}

fn stamps(events: &[Arc<RoutedEvent>]) -> Vec<u64> {
    events.iter().map(|e| e.timestamp.as_micros()).collect()
}

#[test]
fn the_ring_keeps_the_newest_events_within_both_bounds() {
    let mut ring = TailRing::new(t(5), 3, usize::MAX);
    ring.extend((10..=14).map(|ts| routed(ts, &[A], 0)), t(20));
    assert_eq!(ring.len(), 3);
    assert_eq!(ring.covers(), (t(11), t(20)), "11 was the last evicted");

    let one = cost_bytes(&routed(30, &[A], 1_000));
    let mut ring = TailRing::new(t(0), 100, 2 * one);
    ring.extend((30..33).map(|ts| routed(ts, &[A], 1_000)), t(40));
    assert_eq!(ring.len(), 2);
    assert_eq!(ring.covers(), (t(30), t(40)));

    // Events outside (to, through] are ignored; `to` never moves back.
    ring.extend([routed(31, &[A], 1), routed(50, &[A], 1)], t(45));
    assert_eq!(ring.len(), 2);
    assert_eq!(ring.covers().1, t(45));
    ring.extend([], t(41));
    assert_eq!(ring.covers().1, t(45));

    // One event larger than the byte bound is not kept at all.
    let mut ring = TailRing::new(t(0), 100, 10);
    ring.extend([routed(1, &[A], 100)], t(2));
    assert!(ring.is_empty());
    assert_eq!(ring.covers(), (t(1), t(2)));
}

#[test]
fn reading_the_ring_filters_by_member_and_respects_coverage() {
    let mut ring = TailRing::new(t(10), 100, usize::MAX);
    ring.extend(
        [
            routed(11, &[A, B], 0),
            routed(12, &[B], 0),
            routed(13, &[A], 0),
            routed(14, &[B], 0),
        ],
        t(20),
    );
    assert_eq!(ring.read(A, None, 100), RingRead::Behind);
    assert_eq!(ring.read(A, Some(t(9)), 100), RingRead::Behind);
    assert_eq!(ring.read(A, Some(t(20)), 100), RingRead::UpToDate);
    assert_eq!(ring.read(A, Some(t(25)), 100), RingRead::UpToDate);
    let RingRead::Events { events, through } = ring.read(A, Some(t(10)), 100) else {
        panic!("events expected");
    };
    assert_eq!((stamps(&events), through), (vec![11, 13], t(20)));
    let RingRead::Events { events, through } = ring.read(A, Some(t(11)), 100) else {
        panic!("events expected");
    };
    assert_eq!((stamps(&events), through), (vec![13], t(20)));
    // The scan bound: two events looked at, so through the second.
    let RingRead::Events { events, through } = ring.read(B, Some(t(10)), 2) else {
        panic!("events expected");
    };
    assert_eq!((stamps(&events), through), (vec![11, 12], t(12)));
    let RingRead::Events { events, through } = ring.read(A, Some(t(11)), 1) else {
        panic!("events expected");
    };
    assert_eq!((stamps(&events), through), (vec![], t(12)));
}

#[test]
fn the_next_step_is_the_ring_when_it_covers_the_position_else_the_store() {
    let mut ring = TailRing::new(Timestamp::MIN, 100, usize::MAX);
    // The tail has not started: nothing is deliverable yet.
    assert_eq!(next_step(&Cursor::new(None), &ring, A, 10), Step::Wait);

    ring.restart_at(t(10));
    ring.extend([routed(11, &[A], 0), routed(12, &[B], 0)], t(20));
    assert_eq!(
        next_step(&Cursor::new(None), &ring, A, 10),
        Step::ReadStore {
            after: None,
            up_to: t(20)
        }
    );
    assert_eq!(
        next_step(&Cursor::new(Some(t(3))), &ring, A, 10),
        Step::ReadStore {
            after: Some(t(3)),
            up_to: t(20)
        }
    );
    // Inside the ring, but the member's previous event is unknown: ask first.
    let mut cursor = Cursor::new(Some(t(10)));
    assert_eq!(
        next_step(&cursor, &ring, A, 10),
        Step::LookUpPrevious { at: t(10) }
    );
    cursor.set_previous(Some(t(4)));
    let Step::Deliver { events, through } = next_step(&cursor, &ring, A, 10) else {
        panic!("deliver expected");
    };
    assert_eq!((stamps(&events), through), (vec![11], t(20)));
    cursor.delivered(t(11));
    cursor.advance_to(through);
    assert_eq!(cursor.previous(), Some(Some(t(11))));
    assert_eq!(next_step(&cursor, &ring, A, 10), Step::Wait);

    // No event of the member in the ring: no need to know its previous one.
    let cursor = Cursor::new(Some(t(11)));
    assert_eq!(
        next_step(&cursor, &ring, A, 10),
        Step::Deliver {
            events: vec![],
            through: t(20)
        }
    );
    // A position ahead of the tail (resuming from another instance's later event) waits.
    assert_eq!(
        next_step(&Cursor::new(Some(t(30))), &ring, A, 10),
        Step::Wait
    );
}

#[test]
fn a_store_page_moves_the_cursor_to_its_last_event_or_its_end() {
    let stored = |ts: u64, previous: Option<u64>| StoredEvent {
        timestamp: t(ts),
        previous_timestamp: previous.map(t),
        sender: A,
        message_id: MessageId::new(format!("m{ts}")).expect("message id"),
        batch: Vec::new(),
    };
    let mut cursor = Cursor::new(Some(t(5)));
    assert_eq!(cursor.previous(), None);
    cursor.store_page_done(&[stored(7, Some(2)), stored(9, Some(7))], 2, t(50));
    assert_eq!(
        (cursor.position(), cursor.previous()),
        (Some(t(9)), Some(Some(t(9))))
    );
    cursor.store_page_done(&[stored(12, Some(9))], 2, t(50));
    assert_eq!(
        (cursor.position(), cursor.previous()),
        (Some(t(50)), Some(Some(t(12))))
    );

    // An empty page from the start: the member has no events at all so far.
    let mut cursor = Cursor::new(None);
    cursor.store_page_done(&[], 2, t(50));
    assert_eq!(
        (cursor.position(), cursor.previous()),
        (Some(t(50)), Some(None))
    );
    // From a position, an empty page leaves the previous event unknown.
    let mut cursor = Cursor::new(Some(t(5)));
    cursor.store_page_done(&[], 2, t(50));
    assert_eq!((cursor.position(), cursor.previous()), (Some(t(50)), None));
}

/// The store the sequencer reads, as a list of every event ever committed.
struct ModelStore {
    events: Vec<RoutedEvent>,
}

impl ModelStore {
    fn member_events(&self, member: MemberSeq) -> impl Iterator<Item = &RoutedEvent> {
        self.events
            .iter()
            .filter(move |e| e.recipients.contains(&member))
    }

    fn at_or_before(&self, member: MemberSeq, at: Timestamp) -> Option<Timestamp> {
        self.member_events(member)
            .map(|e| e.timestamp)
            .filter(|ts| *ts <= at)
            .max()
    }

    fn read_events(
        &self,
        member: MemberSeq,
        after: Option<Timestamp>,
        up_to: Timestamp,
        limit: u32,
    ) -> Vec<StoredEvent> {
        self.member_events(member)
            .filter(|e| after.is_none_or(|a| e.timestamp > a) && e.timestamp <= up_to)
            .take(limit as usize)
            .map(|e| StoredEvent {
                timestamp: e.timestamp,
                previous_timestamp: self
                    .at_or_before(member, Timestamp::from_micros(e.timestamp.as_micros() - 1)),
                sender: e.sender,
                message_id: e.message_id.clone(),
                batch: e.batch.clone(),
            })
            .collect()
    }

    fn events_after(&self, after: Timestamp, up_to: Timestamp, limit: u32) -> Vec<RoutedEvent> {
        self.events
            .iter()
            .filter(|e| e.timestamp > after && e.timestamp <= up_to)
            .take(limit as usize)
            .cloned()
            .collect()
    }
}

/// The tail task's one read, as `follow` makes it.
fn tail_read(ring: &mut TailRing, store: &ModelStore, safe_point: Timestamp, page: u32) {
    let (_, to) = ring.covers();
    if to == Timestamp::MIN {
        ring.restart_at(safe_point);
        return;
    }
    if safe_point <= to {
        return;
    }
    let events = store.events_after(to, safe_point, page);
    let through = match events.last() {
        Some(last) if events.len() == page as usize => last.timestamp,
        _ => safe_point,
    };
    ring.extend(events, through);
}

/// One step of the subscription, as `reader::stream` carries it out; what it delivered as
/// (timestamp, previous timestamp). `None` when it would wait.
#[allow(clippy::type_complexity)]
fn subscriber_step(
    cursor: &mut Cursor,
    ring: &TailRing,
    store: &ModelStore,
    member: MemberSeq,
    page: u32,
    scan: usize,
) -> Option<Vec<(Timestamp, Option<Timestamp>)>> {
    match next_step(cursor, ring, member, scan) {
        Step::Wait => None,
        Step::ReadStore { after, up_to } => {
            let events = store.read_events(member, after, up_to, page);
            let delivered = events
                .iter()
                .map(|e| (e.timestamp, e.previous_timestamp))
                .collect();
            cursor.store_page_done(&events, page, up_to);
            Some(delivered)
        }
        Step::LookUpPrevious { at } => {
            cursor.set_previous(store.at_or_before(member, at));
            Some(Vec::new())
        }
        Step::Deliver { events, through } => {
            let mut delivered = Vec::new();
            for event in &events {
                let previous = cursor.previous().expect("previous known before delivering");
                delivered.push((event.timestamp, previous));
                cursor.delivered(event.timestamp);
            }
            cursor.advance_to(through);
            Some(delivered)
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// The safe point moves forward by this many microseconds.
    Commit(u64),
    /// The tail reads once.
    Tail,
    /// The subscriber takes a step.
    Subscriber,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u64..30).prop_map(Op::Commit),
        Just(Op::Tail),
        Just(Op::Subscriber),
    ]
}

fn events() -> impl Strategy<Value = Vec<RoutedEvent>> {
    prop::collection::vec((1u64..6, 1u8..8, 0usize..300), 0..60).prop_map(|specs| {
        let mut ts = 0;
        specs
            .into_iter()
            .map(|(gap, mask, bytes)| {
                ts += gap;
                let recipients: Vec<MemberSeq> = (0..3)
                    .filter(|bit| mask & (1 << bit) != 0)
                    .map(|bit| MemberSeq(i64::from(bit) + 1))
                    .collect();
                routed(ts, &recipients, bytes)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn a_subscriber_gets_exactly_its_members_stream_whatever_the_interleaving(
        events in events(),
        ops in prop::collection::vec(op(), 0..200),
        resume in prop::option::of(0u64..200),
        ring_events in 1usize..8,
        ring_bytes in 200usize..3_000,
        tail_page in 1u32..5,
        store_page in 1u32..4,
        scan in 1usize..4,
    ) {
        let member = A;
        let store = ModelStore { events };
        let last = store.events.last().map_or(0, |e| e.timestamp.as_micros());
        let after = resume.map(t);
        let mut ring = TailRing::new(Timestamp::MIN, ring_events, ring_bytes);
        let mut cursor = Cursor::new(after);
        let mut safe_point = t(1);
        let mut delivered = Vec::new();
        for op in ops {
            match op {
                Op::Commit(by) => safe_point = t(safe_point.as_micros() + by),
                Op::Tail => tail_read(&mut ring, &store, safe_point, tail_page),
                Op::Subscriber => {
                    if let Some(more) = subscriber_step(&mut cursor, &ring, &store, member, store_page, scan) {
                        delivered.extend(more);
                    }
                }
            }
            // Never beyond what the tail has read, hence never beyond the safe point.
            if let Some(&(ts, _)) = delivered.last() {
                prop_assert!(ts <= ring.covers().1 && ts <= safe_point);
            }
        }
        // Everything committed; the tail and the subscriber catch up.
        safe_point = safe_point.max(t(last + 1));
        for _ in 0..10_000 {
            tail_read(&mut ring, &store, safe_point, tail_page);
            let Some(more) = subscriber_step(&mut cursor, &ring, &store, member, store_page, scan) else {
                if ring.covers().1 == safe_point {
                    break;
                }
                continue;
            };
            delivered.extend(more);
        }
        let expected: Vec<(Timestamp, Option<Timestamp>)> = store
            .read_events(member, after, safe_point, u32::MAX)
            .into_iter()
            .map(|e| (e.timestamp, e.previous_timestamp))
            .collect();
        prop_assert_eq!(delivered, expected);
    }
}
