//! The verdict engine, sans I/O: it consumes the mediator's sequenced events one at a time and
//! returns [`Effect`]s for the runtime to carry out. It never reads a clock, a socket or a
//! database, so every decision is a deterministic function of the event stream (plus the
//! topology it started from), which is what lets a restarted mediator resume from its
//! persisted state and reach the same verdicts.
//!
//! Time is sequencer time only: a request sequenced at `T` (its id) times out when the mediator
//! sees an event stamped after `T + response_timeout`. Nothing else moves the clock, so while
//! requests wait and nothing arrives the runtime asks [`MediatorEngine::on_quiet`] whether to
//! send itself a time proof.
//!
//! Every state change is returned as [`Effect::Persist`]; the runtime stores all changes of a
//! run of events in one transaction with the checkpoint and only then sends verdicts. Responses
//! are judged against the topology in force at the request's timestamp, never a later one, so
//! every member agrees on who may confirm for whom.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_core::crypto::SigningPurpose;
use meridian_core::protocol::{
    ConfirmationResponse, InformeeMessage, LocalVerdict, ProtocolMessage, RejectionCode, Signed,
    Verdict, VerdictOutcome,
};
use meridian_core::signed_batch::VerifiedRoots;
use meridian_core::topology::{SignedTopologyTransaction, TopologySnapshot, TopologyState};
use meridian_core::{MemberId, ParticipantId, PartyId, Timestamp};

/// Quiet periods an unanswered time proof may stay outstanding before another is requested:
/// a proof whose send failed must not stop deadlines from firing for good.
pub const TIME_PROOF_RETRY_QUIET_PERIODS: u32 = 10;

/// What the runtime must do as a consequence of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Store this change, with all others of the same run of events and the checkpoint, in one
    /// transaction — before carrying out any send of the run.
    Persist(StateChange),
    /// Sign the verdict and send it in one envelope to all these participants.
    SendVerdict {
        request_id: Timestamp,
        informee_participants: BTreeSet<ParticipantId>,
        verdict: Verdict,
    },
    /// Send a time proof to ourselves, so that deadlines can pass while nothing else arrives.
    RequestTimeProof,
    /// A message was ignored: log it and count it. Nothing changed.
    Ignored(Ignored),
}

/// One change to the engine's durable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    RequestAdded {
        request_id: Timestamp,
        deadline: Timestamp,
        informee: InformeeMessage,
    },
    /// A valid approval; rejections decide the request at once and are not kept.
    ResponseAccepted {
        request_id: Timestamp,
        participant: ParticipantId,
        signed: Signed,
    },
    /// The request is done: forget it and remember the verdict until it is sent.
    VerdictDecided {
        request_id: Timestamp,
        informee_participants: BTreeSet<ParticipantId>,
        verdict: Verdict,
    },
}

/// Why a message changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ignored {
    #[error("malformed confirmation response from {sender}: {detail}")]
    MalformedResponse { sender: MemberId, detail: String },
    #[error(
        "response to request {request_id}, which is not pending (unknown, or decided already)"
    )]
    UnknownRequest { request_id: Timestamp },
    #[error("response of {participant} to request {request_id} is signed by {signer}")]
    SignerMismatch {
        request_id: Timestamp,
        participant: ParticipantId,
        signer: MemberId,
    },
    #[error("{participant} was not a registered participant at request {request_id}")]
    UnknownParticipant {
        request_id: Timestamp,
        participant: ParticipantId,
    },
    #[error("response of {participant} to request {request_id}: {detail}")]
    BadSignature {
        request_id: Timestamp,
        participant: ParticipantId,
        detail: String,
    },
    #[error("response of {participant} to request {request_id} is for another request (hash {got}, expected {expected})")]
    WrongRequestHash {
        request_id: Timestamp,
        participant: ParticipantId,
        got: String,
        expected: String,
    },
    #[error("response of {participant} to request {request_id} names no party")]
    NoParties {
        request_id: Timestamp,
        participant: ParticipantId,
    },
    #[error("{participant} answers request {request_id} for {party}, which is not a confirming party of it")]
    NotConfirmingParty {
        request_id: Timestamp,
        participant: ParticipantId,
        party: PartyId,
    },
    #[error("{participant} may not confirm for {party} at request {request_id}")]
    NotConfirmer {
        request_id: Timestamp,
        participant: ParticipantId,
        party: PartyId,
    },
    #[error("{participant} answered request {request_id} already")]
    DuplicateResponse {
        request_id: Timestamp,
        participant: ParticipantId,
    },
    #[error("a second informee message in the event at {request_id}")]
    DuplicateRequest { request_id: Timestamp },
    #[error("informee message at {request_id} names no participant registered at that time; there is nobody to send a verdict to")]
    NoRecipients { request_id: Timestamp },
    #[error("topology transaction at {timestamp}: {detail}")]
    Topology {
        timestamp: Timestamp,
        detail: String,
    },
    #[error("unexpected {kind} message from {sender}")]
    Unexpected {
        kind: &'static str,
        sender: MemberId,
    },
    #[error("event at {timestamp} is before the last processed event {last}")]
    OutOfOrder {
        timestamp: Timestamp,
        last: Timestamp,
    },
}

impl Ignored {
    /// A short stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Ignored::MalformedResponse { .. } => "malformed_response",
            Ignored::UnknownRequest { .. } => "unknown_request",
            Ignored::SignerMismatch { .. } => "signer_mismatch",
            Ignored::UnknownParticipant { .. } => "unknown_participant",
            Ignored::BadSignature { .. } => "bad_signature",
            Ignored::WrongRequestHash { .. } => "wrong_request_hash",
            Ignored::NoParties { .. } => "no_parties",
            Ignored::NotConfirmingParty { .. } => "not_confirming_party",
            Ignored::NotConfirmer { .. } => "not_confirmer",
            Ignored::DuplicateResponse { .. } => "duplicate_response",
            Ignored::DuplicateRequest { .. } => "duplicate_request",
            Ignored::NoRecipients { .. } => "no_recipients",
            Ignored::Topology { .. } => "topology",
            Ignored::Unexpected { .. } => "unexpected",
            Ignored::OutOfOrder { .. } => "out_of_order",
        }
    }

    /// A response that fails validation, as opposed to one that merely came late or twice
    /// (normal: a second confirmer answering after the decision).
    pub fn is_invalid_response(&self) -> bool {
        matches!(
            self,
            Ignored::MalformedResponse { .. }
                | Ignored::SignerMismatch { .. }
                | Ignored::UnknownParticipant { .. }
                | Ignored::BadSignature { .. }
                | Ignored::WrongRequestHash { .. }
                | Ignored::NoParties { .. }
                | Ignored::NotConfirmingParty { .. }
                | Ignored::NotConfirmer { .. }
        )
    }

    /// Worth an operator's attention (warn) rather than routine (debug).
    pub fn is_suspicious(&self) -> bool {
        !matches!(
            self,
            Ignored::UnknownRequest { .. } | Ignored::DuplicateResponse { .. }
        )
    }
}

/// A pending request as persisted, for [`MediatorEngine::restore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredRequest {
    pub request_id: Timestamp,
    pub deadline: Timestamp,
    pub informee: InformeeMessage,
    /// The accepted approvals, already validated when they arrived.
    pub responses: Vec<ConfirmationResponse>,
}

#[derive(Debug, Clone)]
struct Pending {
    request_hash: String,
    deadline: Timestamp,
    confirming_parties: BTreeSet<PartyId>,
    /// Informee participants registered at the request's time: the verdict's recipients.
    recipients: BTreeSet<ParticipantId>,
    /// The topology in force at the request's time.
    snapshot: Arc<TopologySnapshot>,
    /// Confirming parties without an approval yet.
    awaiting: BTreeSet<PartyId>,
    responded: BTreeSet<ParticipantId>,
}

impl Pending {
    /// Ends this request with `outcome`, sent to the participants registered at its time.
    fn decide(self, request_id: Timestamp, outcome: VerdictOutcome, effects: &mut Vec<Effect>) {
        decide(
            request_id,
            self.request_hash,
            self.recipients,
            outcome,
            effects,
        );
    }
}

/// The mediator's verdict state machine.
#[derive(Debug)]
pub struct MediatorEngine {
    me: MemberId,
    response_timeout: Duration,
    topology: TopologyState,
    /// The latest effective time in `topology`: requests after it share `latest_snapshot`
    /// instead of rebuilding the snapshot from the whole history.
    latest_effective: Option<Timestamp>,
    latest_snapshot: Arc<TopologySnapshot>,
    pending: BTreeMap<Timestamp, Pending>,
    /// (deadline, request id), so expiry looks only at the requests that expire.
    deadlines: BTreeSet<(Timestamp, Timestamp)>,
    last_event: Option<Timestamp>,
    /// Quiet periods since our outstanding time proof was requested, if one is.
    time_proof_outstanding: Option<u32>,
    /// Response groups whose root signature was checked: a participant signs a batch's
    /// responses once (`meridian_core::signed_batch`).
    verified_roots: VerifiedRoots,
}

impl MediatorEngine {
    /// A mediator that has processed nothing yet. `topology` holds everything known so far
    /// (typically synced from the topology manager).
    pub fn new(me: MemberId, topology: TopologyState, response_timeout: Duration) -> Self {
        let latest_effective = topology
            .signed_history()
            .last()
            .map(|(effective, _)| *effective);
        let latest_snapshot = Arc::new(topology.latest().clone());
        Self {
            me,
            response_timeout,
            topology,
            latest_effective,
            latest_snapshot,
            pending: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            last_event: None,
            time_proof_outstanding: None,
            verified_roots: VerifiedRoots::default(),
        }
    }

    /// A mediator resuming from its persisted state: the last processed event and the
    /// requests pending then with their accepted approvals. Deadlines are the persisted ones, so
    /// a changed `response_timeout` applies to new requests only.
    pub fn restore(
        me: MemberId,
        topology: TopologyState,
        response_timeout: Duration,
        checkpoint: Option<Timestamp>,
        requests: Vec<RestoredRequest>,
    ) -> Self {
        let mut engine = Self::new(me, topology, response_timeout);
        engine.last_event = checkpoint;
        for request in requests {
            let snapshot = engine.snapshot_at(request.request_id);
            let mut pending = Pending {
                recipients: recipients(&request.informee, &snapshot),
                request_hash: request.informee.request_hash,
                deadline: request.deadline,
                awaiting: request.informee.confirming_parties.clone(),
                confirming_parties: request.informee.confirming_parties,
                snapshot,
                responded: BTreeSet::new(),
            };
            for response in request.responses {
                for party in &response.parties {
                    pending.awaiting.remove(party);
                }
                pending.responded.insert(response.participant);
            }
            engine
                .deadlines
                .insert((request.deadline, request.request_id));
            engine.pending.insert(request.request_id, pending);
        }
        engine
    }

    pub fn member(&self) -> &MemberId {
        &self.me
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn is_pending(&self, request_id: Timestamp) -> bool {
        self.pending.contains_key(&request_id)
    }

    /// The last event processed: the checkpoint to persist.
    pub fn last_event(&self) -> Option<Timestamp> {
        self.last_event
    }

    /// The earliest deadline of a pending request.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.deadlines.first().map(|(deadline, _)| *deadline)
    }

    pub fn topology(&self) -> &TopologyState {
        &self.topology
    }

    /// Processes one message of the event sequenced at `timestamp`. An event carrying several
    /// messages for the mediator is fed message by message with the same timestamp.
    pub fn on_event(
        &mut self,
        timestamp: Timestamp,
        sender: MemberId,
        message: ProtocolMessage,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if !self.advance(timestamp, &mut effects) {
            return effects;
        }
        match message {
            ProtocolMessage::InformeeMessage(informee) => {
                self.on_request(timestamp, &sender, informee, &mut effects)
            }
            ProtocolMessage::ConfirmationResponse(signed) => {
                self.on_response(&sender, signed, &mut effects)
            }
            ProtocolMessage::Topology(signed) => self.on_topology(timestamp, &signed, &mut effects),
            ProtocolMessage::TimeProof => {
                if sender == self.me {
                    self.time_proof_outstanding = None;
                }
            }
            ProtocolMessage::ConfirmationRequest(_) => {
                effects.push(Effect::Ignored(Ignored::Unexpected {
                    kind: "confirmation request",
                    sender,
                }))
            }
            ProtocolMessage::Verdict(_) => effects.push(Effect::Ignored(Ignored::Unexpected {
                kind: "verdict",
                sender,
            })),
        }
        effects
    }

    /// An event at `timestamp` with nothing for the engine (say, an envelope that did not
    /// decode): only time moves on, which may time requests out.
    pub fn on_time(&mut self, timestamp: Timestamp) -> Vec<Effect> {
        let mut effects = Vec::new();
        self.advance(timestamp, &mut effects);
        effects
    }

    /// The runtime saw no event for a while. Returns a time-proof request if requests wait for
    /// time to pass and no proof is outstanding (or the outstanding one seems lost).
    pub fn on_quiet(&mut self) -> Vec<Effect> {
        if self.pending.is_empty() {
            self.time_proof_outstanding = None;
            return Vec::new();
        }
        match self.time_proof_outstanding {
            Some(quiet) if quiet < TIME_PROOF_RETRY_QUIET_PERIODS => {
                self.time_proof_outstanding = Some(quiet + 1);
                Vec::new()
            }
            _ => {
                self.time_proof_outstanding = Some(0);
                vec![Effect::RequestTimeProof]
            }
        }
    }

    /// Moves time to `timestamp` and times out what expired before it. False (with an
    /// [`Ignored::OutOfOrder`]) for a timestamp before the last event.
    fn advance(&mut self, timestamp: Timestamp, effects: &mut Vec<Effect>) -> bool {
        if let Some(last) = self.last_event {
            if timestamp < last {
                effects.push(Effect::Ignored(Ignored::OutOfOrder { timestamp, last }));
                return false;
            }
        }
        self.last_event = Some(timestamp);
        // A deadline is the last moment a response still counts: expire strictly after it.
        while let Some(&(deadline, request_id)) = self.deadlines.first() {
            if deadline >= timestamp {
                break;
            }
            self.deadlines.pop_first();
            let Some(pending) = self.pending.remove(&request_id) else {
                continue;
            };
            let missing: Vec<&str> = pending.awaiting.iter().map(PartyId::as_str).collect();
            let outcome = VerdictOutcome::Rejected {
                code: RejectionCode::Timeout,
                message: format!(
                    "no approval before the deadline {deadline} from: {}",
                    missing.join(", ")
                ),
            };
            pending.decide(request_id, outcome, effects);
        }
        true
    }

    fn snapshot_at(&self, at: Timestamp) -> Arc<TopologySnapshot> {
        match self.latest_effective {
            Some(effective) if effective >= at => Arc::new(self.topology.snapshot_at(at)),
            _ => self.latest_snapshot.clone(),
        }
    }

    fn on_request(
        &mut self,
        request_id: Timestamp,
        sender: &MemberId,
        informee: InformeeMessage,
        effects: &mut Vec<Effect>,
    ) {
        if self.pending.contains_key(&request_id) {
            effects.push(Effect::Ignored(Ignored::DuplicateRequest { request_id }));
            return;
        }
        let snapshot = self.snapshot_at(request_id);
        let recipients = recipients(&informee, &snapshot);
        if recipients.is_empty() {
            effects.push(Effect::Ignored(Ignored::NoRecipients { request_id }));
            return;
        }
        let reject = |code, message: String| VerdictOutcome::Rejected { code, message };
        let refusal = if *sender != informee.submitter.as_member() {
            Some(reject(
                RejectionCode::Malformed,
                format!(
                    "the informee message was sent by {sender} but names {} as submitter",
                    informee.submitter
                ),
            ))
        } else if informee.confirming_parties.is_empty() {
            Some(reject(
                RejectionCode::Malformed,
                "the request has no confirming party".to_owned(),
            ))
        } else {
            let unconfirmable: Vec<&str> = informee
                .confirming_parties
                .iter()
                .filter(|party| snapshot.confirmers(party).is_empty())
                .map(PartyId::as_str)
                .collect();
            (!unconfirmable.is_empty()).then(|| {
                reject(
                    RejectionCode::Topology,
                    format!(
                        "no participant may confirm at {request_id} for: {}",
                        unconfirmable.join(", ")
                    ),
                )
            })
        };
        if let Some(outcome) = refusal {
            decide(
                request_id,
                informee.request_hash,
                recipients,
                outcome,
                effects,
            );
            return;
        }
        let deadline = request_id.saturating_add(self.response_timeout);
        self.deadlines.insert((deadline, request_id));
        self.pending.insert(
            request_id,
            Pending {
                request_hash: informee.request_hash.clone(),
                deadline,
                confirming_parties: informee.confirming_parties.clone(),
                recipients,
                snapshot,
                awaiting: informee.confirming_parties.clone(),
                responded: BTreeSet::new(),
            },
        );
        effects.push(Effect::Persist(StateChange::RequestAdded {
            request_id,
            deadline,
            informee,
        }));
    }

    fn on_response(&mut self, sender: &MemberId, signed: Signed, effects: &mut Vec<Effect>) {
        // Decoded unverified only to find the request; the decision uses the verified copy.
        let claimed: ConfirmationResponse = match signed.decode_unverified() {
            Ok(response) => response,
            Err(error) => {
                effects.push(Effect::Ignored(Ignored::MalformedResponse {
                    sender: sender.clone(),
                    detail: error.to_string(),
                }));
                return;
            }
        };
        let request_id = claimed.request_id;
        let Some(pending) = self.pending.get_mut(&request_id) else {
            effects.push(Effect::Ignored(Ignored::UnknownRequest { request_id }));
            return;
        };
        let response = match validate(
            request_id,
            pending,
            &signed,
            &claimed.participant,
            &mut self.verified_roots,
        ) {
            Ok(response) => response,
            Err(ignored) => {
                effects.push(Effect::Ignored(ignored));
                return;
            }
        };
        match response.verdict {
            LocalVerdict::Reject { code, message } => {
                self.conclude_early(
                    request_id,
                    VerdictOutcome::Rejected { code, message },
                    effects,
                );
            }
            LocalVerdict::Approve => {
                for party in &response.parties {
                    pending.awaiting.remove(party);
                }
                pending.responded.insert(response.participant.clone());
                effects.push(Effect::Persist(StateChange::ResponseAccepted {
                    request_id,
                    participant: response.participant,
                    signed,
                }));
                if pending.awaiting.is_empty() {
                    self.conclude_early(request_id, VerdictOutcome::Approved, effects);
                }
            }
        }
    }

    /// Decides a pending request before its deadline, so its timeout must not fire later.
    fn conclude_early(
        &mut self,
        request_id: Timestamp,
        outcome: VerdictOutcome,
        effects: &mut Vec<Effect>,
    ) {
        let Some(pending) = self.pending.remove(&request_id) else {
            return;
        };
        self.deadlines.remove(&(pending.deadline, request_id));
        pending.decide(request_id, outcome, effects);
    }

    fn on_topology(
        &mut self,
        timestamp: Timestamp,
        signed: &SignedTopologyTransaction,
        effects: &mut Vec<Effect>,
    ) {
        match self.topology.add(timestamp, signed) {
            Ok(true) => {
                self.latest_effective = Some(
                    self.latest_effective
                        .map_or(timestamp, |known| known.max(timestamp)),
                );
                self.latest_snapshot = Arc::new(self.topology.latest().clone());
            }
            // Known already, typically from the topology manager at start-up.
            Ok(false) => {}
            Err(error) => effects.push(Effect::Ignored(Ignored::Topology {
                timestamp,
                detail: error.to_string(),
            })),
        }
    }
}

/// The informee participants that were registered at the request's time. Only those can
/// receive the verdict; the sequencer would refuse the whole send for an unknown recipient.
fn recipients(informee: &InformeeMessage, snapshot: &TopologySnapshot) -> BTreeSet<ParticipantId> {
    informee
        .informee_participants
        .iter()
        .filter(|participant| snapshot.participant_key(participant).is_some())
        .cloned()
        .collect()
}

/// Checks a response against the pending request it names and returns the verified payload.
fn validate(
    request_id: Timestamp,
    pending: &Pending,
    signed: &Signed,
    participant: &ParticipantId,
    roots: &mut VerifiedRoots,
) -> Result<ConfirmationResponse, Ignored> {
    if signed.signer != participant.as_member() {
        return Err(Ignored::SignerMismatch {
            request_id,
            participant: participant.clone(),
            signer: signed.signer.clone(),
        });
    }
    let Some(key) = pending.snapshot.participant_key(participant) else {
        return Err(Ignored::UnknownParticipant {
            request_id,
            participant: participant.clone(),
        });
    };
    let response: ConfirmationResponse = signed
        .verify_remembering(key, SigningPurpose::ConfirmationResponse, roots)
        .map_err(|error| Ignored::BadSignature {
            request_id,
            participant: participant.clone(),
            detail: error.to_string(),
        })?;
    if response.request_hash != pending.request_hash {
        return Err(Ignored::WrongRequestHash {
            request_id,
            participant: participant.clone(),
            got: response.request_hash,
            expected: pending.request_hash.clone(),
        });
    }
    if pending.responded.contains(participant) {
        return Err(Ignored::DuplicateResponse {
            request_id,
            participant: participant.clone(),
        });
    }
    if response.parties.is_empty() {
        return Err(Ignored::NoParties {
            request_id,
            participant: participant.clone(),
        });
    }
    for party in &response.parties {
        if !pending.confirming_parties.contains(party) {
            return Err(Ignored::NotConfirmingParty {
                request_id,
                participant: participant.clone(),
                party: party.clone(),
            });
        }
        if !pending
            .snapshot
            .permission(party, participant)
            .is_some_and(|permission| permission.can_confirm())
        {
            return Err(Ignored::NotConfirmer {
                request_id,
                participant: participant.clone(),
                party: party.clone(),
            });
        }
    }
    Ok(response)
}

fn decide(
    request_id: Timestamp,
    request_hash: String,
    informee_participants: BTreeSet<ParticipantId>,
    outcome: VerdictOutcome,
    effects: &mut Vec<Effect>,
) {
    let verdict = Verdict {
        request_id,
        request_hash,
        outcome,
    };
    effects.push(Effect::Persist(StateChange::VerdictDecided {
        request_id,
        informee_participants: informee_participants.clone(),
        verdict: verdict.clone(),
    }));
    effects.push(Effect::SendVerdict {
        request_id,
        informee_participants,
        verdict,
    });
}

#[cfg(test)]
mod tests;
