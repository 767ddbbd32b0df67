//! The mediator's store contract.
//!
//! Data model (the same on both backends):
//! - `mediator_requests(request_id, deadline, informee)`: in-flight requests with the informee
//!   message as received (JSON) and the sequencer time after which they time out.
//! - `mediator_responses(request_id, participant, response)`: the valid responses received for
//!   in-flight requests (JSON), at most one per participant.
//! - `mediator_verdicts(request_id, recipients, verdict, sent)`: decided requests, the verdict
//!   (JSON) and whom it goes to; `sent` once the sequencer acknowledged it.
//! - `mediator_checkpoint(ts)`: the last sequenced event whose consequences are stored.
//!
//! Payloads are opaque text to the store: the mediator owns their encoding, just as the
//! sequencer store treats batches as bytes.
//!
//! Invariant the mediator relies on: [`MediatorStore::apply`] writes everything derived from a
//! run of events *and* the checkpoint in one transaction. A crash therefore leaves the state of
//! exactly some prefix of the event stream, and resuming the subscription after the checkpoint
//! neither loses nor re-applies an event.
//!
//! Replication: every write transaction (`apply`, `mark_verdicts_sent`, `prune_verdicts`) first
//! runs the fencing check of [`MediatorStore::fence`] inside the transaction, so a deposed
//! replica writes nothing.
//!
//! One implementation serves both backends ([`SqlMediatorStore`], in `store`); only the bulk
//! inserts of `apply` are written per dialect (`sqlite`: multi-row `VALUES`; `postgres`:
//! `INSERT ... SELECT FROM UNNEST(arrays)`).

mod postgres;
mod sqlite;
mod store;

pub use store::SqlMediatorStore;

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use meridian_core::{MemberId, ParticipantId, Timestamp};

use crate::sequencer::BackendStatus;
use crate::{FenceSlot, StoreError};

/// A request the mediator has not decided yet, with the responses it accepted so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequestRecord {
    pub request_id: Timestamp,
    pub deadline: Timestamp,
    pub informee_json: String,
    /// In participant order.
    pub responses: Vec<ResponseRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRecord {
    pub participant: ParticipantId,
    pub response_json: String,
}

/// A decided request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerdictRecord {
    pub request_id: Timestamp,
    /// The members the verdict is sent to.
    pub recipients: Vec<MemberId>,
    pub verdict_json: String,
    /// The sequencer acknowledged the verdict's submission.
    pub sent: bool,
}

/// Everything a (re)starting mediator needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediatorSnapshot {
    /// The last processed event; `None` before the first one. Subscribe after it.
    pub checkpoint: Option<Timestamp>,
    /// In request order.
    pub pending: Vec<PendingRequestRecord>,
    /// Verdicts decided but not known to be sent, in request order: send them (again).
    pub unsent: Vec<VerdictRecord>,
}

/// One state change derived from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediatorChange {
    RequestAdded {
        request_id: Timestamp,
        deadline: Timestamp,
        informee_json: String,
    },
    ResponseAdded {
        request_id: Timestamp,
        participant: ParticipantId,
        response_json: String,
    },
    /// Removes the request and its responses and records the verdict, not yet sent.
    VerdictDecided {
        request_id: Timestamp,
        recipients: Vec<MemberId>,
        verdict_json: String,
    },
}

#[async_trait]
pub trait MediatorStore: Send + Sync + 'static {
    /// This store's fencing slot (see [`crate::lease`]): the replica manager sets it, and every
    /// write transaction checks it first. Unset (the default), writes are not fenced. Clones
    /// share the slot.
    fn fence(&self) -> FenceSlot;

    async fn load(&self) -> Result<MediatorSnapshot, StoreError>;

    /// Applies `changes` in order and advances the checkpoint to `checkpoint` (never
    /// backwards), atomically: either all of it is committed or nothing. Adding a request or a
    /// (request, participant) response that exists, or deciding a request twice, fails the
    /// whole call.
    async fn apply(
        &self,
        changes: &[MediatorChange],
        checkpoint: Timestamp,
    ) -> Result<(), StoreError>;

    /// Records that these verdicts were sent. Unknown ids are ignored.
    async fn mark_verdicts_sent(&self, request_ids: &[Timestamp]) -> Result<(), StoreError>;

    async fn verdict(&self, request_id: Timestamp) -> Result<Option<VerdictRecord>, StoreError>;

    /// Forgets sent verdicts of requests before `before`; unsent ones are kept whatever their
    /// age. Returns how many were deleted.
    async fn prune_verdicts(&self, before: Timestamp) -> Result<u64, StoreError>;

    async fn backend_status(&self) -> Result<BackendStatus, StoreError>;
}

/// What one `apply` call writes, after cancelling out the changes that undo each other: under
/// load most requests are added, answered and decided within the same run of events, and then
/// only their verdict needs a row.
pub(crate) struct ApplyPlan<'a> {
    pub requests: Vec<(Timestamp, Timestamp, &'a str)>,
    pub responses: Vec<(Timestamp, &'a ParticipantId, &'a str)>,
    /// Decided requests that may have rows from earlier calls.
    pub deletes: Vec<Timestamp>,
    pub verdicts: Vec<(Timestamp, String, &'a str)>,
}

impl<'a> ApplyPlan<'a> {
    pub fn new(changes: &'a [MediatorChange]) -> Self {
        let decided: BTreeSet<Timestamp> = changes
            .iter()
            .filter_map(|change| match change {
                MediatorChange::VerdictDecided { request_id, .. } => Some(*request_id),
                _ => None,
            })
            .collect();
        let mut added_here = BTreeSet::new();
        let mut plan = ApplyPlan {
            requests: Vec::new(),
            responses: Vec::new(),
            deletes: Vec::new(),
            verdicts: Vec::new(),
        };
        for change in changes {
            match change {
                MediatorChange::RequestAdded {
                    request_id,
                    deadline,
                    informee_json,
                } => {
                    added_here.insert(*request_id);
                    if !decided.contains(request_id) {
                        plan.requests
                            .push((*request_id, *deadline, informee_json.as_str()));
                    }
                }
                MediatorChange::ResponseAdded {
                    request_id,
                    participant,
                    response_json,
                } => {
                    if !decided.contains(request_id) {
                        plan.responses
                            .push((*request_id, participant, response_json.as_str()));
                    }
                }
                MediatorChange::VerdictDecided {
                    request_id,
                    recipients,
                    verdict_json,
                } => {
                    if !added_here.contains(request_id) {
                        plan.deletes.push(*request_id);
                    }
                    plan.verdicts.push((
                        *request_id,
                        join_recipients(recipients),
                        verdict_json.as_str(),
                    ));
                }
            }
        }
        plan
    }
}

/// Member ids cannot contain a comma, so a comma-separated list is unambiguous.
pub(crate) fn join_recipients(recipients: &[MemberId]) -> String {
    recipients
        .iter()
        .map(MemberId::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn split_recipients(request_id: i64, text: &str) -> Result<Vec<MemberId>, StoreError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|member| {
            MemberId::new(member).map_err(|error| {
                StoreError::corrupt(
                    "mediator_verdicts",
                    format!("recipient of request {request_id}: {error}"),
                )
            })
        })
        .collect()
}

pub(crate) type VerdictRow = (i64, String, String, bool);

pub(crate) fn verdict_record(row: VerdictRow) -> Result<VerdictRecord, StoreError> {
    let (request_id, recipients, verdict_json, sent) = row;
    Ok(VerdictRecord {
        request_id: Timestamp::from_i64(request_id),
        recipients: split_recipients(request_id, &recipients)?,
        verdict_json,
        sent,
    })
}

/// Joins request rows and response rows (both in request order) into pending records.
pub(crate) fn pending_records(
    requests: Vec<(i64, i64, String)>,
    responses: Vec<(i64, String, String)>,
) -> Result<Vec<PendingRequestRecord>, StoreError> {
    let mut pending: BTreeMap<i64, PendingRequestRecord> = requests
        .into_iter()
        .map(|(request_id, deadline, informee_json)| {
            (
                request_id,
                PendingRequestRecord {
                    request_id: Timestamp::from_i64(request_id),
                    deadline: Timestamp::from_i64(deadline),
                    informee_json,
                    responses: Vec::new(),
                },
            )
        })
        .collect();
    for (request_id, participant, response_json) in responses {
        let participant = ParticipantId::new(participant).map_err(|error| {
            StoreError::corrupt(
                "mediator_responses",
                format!("participant of a response to request {request_id}: {error}"),
            )
        })?;
        let Some(request) = pending.get_mut(&request_id) else {
            return Err(StoreError::corrupt(
                "mediator_responses",
                format!("response of {participant} to request {request_id}, which is not pending"),
            ));
        };
        request.responses.push(ResponseRecord {
            participant,
            response_json,
        });
    }
    Ok(pending.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(micros: u64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    fn p(name: &str) -> ParticipantId {
        ParticipantId::new(name).expect("participant id")
    }

    #[test]
    fn changes_that_undo_each_other_cancel_out() {
        let changes = vec![
            MediatorChange::RequestAdded {
                request_id: t(1),
                deadline: t(11),
                informee_json: "i1".into(),
            },
            MediatorChange::RequestAdded {
                request_id: t(2),
                deadline: t(12),
                informee_json: "i2".into(),
            },
            MediatorChange::ResponseAdded {
                request_id: t(1),
                participant: p("p1"),
                response_json: "r1".into(),
            },
            MediatorChange::ResponseAdded {
                request_id: t(0),
                participant: p("p1"),
                response_json: "r0".into(),
            },
            MediatorChange::VerdictDecided {
                request_id: t(1),
                recipients: vec![MemberId::new("p1").expect("id")],
                verdict_json: "v1".into(),
            },
            MediatorChange::VerdictDecided {
                request_id: t(0),
                recipients: vec![],
                verdict_json: "v0".into(),
            },
        ];
        let plan = ApplyPlan::new(&changes);
        assert_eq!(plan.requests, vec![(t(2), t(12), "i2")]);
        assert!(
            plan.responses.is_empty(),
            "both responses' requests are decided"
        );
        assert_eq!(
            plan.deletes,
            vec![t(0)],
            "request 1 never reached the table"
        );
        assert_eq!(
            plan.verdicts,
            vec![(t(1), "p1".to_owned(), "v1"), (t(0), String::new(), "v0")]
        );
    }

    #[test]
    fn recipients_round_trip_and_corrupt_rows_are_errors() {
        let members = vec![
            MemberId::new("p1").expect("id"),
            MemberId::new("participant::p2").expect("id"),
        ];
        assert_eq!(
            split_recipients(1, &join_recipients(&members)).expect("split"),
            members
        );
        assert_eq!(split_recipients(1, "").expect("empty"), vec![]);
        assert!(matches!(
            split_recipients(1, "p1,,p2"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            pending_records(vec![], vec![(5, "p1".into(), "r".into())]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
