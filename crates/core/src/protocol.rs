//! The messages of the transaction protocol, as they travel in sequencer envelopes.
//!
//! Payloads are JSON (serde): small, debuggable, and far from the bottleneck at our rates.
//! Signed messages carry the exact JSON text that was signed, because re-encoding is not
//! canonical; verification happens on those bytes before decoding.
//!
//! Flow: the submitter sends one batch with a [`ConfirmationRequest`] for every informee
//! participant and an [`InformeeMessage`] for the mediator. Its sequencing timestamp is the
//! request id. Confirming participants answer with signed [`ConfirmationResponse`]s; the
//! mediator sends a signed [`Verdict`] to all informee participants.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, PublicKey, Signature, SigningKey, SigningPurpose};
use crate::ids::{CommandId, MemberId, ParticipantId, PartyId, TransactionId, UserId};
use crate::ledger::{Command, Contract, Transaction};
use crate::time::Timestamp;
use crate::topology::SignedTopologyTransaction;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed protocol message: {0}")]
    Malformed(String),
    #[error("signature of {signer}: {source}")]
    Signature {
        signer: MemberId,
        #[source]
        source: CryptoError,
    },
}

/// Everything that travels between members through the sequencer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProtocolMessage {
    ConfirmationRequest(Box<ConfirmationRequest>),
    InformeeMessage(InformeeMessage),
    /// A signed [`ConfirmationResponse`].
    ConfirmationResponse(Signed),
    /// A signed [`Verdict`].
    Verdict(Signed),
    Topology(SignedTopologyTransaction),
    /// An empty message a member sends to itself to learn the sequencer's time.
    TimeProof,
}

impl ProtocolMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("protocol messages always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

/// A value with its signer's signature over its exact JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub signer: MemberId,
    pub payload_json: String,
    pub signature: String,
}

impl Signed {
    pub fn sign<T: Serialize>(
        value: &T,
        signer: MemberId,
        key: &SigningKey,
        purpose: SigningPurpose,
    ) -> Self {
        let payload_json = serde_json::to_string(value).expect("protocol values always serialize");
        let signature = key.sign(purpose, payload_json.as_bytes()).to_hex();
        Self {
            signer,
            payload_json,
            signature,
        }
    }

    /// Verifies against the signer's key, then decodes.
    pub fn verify<T: DeserializeOwned>(
        &self,
        key: &PublicKey,
        purpose: SigningPurpose,
    ) -> Result<T, ProtocolError> {
        let signature =
            Signature::from_hex(&self.signature).map_err(|source| ProtocolError::Signature {
                signer: self.signer.clone(),
                source,
            })?;
        key.verify(purpose, self.payload_json.as_bytes(), &signature)
            .map_err(|source| ProtocolError::Signature {
                signer: self.signer.clone(),
                source,
            })?;
        self.decode_unverified()
    }

    /// Decodes without checking the signature: only for routing, never for decisions.
    pub fn decode_unverified<T: DeserializeOwned>(&self) -> Result<T, ProtocolError> {
        serde_json::from_str(&self.payload_json)
            .map_err(|e| ProtocolError::Malformed(e.to_string()))
    }
}

/// Command deduplication key: the same change submitted twice must commit at most once.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChangeId {
    pub user_id: UserId,
    pub act_as: BTreeSet<PartyId>,
    pub command_id: CommandId,
}

impl ChangeId {
    /// A stable string key for storage.
    pub fn key(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"meridian/v1/change-id");
        for part in std::iter::once(self.user_id.as_str())
            .chain(self.act_as.iter().map(PartyId::as_str))
            .chain(std::iter::once(self.command_id.as_str()))
        {
            hasher.update(&(part.len() as u32).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().to_hex().to_string()
    }
}

/// The full request, sent to every informee participant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationRequest {
    pub submitter: ParticipantId,
    pub change_id: ChangeId,
    /// Unique per submission attempt, so the submitter can tell its own attempts apart.
    pub submission_id: String,
    pub commands: Vec<Command>,
    /// Hex of the 32-byte interpretation seed (contract ids derive from it).
    pub seed: String,
    pub transaction: Transaction,
    /// The input contracts, disclosed so that every informee can re-interpret the commands.
    pub inputs: Vec<Contract>,
    pub mediator: MemberId,
    pub informee_participants: BTreeSet<ParticipantId>,
}

/// What the mediator needs to know about a request: who must confirm, who to tell. No payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InformeeMessage {
    pub submitter: ParticipantId,
    pub informees: BTreeSet<PartyId>,
    pub confirming_parties: BTreeSet<PartyId>,
    pub informee_participants: BTreeSet<ParticipantId>,
    /// [`request_hash`] of the confirmation request's envelope bytes; binds responses to it.
    pub request_hash: String,
}

/// Binds responses and verdicts to the exact request bytes the participants received.
pub fn request_hash(request_bytes: &[u8]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"meridian/v1/request");
    hasher.update(request_bytes);
    hasher.finalize().to_hex().to_string()
}

/// The transaction id every participant assigns to a committed request.
pub fn transaction_id(request_id: Timestamp, request_hash: &str) -> TransactionId {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"meridian/v1/transaction-id");
    hasher.update(&request_id.as_micros().to_be_bytes());
    hasher.update(request_hash.as_bytes());
    TransactionId::new(hasher.finalize().to_hex().to_string())
        .expect("a hex digest is a valid transaction id")
}

/// How an ABORTED completion begins when the submission provably never reached the ledger:
/// the sequencer's time passed its max sequencing time without it being sequenced, so it
/// never will be, and nothing was committed. The participant words its rejection so and the
/// ledger client recognises it (the same text in both) to resubmit the command: for a client
/// that retried after a failover this is the usual answer, not a failure of the command.
pub const NOT_SEQUENCED_REJECTION: &str =
    "the submission was not sequenced before its max sequencing time";

/// How an ABORTED completion begins when the mediator rejected the request for `code` (its
/// wire name, e.g. `TIMEOUT`); the reason follows after a colon. The participant words its
/// rejections so, and the ledger client recognises a timeout by it (see
/// [`TIMEOUT_REJECTION`]).
pub fn mediator_rejection(code_name: &str) -> String {
    format!("rejected by the mediator ({code_name})")
}

/// How an ABORTED completion begins when the mediator rejected the request because a
/// confirming participant did not answer before the deadline (`mediator_rejection("TIMEOUT")`).
/// Definite: the verdict was a rejection, nothing was committed, and the command id is free
/// again, so the ledger client resubmits the command (a bounded number of times) — a
/// participant that could not answer for a few seconds (its database restarting, say) should
/// not fail the application's request.
pub const TIMEOUT_REJECTION: &str = "rejected by the mediator (TIMEOUT)";

/// Why a request was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// Not every confirming party answered before the deadline.
    Timeout,
    /// An input contract was already archived.
    InactiveContracts,
    /// An input contract is locked by a concurrent request (a lost race).
    LockedContracts,
    /// An action lacks the authority of a party, or a submitter may not act for a party.
    NotAuthorized,
    /// Re-interpreting the commands did not give the submitted transaction.
    ModelConformance,
    /// The request or a response is inconsistent with the topology.
    Topology,
    /// The request could not be decoded or is inconsistent.
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum LocalVerdict {
    Approve,
    Reject {
        code: RejectionCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmationResponse {
    pub request_id: Timestamp,
    pub request_hash: String,
    pub participant: ParticipantId,
    /// The confirming parties this participant answers for (those it hosts with permission).
    pub parties: BTreeSet<PartyId>,
    pub verdict: LocalVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum VerdictOutcome {
    Approved,
    Rejected {
        code: RejectionCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    pub request_id: Timestamp,
    pub request_hash: String,
    pub outcome: VerdictOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_verify_only_with_the_right_key_and_purpose() {
        let key = SigningKey::generate();
        let verdict = Verdict {
            request_id: Timestamp::from_micros(5),
            request_hash: "h".into(),
            outcome: VerdictOutcome::Approved,
        };
        let signed = Signed::sign(
            &verdict,
            MemberId::new("mediator").unwrap(),
            &key,
            SigningPurpose::Verdict,
        );
        let back: Verdict = signed
            .verify(&key.public_key(), SigningPurpose::Verdict)
            .unwrap();
        assert_eq!(back, verdict);
        assert!(signed
            .verify::<Verdict>(&key.public_key(), SigningPurpose::ConfirmationResponse)
            .is_err());
        assert!(signed
            .verify::<Verdict>(
                &SigningKey::generate().public_key(),
                SigningPurpose::Verdict
            )
            .is_err());
        let mut tampered = signed.clone();
        tampered.payload_json = tampered.payload_json.replace("approved", "rejected");
        assert!(tampered
            .verify::<Verdict>(&key.public_key(), SigningPurpose::Verdict)
            .is_err());
        let message = ProtocolMessage::Verdict(signed);
        assert_eq!(ProtocolMessage::decode(&message.encode()).unwrap(), message);
        assert!(ProtocolMessage::decode(b"{\"type\":\"nope\"}").is_err());
    }

    #[test]
    fn change_ids_are_stable_and_unambiguous() {
        let change = |user: &str, command: &str| ChangeId {
            user_id: UserId::new(user).unwrap(),
            act_as: BTreeSet::from([PartyId::new("alice").unwrap()]),
            command_id: CommandId::new(command).unwrap(),
        };
        assert_eq!(change("u", "c").key(), change("u", "c").key());
        assert_ne!(change("ua", "c").key(), change("u", "ac").key());
    }
}
