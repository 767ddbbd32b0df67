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
use crate::signed_batch::{
    self, BatchProof, ProofError, VerifiedRoot, VerifiedRoots, MAX_BATCH_MESSAGES,
};
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
    #[error("batch proof of {signer}: {source}")]
    BatchProof {
        signer: MemberId,
        #[source]
        source: ProofError,
    },
}

/// Everything that travels between members through the sequencer. On the wire a JSON object
/// whose `type` names the variant, beside the variant's own fields (`{"type":"verdict",
/// "signer":...}`); read by the [`Deserialize`] below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The `type` of a [`ProtocolMessage`] on the wire.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum MessageKind {
    ConfirmationRequest,
    InformeeMessage,
    ConfirmationResponse,
    Verdict,
    Topology,
    TimeProof,
}

impl MessageKind {
    /// The message of this kind from the object's other fields.
    fn read<'de, D: serde::Deserializer<'de>>(
        self,
        fields: D,
    ) -> Result<ProtocolMessage, D::Error> {
        Ok(match self {
            Self::ConfirmationRequest => {
                ProtocolMessage::ConfirmationRequest(Deserialize::deserialize(fields)?)
            }
            Self::InformeeMessage => {
                ProtocolMessage::InformeeMessage(Deserialize::deserialize(fields)?)
            }
            Self::ConfirmationResponse => {
                ProtocolMessage::ConfirmationResponse(Deserialize::deserialize(fields)?)
            }
            Self::Verdict => ProtocolMessage::Verdict(Deserialize::deserialize(fields)?),
            Self::Topology => ProtocolMessage::Topology(Deserialize::deserialize(fields)?),
            Self::TimeProof => {
                serde::de::IgnoredAny::deserialize(fields)?;
                ProtocolMessage::TimeProof
            }
        })
    }
}

/// Reads what `#[serde(tag = "type")]` would, without its detour: serde's derived reader for
/// an internally tagged enum first copies the whole object into a generic tree to find the
/// tag, then reads the variant from that copy, and this parse was a twelfth of a
/// participant's CPU under load. [`ProtocolMessage::encode`] writes `type` first, so the
/// variant is read straight from the text that follows it; an object from a writer that put
/// `type` elsewhere is gathered first and read the same way.
impl<'de> Deserialize<'de> for ProtocolMessage {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> serde::de::Visitor<'de> for MessageVisitor {
    type Value = ProtocolMessage;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a protocol message: an object with a `type`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let Some(first) = map.next_key::<String>()? else {
            return Err(A::Error::missing_field("type"));
        };
        if first == "type" {
            let kind: MessageKind = map.next_value()?;
            return kind.read(serde::de::value::MapAccessDeserializer::new(map));
        }
        let mut object = serde_json::Map::new();
        object.insert(first, map.next_value()?);
        while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
            object.insert(key, value);
        }
        let kind = object
            .remove("type")
            .ok_or_else(|| A::Error::missing_field("type"))?;
        let kind = MessageKind::deserialize(kind).map_err(A::Error::custom)?;
        kind.read(serde_json::Value::Object(object))
            .map_err(A::Error::custom)
    }
}

/// A value with its signer's signature over its exact JSON text, or, when it was signed in a
/// group ([`Signed::sign_all`]), over the root of the group's Merkle tree, with the proof that
/// leads this text to the root ([`crate::signed_batch`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    pub signer: MemberId,
    pub payload_json: String,
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchProof>,
}

impl Signed {
    /// Signs `values` with one signature: a group of one as [`Signed::sign`] does, a larger
    /// group (in chunks of at most [`MAX_BATCH_MESSAGES`]) over its Merkle root.
    pub fn sign_all<T: Serialize>(
        values: &[T],
        signer: &MemberId,
        key: &SigningKey,
        purpose: SigningPurpose,
    ) -> Vec<Self> {
        if let [value] = values {
            return vec![Self::sign(value, signer.clone(), key, purpose)];
        }
        let mut signed = Vec::with_capacity(values.len());
        for chunk in values.chunks(MAX_BATCH_MESSAGES as usize) {
            let texts: Vec<String> = chunk
                .iter()
                .map(|value| {
                    serde_json::to_string(value).expect("protocol values always serialize")
                })
                .collect();
            let bytes: Vec<&[u8]> = texts.iter().map(|text| text.as_bytes()).collect();
            let (root, proofs) = signed_batch::build(&bytes);
            let signature = key
                .sign(
                    purpose,
                    &signed_batch::root_message(proofs.len() as u32, &root),
                )
                .to_hex();
            signed.extend(
                texts
                    .into_iter()
                    .zip(proofs)
                    .map(|(payload_json, proof)| Self {
                        signer: signer.clone(),
                        payload_json,
                        signature: signature.clone(),
                        batch: Some(proof),
                    }),
            );
        }
        signed
    }

    /// [`Signed::verify`], skipping the signature check of a group whose root `roots` has
    /// seen verified, and remembering this one's.
    pub fn verify_remembering<T: DeserializeOwned>(
        &self,
        key: &PublicKey,
        purpose: SigningPurpose,
        roots: &mut VerifiedRoots,
    ) -> Result<T, ProtocolError> {
        let signature = self.parsed_signature()?;
        match &self.batch {
            None => self.check_signature(key, purpose, self.payload_json.as_bytes(), &signature)?,
            Some(proof) => {
                let root = VerifiedRoot {
                    key: *key,
                    purpose,
                    root_message: self.root_message(proof)?,
                    signature,
                };
                if !roots.contains(&root) {
                    self.check_signature(key, purpose, &root.root_message, &signature)?;
                    roots.insert(root);
                }
            }
        }
        self.decode_unverified()
    }

    fn parsed_signature(&self) -> Result<Signature, ProtocolError> {
        Signature::from_hex(&self.signature).map_err(|source| ProtocolError::Signature {
            signer: self.signer.clone(),
            source,
        })
    }

    fn root_message(&self, proof: &BatchProof) -> Result<Vec<u8>, ProtocolError> {
        let root = proof.root(self.payload_json.as_bytes()).map_err(|source| {
            ProtocolError::BatchProof {
                signer: self.signer.clone(),
                source,
            }
        })?;
        Ok(signed_batch::root_message(proof.count, &root))
    }

    fn check_signature(
        &self,
        key: &PublicKey,
        purpose: SigningPurpose,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), ProtocolError> {
        key.verify(purpose, message, signature)
            .map_err(|source| ProtocolError::Signature {
                signer: self.signer.clone(),
                source,
            })
    }

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
            batch: None,
        }
    }

    /// Verifies against the signer's key (over the text, or over its group's root), then
    /// decodes.
    pub fn verify<T: DeserializeOwned>(
        &self,
        key: &PublicKey,
        purpose: SigningPurpose,
    ) -> Result<T, ProtocolError> {
        self.verify_remembering(key, purpose, &mut VerifiedRoots::new(1))
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

    /// What `#[serde(tag = "type")]` derives: the reader [`ProtocolMessage`]'s own replaced,
    /// kept here as the reference it must agree with.
    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Derived {
        ConfirmationRequest(Box<ConfirmationRequest>),
        InformeeMessage(InformeeMessage),
        ConfirmationResponse(Signed),
        Verdict(Signed),
        Topology(SignedTopologyTransaction),
        TimeProof,
    }

    impl From<Derived> for ProtocolMessage {
        fn from(derived: Derived) -> Self {
            match derived {
                Derived::ConfirmationRequest(r) => Self::ConfirmationRequest(r),
                Derived::InformeeMessage(m) => Self::InformeeMessage(m),
                Derived::ConfirmationResponse(s) => Self::ConfirmationResponse(s),
                Derived::Verdict(s) => Self::Verdict(s),
                Derived::Topology(t) => Self::Topology(t),
                Derived::TimeProof => Self::TimeProof,
            }
        }
    }

    fn one_of_each() -> Vec<ProtocolMessage> {
        let participant = ParticipantId::new("participant1").unwrap();
        let mediator = MemberId::new("mediator").unwrap();
        let key = SigningKey::generate();
        let verdict = verdicts(1).remove(0);
        let signed = Signed::sign(&verdict, mediator.clone(), &key, SigningPurpose::Verdict);
        vec![
            ProtocolMessage::ConfirmationRequest(Box::new(ConfirmationRequest {
                submitter: participant.clone(),
                change_id: ChangeId {
                    user_id: UserId::new("app").unwrap(),
                    act_as: [PartyId::new("alice").unwrap()].into(),
                    command_id: CommandId::new("cmd-1").unwrap(),
                },
                submission_id: "sub-1".into(),
                commands: vec![],
                seed: "00".into(),
                transaction: Transaction { roots: vec![] },
                inputs: vec![],
                mediator,
                informee_participants: [participant.clone()].into(),
            })),
            ProtocolMessage::InformeeMessage(InformeeMessage {
                submitter: participant.clone(),
                informees: [PartyId::new("alice").unwrap()].into(),
                confirming_parties: [PartyId::new("bank").unwrap()].into(),
                informee_participants: [participant].into(),
                request_hash: "h".into(),
            }),
            ProtocolMessage::ConfirmationResponse(signed.clone()),
            ProtocolMessage::Verdict(signed),
            ProtocolMessage::Topology(SignedTopologyTransaction {
                transaction_json: "{}".into(),
                signature: "00".into(),
            }),
            ProtocolMessage::TimeProof,
        ]
    }

    /// The same object with `type` moved to its end, as another writer may order it.
    fn type_last(encoded: &[u8]) -> Vec<u8> {
        let text = std::str::from_utf8(encoded).unwrap();
        let (tag, rest) = text
            .strip_prefix('{')
            .unwrap()
            .split_once(',')
            .unwrap_or_else(|| (text.trim_matches(|c| c == '{' || c == '}'), "}"));
        assert!(
            tag.starts_with("\"type\""),
            "encode writes type first: {text}"
        );
        let rest = rest.strip_suffix('}').unwrap();
        if rest.is_empty() {
            format!("{{{tag}}}").into_bytes()
        } else {
            format!("{{{rest},{tag}}}").into_bytes()
        }
    }

    #[test]
    fn messages_decode_as_the_derived_reader_would_in_any_key_order() {
        for message in one_of_each() {
            let encoded = message.encode();
            for wire in [encoded.clone(), type_last(&encoded)] {
                let text = String::from_utf8(wire.clone()).unwrap();
                assert_eq!(ProtocolMessage::decode(&wire).unwrap(), message, "{text}");
                let derived: Derived = serde_json::from_slice(&wire).unwrap();
                assert_eq!(ProtocolMessage::from(derived), message, "{text}");
            }
        }
    }

    #[test]
    fn malformed_messages_are_refused_as_the_derived_reader_refuses_them() {
        let verdict = String::from_utf8(one_of_each()[3].encode()).unwrap();
        let cases = [
            "{\"type\":\"nope\"}".to_string(),
            "{}".to_string(),
            "[]".to_string(),
            "\"verdict\"".to_string(),
            "{\"signer\":\"mediator\"}".to_string(),
            "{\"type\":\"verdict\"}".to_string(),
            // An unknown field inside a variant that denies them, either side of the tag.
            verdict.replacen('{', "{\"extra\":1,", 1),
            verdict.replacen("\"signer\"", "\"extra\":1,\"signer\"", 1),
            // The tag twice.
            verdict.replacen("\"signer\"", "\"type\":\"verdict\",\"signer\"", 1),
            verdict[..verdict.len() - 1].to_string(),
        ];
        for case in cases {
            let ours = ProtocolMessage::decode(case.as_bytes());
            let derived = serde_json::from_str::<Derived>(&case);
            assert!(
                matches!(ours, Err(ProtocolError::Malformed(_))),
                "{case}: {ours:?}"
            );
            assert!(derived.is_err(), "the reference refuses {case} too");
        }
        // A time proof carries nothing but its tag; extra fields are ignored by both.
        let padded = "{\"type\":\"time_proof\",\"extra\":1}";
        assert_eq!(
            ProtocolMessage::decode(padded.as_bytes()).unwrap(),
            ProtocolMessage::TimeProof
        );
        assert_eq!(
            serde_json::from_str::<Derived>(padded).unwrap(),
            Derived::TimeProof
        );
    }

    fn verdicts(n: u64) -> Vec<Verdict> {
        (0..n)
            .map(|i| Verdict {
                request_id: Timestamp::from_micros(i),
                request_hash: format!("h{i}"),
                outcome: VerdictOutcome::Approved,
            })
            .collect()
    }

    #[test]
    fn a_group_signed_at_once_verifies_message_by_message_with_one_signature_check() {
        let key = SigningKey::generate();
        let mediator = MemberId::new("mediator").unwrap();
        let values = verdicts(5);
        let signed = Signed::sign_all(&values, &mediator, &key, SigningPurpose::Verdict);
        assert_eq!(signed.len(), 5);
        assert!(signed.iter().all(|s| s.batch.is_some()));
        assert!(signed.windows(2).all(|w| w[0].signature == w[1].signature));
        let mut roots = VerifiedRoots::default();
        for (signed, value) in signed.iter().zip(&values) {
            // Each message also verifies on its own, through the wire format.
            let wire = ProtocolMessage::decode(&ProtocolMessage::Verdict(signed.clone()).encode());
            assert_eq!(wire.unwrap(), ProtocolMessage::Verdict(signed.clone()));
            let back: Verdict = signed
                .verify(&key.public_key(), SigningPurpose::Verdict)
                .unwrap();
            assert_eq!(&back, value);
            let back: Verdict = signed
                .verify_remembering(&key.public_key(), SigningPurpose::Verdict, &mut roots)
                .unwrap();
            assert_eq!(&back, value);
        }
        assert_eq!(roots.len(), 1, "one root for the whole group");
    }

    #[test]
    fn a_group_member_tampered_moved_or_stripped_of_its_proof_is_refused() {
        let key = SigningKey::generate();
        let mediator = MemberId::new("mediator").unwrap();
        let signed = Signed::sign_all(&verdicts(4), &mediator, &key, SigningPurpose::Verdict);
        let mut roots = VerifiedRoots::default();
        // The root is remembered before each bad copy is tried: remembering must not let them in.
        signed[0]
            .verify_remembering::<Verdict>(&key.public_key(), SigningPurpose::Verdict, &mut roots)
            .unwrap();
        let mut tampered = signed[1].clone();
        tampered.payload_json = tampered.payload_json.replace("h1", "h9");
        let mut moved = signed[1].clone();
        moved.batch = signed[2].batch.clone();
        let mut stripped = signed[1].clone();
        stripped.batch = None;
        let mut broken = signed[1].clone();
        broken.batch.as_mut().unwrap().path[0] = "00".into();
        for bad in [tampered, moved, stripped, broken] {
            assert!(bad
                .verify_remembering::<Verdict>(
                    &key.public_key(),
                    SigningPurpose::Verdict,
                    &mut roots
                )
                .is_err());
        }
        // Nor does a remembered root vouch for another signer's key or another purpose.
        let other = SigningKey::generate().public_key();
        assert!(signed[1]
            .verify_remembering::<Verdict>(&other, SigningPurpose::Verdict, &mut roots)
            .is_err());
        assert!(signed[1]
            .verify_remembering::<Verdict>(
                &key.public_key(),
                SigningPurpose::ConfirmationResponse,
                &mut roots
            )
            .is_err());
    }

    #[test]
    fn a_group_of_one_is_signed_as_a_single_message() {
        let key = SigningKey::generate();
        let mediator = MemberId::new("mediator").unwrap();
        let values = verdicts(1);
        let signed = Signed::sign_all(&values, &mediator, &key, SigningPurpose::Verdict);
        assert_eq!(
            signed,
            vec![Signed::sign(
                &values[0],
                mediator,
                &key,
                SigningPurpose::Verdict
            )]
        );
        assert!(!ProtocolMessage::Verdict(signed[0].clone())
            .encode()
            .windows(5)
            .any(|w| w == b"batch"));
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
