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
    /// The sequencer refused to resume after the member's last processed event because its
    /// history has no such event for the member: it was lost (a database failover to a
    /// standby that had not replayed it). Detected at (re)subscription, before any event.
    #[error(
        "fork detected: the last event this member processed, {last_processed}, is not in the \
         sequencer's history; the sequencer's latest event for this member at or before it is \
         {}, and its latest event for this member is {}; the sequencer lost events this \
         member processed",
        describe(*last_shared),
        describe(*sequencer_latest)
    )]
    UnknownLastEvent {
        last_processed: Timestamp,
        /// The sequencer's latest event for the member at or before `last_processed`: the
        /// last event both histories share.
        last_shared: Option<Timestamp>,
        /// The sequencer's latest event for the member (what it now serves).
        sequencer_latest: Option<Timestamp>,
    },
}

fn describe(timestamp: Option<Timestamp>) -> String {
    timestamp.map_or_else(|| "none".to_owned(), |t| t.to_string())
}

/// Where two histories of one member part: the last event both contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForkPoint {
    /// Both histories agree up to and including this event (`None`: on no event at all), and
    /// everything the member processed after it is missing from the sequencer's history.
    Shared(Option<Timestamp>),
    /// The error does not say (a replayed or reordered event, which a sequencer with a
    /// prefix of the old history does not produce).
    Unknown,
}

impl ForkError {
    /// The last event both the member's and the sequencer's history contain. The sequencer's
    /// history after a lost suffix is the old history up to some event, then new events; so
    /// the sequencer's latest event at or before the member's last one is the fork point.
    pub fn fork_point(&self) -> ForkPoint {
        match *self {
            ForkError::UnknownLastEvent { last_shared, .. } => ForkPoint::Shared(last_shared),
            ForkError::PreviousMismatch {
                claimed_previous,
                last_processed,
                ..
            } => match (claimed_previous, last_processed) {
                // The new event's predecessor lies before what the member processed: the
                // sequencer lacks what came after it.
                (claimed, Some(last)) if claimed.is_none_or(|c| c < last) => {
                    ForkPoint::Shared(claimed)
                }
                // A gap above the member's last event: nothing it processed is missing.
                (_, last) => ForkPoint::Shared(last),
            },
            ForkError::NotIncreasing { .. } => ForkPoint::Unknown,
        }
    }

    /// The last event the member processed, if the error names it.
    pub fn last_processed(&self) -> Option<Timestamp> {
        match *self {
            ForkError::UnknownLastEvent { last_processed, .. } => Some(last_processed),
            ForkError::PreviousMismatch { last_processed, .. } => last_processed,
            ForkError::NotIncreasing { last_processed, .. } => Some(last_processed),
        }
    }
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

    #[test]
    fn the_fork_point_is_the_last_shared_event() {
        // The member processed up to 30; the sequencer kept up to 10 and then sequenced 40.
        let mismatch = ForkError::PreviousMismatch {
            timestamp: ts(40),
            claimed_previous: Some(ts(10)),
            last_processed: Some(ts(30)),
        };
        assert_eq!(mismatch.fork_point(), ForkPoint::Shared(Some(ts(10))));
        // The sequencer kept nothing of this member's history.
        let from_scratch = ForkError::PreviousMismatch {
            timestamp: ts(40),
            claimed_previous: None,
            last_processed: Some(ts(30)),
        };
        assert_eq!(from_scratch.fork_point(), ForkPoint::Shared(None));
        // A gap above the member's last event loses nothing the member processed.
        let gap = ForkError::PreviousMismatch {
            timestamp: ts(40),
            claimed_previous: Some(ts(35)),
            last_processed: Some(ts(30)),
        };
        assert_eq!(gap.fork_point(), ForkPoint::Shared(Some(ts(30))));
        let refused = ForkError::UnknownLastEvent {
            last_processed: ts(30),
            last_shared: Some(ts(20)),
            sequencer_latest: Some(ts(50)),
        };
        assert_eq!(refused.fork_point(), ForkPoint::Shared(Some(ts(20))));
        let text = refused.to_string();
        assert!(text.contains(&ts(30).to_string()), "{text}");
        assert!(text.contains(&ts(50).to_string()), "{text}");
        let replay = ForkError::NotIncreasing {
            timestamp: ts(20),
            last_processed: ts(30),
        };
        assert_eq!(replay.fork_point(), ForkPoint::Unknown);
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
