//! The sequencer's event model as members see it, and the check every subscriber runs on the
//! stream: each event names the member's previous event, so a gap or a rewritten history (for
//! example after a database failover lost asynchronously replicated data) is detected instead
//! of silently processed.

use crate::ids::{MemberId, MessageId};
use crate::time::Timestamp;

/// One envelope of a submission: opaque bytes for a set of recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub recipients: Vec<MemberId>,
    pub payload: Vec<u8>,
}

/// What a member asks the sequencer to order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub sender: MemberId,
    pub message_id: MessageId,
    pub envelopes: Vec<Envelope>,
    pub max_sequencing_time: Timestamp,
}

impl Submission {
    /// Bytes of payload and recipient ids: what the size limit is measured on.
    pub fn size_bytes(&self) -> usize {
        self.envelopes
            .iter()
            .map(|e| e.payload.len() + e.recipients.iter().map(|r| r.as_str().len()).sum::<usize>())
            .sum()
    }
}

/// An event as delivered to one member: only the envelopes addressed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencedEvent {
    pub timestamp: Timestamp,
    /// The member's previous event; `None` for its first.
    pub previous_timestamp: Option<Timestamp>,
    pub sender: MemberId,
    /// Present only when the event is delivered to its own sender.
    pub message_id: Option<MessageId>,
    pub envelopes: Vec<Envelope>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForkError {
    #[error(
        "fork detected: event {timestamp} names previous event {claimed_previous:?}, \
         but the last event this member processed is {last_processed:?}; the sequencer's \
         history differs from what was delivered before (lost or rewritten events)"
    )]
    PreviousMismatch {
        timestamp: Timestamp,
        claimed_previous: Option<Timestamp>,
        last_processed: Option<Timestamp>,
    },
    #[error(
        "fork detected: event {timestamp} is not after the last processed event {last_processed}"
    )]
    NotIncreasing {
        timestamp: Timestamp,
        last_processed: Timestamp,
    },
}

/// Tracks the last processed event of one member and validates each next one.
///
/// Start it from the member's last processed event (`None` if it has processed nothing), which
/// is also the `after` point of the subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventChain {
    last_processed: Option<Timestamp>,
}

impl EventChain {
    pub fn new(last_processed: Option<Timestamp>) -> Self {
        Self { last_processed }
    }

    pub fn last_processed(&self) -> Option<Timestamp> {
        self.last_processed
    }

    /// Accepts the next event or reports a fork. A fork leaves the chain unchanged: the
    /// member must stop, not skip the event.
    pub fn accept(
        &mut self,
        timestamp: Timestamp,
        previous_timestamp: Option<Timestamp>,
    ) -> Result<(), ForkError> {
        if let Some(last) = self.last_processed {
            if timestamp <= last {
                return Err(ForkError::NotIncreasing {
                    timestamp,
                    last_processed: last,
                });
            }
        }
        if previous_timestamp != self.last_processed {
            return Err(ForkError::PreviousMismatch {
                timestamp,
                claimed_previous: previous_timestamp,
                last_processed: self.last_processed,
            });
        }
        self.last_processed = Some(timestamp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(micros: u64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn accepts_a_consistent_chain() {
        let mut chain = EventChain::new(None);
        chain.accept(ts(10), None).unwrap();
        chain.accept(ts(20), Some(ts(10))).unwrap();
        assert_eq!(chain.last_processed(), Some(ts(20)));
    }

    #[test]
    fn detects_a_gap() {
        let mut chain = EventChain::new(Some(ts(10)));
        let err = chain.accept(ts(30), Some(ts(20))).unwrap_err();
        assert!(matches!(err, ForkError::PreviousMismatch { .. }));
        assert!(err.to_string().starts_with("fork detected"));
        assert_eq!(
            chain.last_processed(),
            Some(ts(10)),
            "a fork must not advance the chain"
        );
    }

    #[test]
    fn detects_rewritten_history_and_replays() {
        // The member processed 10 and 20; after a database failover the sequencer lost 20 and
        // sequenced a different event at 25 whose predecessor is 10.
        let mut chain = EventChain::new(Some(ts(20)));
        assert!(chain.accept(ts(25), Some(ts(10))).is_err());
        // A replay of an already processed event is also a fork, not a duplicate to skip.
        assert!(matches!(
            chain.accept(ts(20), Some(ts(10))),
            Err(ForkError::NotIncreasing { .. })
        ));
        // A history that starts over (first event again) is detected too.
        assert!(chain.accept(ts(30), None).is_err());
    }

    proptest! {
        #[test]
        fn any_dropped_event_is_detected(
            gaps in proptest::collection::vec(1u64..1_000, 2..50),
            drop_at in any::<proptest::sample::Index>(),
        ) {
            let mut timestamps = Vec::new();
            let mut t = 0;
            for gap in gaps { t += gap; timestamps.push(ts(t)); }
            let dropped = drop_at.index(timestamps.len() - 1); // never the last one
            let mut chain = EventChain::new(None);
            let mut previous = None;
            let mut forked = false;
            for (i, &timestamp) in timestamps.iter().enumerate() {
                // The sequencer computes `previous` from the history it really has.
                let delivered_previous = previous;
                previous = Some(timestamp);
                if i == dropped { continue; }
                if chain.accept(timestamp, delivered_previous).is_err() { forked = true; break; }
            }
            prop_assert!(forked);
        }
    }
}
