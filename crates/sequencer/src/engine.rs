//! The ordering engine: pure, deterministic sequencing logic with no I/O.
//!
//! The writer task feeds it validated submissions and the current wall-clock time; it answers
//! with a [`WritePlan`] (events to store in one transaction, the watermark to commit with them,
//! and submissions rejected before storing). Keeping this free of sockets and databases is what
//! lets us test timestamp uniqueness and deadline handling exhaustively and replay them.

use std::time::Duration;

use meridian_core::{InstanceIndex, MessageId, Timestamp};
use meridian_store::{MemberSeq, NewEvent};

/// Timestamp partitioning: instance `index` of `count` only issues `t` with `t % count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    index: InstanceIndex,
    count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance index {index} is not below the instance count {count}")]
pub struct PartitionError {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    pub fn new(index: InstanceIndex, count: u32) -> Result<Self, PartitionError> {
        if count == 0 || index.0 >= count {
            return Err(PartitionError {
                index: index.0,
                count,
            });
        }
        Ok(Self { index, count })
    }

    pub fn index(&self) -> InstanceIndex {
        self.index
    }

    /// The smallest timestamp of this partition that is `>= at_least`.
    fn round_up(&self, at_least: u64) -> u64 {
        let count = u64::from(self.count);
        let index = u64::from(self.index.0);
        let base = at_least - at_least % count;
        let candidate = base + index;
        if candidate >= at_least {
            candidate
        } else {
            candidate + count
        }
    }
}

/// A submission that passed validation, waiting for its timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedSubmission {
    pub sender: MemberSeq,
    pub message_id: MessageId,
    pub max_sequencing_time: Timestamp,
    pub recipients: Vec<MemberSeq>,
    /// The encoded `meridian.v1.Batch`.
    pub batch: Vec<u8>,
}

/// Why the engine refused a submission without storing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The next free timestamp is after the submission's max sequencing time.
    MaxSequencingTimeExceeded { would_be: Timestamp },
}

/// What the writer must do for one batch of submissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// To store in one transaction; `slots[i]` says which input each event came from.
    pub events: Vec<NewEvent>,
    pub slots: Vec<usize>,
    /// Input positions refused before storing.
    pub refused: Vec<(usize, Refusal)>,
    /// Committed with the events: every event's timestamp is at most this.
    pub watermark: Timestamp,
}

/// Issues unique, strictly increasing timestamps for one sequencer instance.
#[derive(Debug, Clone)]
pub struct OrderingEngine {
    partition: Partition,
    /// The highest timestamp issued or promised (the watermark). Never decreases; every
    /// future timestamp is strictly above it.
    high: Timestamp,
}

impl OrderingEngine {
    /// `start_watermark` comes from `SequencerStore::start_instance`: nothing may be issued at
    /// or below it, since readers may already have delivered up to it.
    pub fn new(partition: Partition, start_watermark: Timestamp) -> Self {
        Self {
            partition,
            high: start_watermark,
        }
    }

    pub fn watermark(&self) -> Timestamp {
        self.high
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The timestamp the next event would get; strictly above the watermark.
    fn peek_next(&self, now: Timestamp) -> Timestamp {
        let at_least = now.as_micros().max(self.high.as_micros() + 1);
        Timestamp::from_micros(self.partition.round_up(at_least))
    }

    /// Stamps a batch of submissions. Timestamps are strictly increasing in input order.
    pub fn plan(&mut self, now: Timestamp, submissions: &[ValidatedSubmission]) -> WritePlan {
        let mut events = Vec::with_capacity(submissions.len());
        let mut slots = Vec::with_capacity(submissions.len());
        let mut refused = Vec::new();
        for (slot, submission) in submissions.iter().enumerate() {
            // A refused submission must not consume a timestamp, so peek before issuing.
            let timestamp = self.peek_next(now);
            if timestamp > submission.max_sequencing_time {
                refused.push((
                    slot,
                    Refusal::MaxSequencingTimeExceeded {
                        would_be: timestamp,
                    },
                ));
                continue;
            }
            self.high = timestamp;
            events.push(NewEvent {
                timestamp,
                sender: submission.sender,
                message_id: submission.message_id.clone(),
                max_sequencing_time: submission.max_sequencing_time,
                recipients: submission.recipients.clone(),
                batch: submission.batch.clone(),
            });
            slots.push(slot);
        }
        WritePlan {
            events,
            slots,
            refused,
            watermark: self.high,
        }
    }

    /// The watermark an idle instance commits so readers' safe point keeps moving. Promises
    /// that nothing at or below it will be issued.
    pub fn idle_watermark(&mut self, now: Timestamp) -> Timestamp {
        if now > self.high {
            self.high = now;
        }
        self.high
    }

    /// The watermark of a heartbeat: [`Self::idle_watermark`] at `now + lead`, but always
    /// above the previous one. Peers take a watermark that stands still for a dead instance
    /// (they never compare it with their own clock), so a live one must move it even while its
    /// clock has not caught up with it yet — after rejoining above a peer whose clock ran
    /// ahead, say.
    ///
    /// `lead` is a promise ahead of the clock, given by an idle instance: every event of a
    /// busy peer waits until each instance's watermark has passed it (the safe point is their
    /// minimum), and an idle instance's watermark otherwise trails the clock by up to one
    /// heartbeat interval — a wait added to every protocol hop. Promising `lead` ahead removes
    /// that wait; its price is that this instance's next events are stamped above the promise,
    /// so they wait for the peers' watermarks instead (at most `lead`, once, when it wakes up).
    pub fn heartbeat_watermark(&mut self, now: Timestamp, lead: Duration) -> Timestamp {
        let next = self.high.saturating_add(Duration::from_micros(1));
        self.idle_watermark(now.saturating_add(lead).max(next))
    }

    /// The watermark that releases a peer's event stamped `waiting`, when this instance's
    /// watermark holds it back (the safe point is the minimum of the watermarks); `None` when
    /// it does not, or when the clock gives nothing above the current watermark yet.
    ///
    /// Without this, the event waits for this instance's next own commit or heartbeat, up to
    /// one watermark interval on every protocol hop whenever both instances carry load. The
    /// promise reaches `waiting` but at most `max_lead` ahead of the clock: a peer whose clock
    /// runs ahead must not drag this one's timestamps along, and its own next events are
    /// stamped above the promise. It reaches at least `idle_lead` ahead, the lead an idle
    /// instance's heartbeat would promise ([`Self::heartbeat_watermark`]), so that an idle
    /// instance answers one catch-up with a lead that covers the peer's next events, instead of
    /// one catch-up per event.
    pub fn catch_up_watermark(
        &mut self,
        now: Timestamp,
        waiting: Timestamp,
        max_lead: Duration,
        idle_lead: Duration,
    ) -> Option<Timestamp> {
        if self.high >= waiting {
            return None;
        }
        let target = waiting
            .min(now.saturating_add(max_lead))
            .max(now.saturating_add(idle_lead));
        (target > self.high).then(|| self.idle_watermark(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn submission(deadline: u64) -> ValidatedSubmission {
        ValidatedSubmission {
            sender: MemberSeq(1),
            message_id: MessageId::new("m").unwrap(),
            max_sequencing_time: Timestamp::from_micros(deadline),
            recipients: vec![MemberSeq(2)],
            batch: vec![],
        }
    }

    /// The engine of instance `index` among `count`, starting above `start_micros`.
    fn instance(index: u32, count: u32, start_micros: u64) -> OrderingEngine {
        let partition = Partition::new(InstanceIndex(index), count).unwrap();
        OrderingEngine::new(partition, Timestamp::from_micros(start_micros))
    }

    #[test]
    fn partition_rejects_bad_index() {
        assert!(Partition::new(InstanceIndex(3), 3).is_err());
        assert!(Partition::new(InstanceIndex(0), 0).is_err());
    }

    #[test]
    fn timestamps_belong_to_the_partition_and_exceed_the_start_watermark() {
        let mut engine = instance(5, 32, 1_000);
        let plan = engine.plan(
            Timestamp::from_micros(10),
            &[submission(u64::MAX >> 2), submission(u64::MAX >> 2)],
        );
        let stamps: Vec<u64> = plan
            .events
            .iter()
            .map(|e| e.timestamp.as_micros())
            .collect();
        assert_eq!(stamps, vec![1_029, 1_061]);
        assert_eq!(plan.watermark.as_micros(), 1_061);
    }

    #[test]
    fn refuses_past_deadline_without_consuming_a_timestamp() {
        let mut engine = instance(0, 1, 100);
        let plan = engine.plan(
            Timestamp::from_micros(100),
            &[submission(100), submission(1_000)],
        );
        assert_eq!(
            plan.refused,
            vec![(
                0,
                Refusal::MaxSequencingTimeExceeded {
                    would_be: Timestamp::from_micros(101)
                }
            )]
        );
        assert_eq!(plan.slots, vec![1]);
        assert_eq!(plan.events[0].timestamp.as_micros(), 101);
    }

    #[test]
    fn idle_watermark_follows_the_clock_but_never_goes_back() {
        let mut engine = instance(0, 4, 500);
        assert_eq!(
            engine
                .idle_watermark(Timestamp::from_micros(400))
                .as_micros(),
            500
        );
        assert_eq!(
            engine
                .idle_watermark(Timestamp::from_micros(900))
                .as_micros(),
            900
        );
        let plan = engine.plan(Timestamp::from_micros(10), &[submission(10_000)]);
        assert_eq!(plan.events[0].timestamp.as_micros(), 904);
    }

    #[test]
    fn an_idle_heartbeat_promises_its_lead_and_the_next_event_is_stamped_above_it() {
        let mut engine = instance(0, 4, 500);
        let now = Timestamp::from_micros(1_000);
        let lead = Duration::from_micros(100);
        // The promise runs ahead of the clock, so a busy peer's events up to it are safe.
        assert_eq!(engine.heartbeat_watermark(now, lead).as_micros(), 1_100);
        // Nothing at or below a promise is ever issued, even with the clock behind it.
        let plan = engine.plan(now, &[submission(10_000)]);
        assert!(plan.events[0].timestamp.as_micros() > 1_100);
        assert_eq!(plan.watermark, plan.events[0].timestamp);
        // Without a lead the heartbeat only moves past what was issued.
        let issued = plan.watermark.as_micros();
        assert_eq!(
            engine.heartbeat_watermark(now, Duration::ZERO).as_micros(),
            issued + 1
        );
    }

    #[test]
    fn a_heartbeat_always_moves_the_watermark() {
        let mut engine = instance(0, 4, 500);
        let behind = Timestamp::from_micros(400);
        assert_eq!(
            engine
                .heartbeat_watermark(behind, Duration::ZERO)
                .as_micros(),
            501
        );
        assert_eq!(
            engine
                .heartbeat_watermark(behind, Duration::ZERO)
                .as_micros(),
            502
        );
        let ahead = Timestamp::from_micros(900);
        assert_eq!(
            engine
                .heartbeat_watermark(ahead, Duration::ZERO)
                .as_micros(),
            900
        );
        let plan = engine.plan(behind, &[submission(10_000)]);
        assert_eq!(plan.events[0].timestamp.as_micros(), 904);
    }

    #[test]
    fn a_catch_up_releases_the_waiting_event_but_never_leads_further_than_allowed() {
        let max_lead = Duration::from_micros(50);
        let busy = Duration::ZERO;
        let mut engine = instance(0, 2, 1_000);
        let at = Timestamp::from_micros;
        // Not holding anything back: nothing to do.
        assert_eq!(
            engine.catch_up_watermark(at(2_000), at(900), max_lead, busy),
            None
        );
        // A peer's event at 1,020 waits; the clock is already past it.
        assert_eq!(
            engine.catch_up_watermark(at(1_030), at(1_020), max_lead, busy),
            Some(at(1_030))
        );
        // A peer's clock runs 500 µs ahead: the promise stops `max_lead` past this clock.
        assert_eq!(
            engine.catch_up_watermark(at(1_040), at(1_600), max_lead, busy),
            Some(at(1_090))
        );
        // The own next event is stamped above the promise.
        let plan = engine.plan(at(1_041), &[submission(10_000)]);
        assert_eq!(plan.events[0].timestamp.as_micros(), 1_092);
        // A clock behind the watermark gives nothing new to promise.
        assert_eq!(
            engine.catch_up_watermark(at(1_000), at(1_600), Duration::ZERO, busy),
            None
        );
        // An idle instance promises its heartbeat's lead, past the waiting event.
        assert_eq!(
            engine.catch_up_watermark(at(1_100), at(1_101), max_lead, Duration::from_micros(200)),
            Some(at(1_300))
        );
    }

    proptest! {
        /// Several instances, each fed arbitrary clock readings, never issue the same
        /// timestamp, and each issues strictly increasing ones above its start watermark.
        #[test]
        fn instances_never_collide(
            count in 1u32..8,
            clocks in proptest::collection::vec((0u32..8, 0u64..5_000, 1usize..4), 1..60),
        ) {
            let mut engines: Vec<OrderingEngine> = (0..count)
                .map(|i| instance(i, count, 100))
                .collect();
            let mut seen = std::collections::HashSet::new();
            let mut last = vec![100u64; count as usize];
            for (instance, now, batch) in clocks {
                let i = (instance % count) as usize;
                let plan = engines[i].plan(
                    Timestamp::from_micros(now),
                    &vec![submission(u64::MAX >> 2); batch],
                );
                for event in plan.events {
                    let t = event.timestamp.as_micros();
                    prop_assert_eq!(t % u64::from(count), i as u64);
                    prop_assert!(t > last[i]);
                    prop_assert!(t <= plan.watermark.as_micros());
                    last[i] = t;
                    prop_assert!(seen.insert(t));
                }
            }
        }
    }
}
