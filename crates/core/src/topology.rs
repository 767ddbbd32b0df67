//! The synchronizer's topology: which participants and mediators exist with which keys, and
//! which participants host which parties with which permission.
//!
//! Topology transactions are signed by the synchronizer owner and take effect at their
//! sequencing timestamp. Every member keeps a [`TopologyState`] (the signed history) and asks
//! it for the [`TopologySnapshot`] valid at a request's timestamp, so all members judge a
//! request against the same topology no matter when they process it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, PublicKey, Signature, SigningKey, SigningPurpose};
use crate::ids::{MemberId, ParticipantId, PartyId};
use crate::ledger::Permission;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TopologyMapping {
    /// The topology manager's own sequencer identity.
    TopologyManager {
        manager: MemberId,
        public_key: String,
    },
    Participant {
        participant: ParticipantId,
        public_key: String,
    },
    Mediator {
        mediator: MemberId,
        public_key: String,
    },
    PartyToParticipant {
        party: PartyId,
        participant: ParticipantId,
        permission: Permission,
    },
}

/// One change to the topology. `serial` is unique and increasing per synchronizer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyTransaction {
    pub serial: u64,
    pub mapping: TopologyMapping,
}

/// A topology transaction with the owner's signature over its exact JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTopologyTransaction {
    pub transaction_json: String,
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("topology transaction signature: {0}")]
    Signature(#[from] CryptoError),
    #[error("malformed topology transaction: {0}")]
    Malformed(String),
    #[error(
        "topology transaction {serial} conflicts with the one already applied under that serial"
    )]
    SerialConflict { serial: u64 },
    #[error("party {party} is hosted on {participant}, which is not a registered participant")]
    UnknownParticipant {
        party: PartyId,
        participant: ParticipantId,
    },
}

impl TopologyMapping {
    /// The member and key a mapping registers with the sequencer, if it registers one.
    pub fn member_key(&self) -> Option<(MemberId, &str)> {
        match self {
            TopologyMapping::TopologyManager {
                manager,
                public_key,
            } => Some((manager.clone(), public_key)),
            TopologyMapping::Participant {
                participant,
                public_key,
            } => Some((participant.as_member(), public_key)),
            TopologyMapping::Mediator {
                mediator,
                public_key,
            } => Some((mediator.clone(), public_key)),
            TopologyMapping::PartyToParticipant { .. } => None,
        }
    }
}

impl SignedTopologyTransaction {
    pub fn sign(transaction: &TopologyTransaction, owner: &SigningKey) -> Self {
        let transaction_json =
            serde_json::to_string(transaction).expect("topology transactions always serialize");
        let signature = owner
            .sign(
                SigningPurpose::TopologyTransaction,
                transaction_json.as_bytes(),
            )
            .to_hex();
        Self {
            transaction_json,
            signature,
        }
    }

    /// Verifies the owner's signature and decodes the transaction.
    pub fn verify(&self, owner: &PublicKey) -> Result<TopologyTransaction, TopologyError> {
        let signature = Signature::from_hex(&self.signature)?;
        owner.verify(
            SigningPurpose::TopologyTransaction,
            self.transaction_json.as_bytes(),
            &signature,
        )?;
        serde_json::from_str(&self.transaction_json)
            .map_err(|e| TopologyError::Malformed(e.to_string()))
    }
}

/// A participant's request that `participant` host `party` with `permission`, made by the
/// participant `requested_by` at `requested_at` (its wall clock). The requester signs
/// [`Self::signing_bytes`] with its member key — the key the topology registers for it — so the
/// topology manager learns who asks from the signature, not from a claimed field, and judges
/// the request by that participant's authority over the party. The time bounds how long a
/// captured request could be replayed: the manager refuses one made too far from its clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostingRequest {
    pub party: PartyId,
    pub participant: ParticipantId,
    pub permission: Permission,
    pub requested_by: ParticipantId,
    pub requested_at: Timestamp,
}

impl HostingRequest {
    /// The canonical bytes signed: each id length-prefixed (so no two requests share an
    /// encoding), the permission's wire name, then the time in microseconds, big-endian.
    pub fn signing_bytes(&self) -> Vec<u8> {
        let fields = [
            self.party.as_str(),
            self.participant.as_str(),
            self.permission.as_str(),
            self.requested_by.as_str(),
        ];
        let mut bytes = Vec::with_capacity(fields.iter().map(|f| 4 + f.len()).sum::<usize>() + 8);
        for field in fields {
            bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
            bytes.extend_from_slice(field.as_bytes());
        }
        bytes.extend_from_slice(&self.requested_at.as_micros().to_be_bytes());
        bytes
    }

    /// The requester's signature, made with its member key.
    pub fn sign(&self, key: &SigningKey) -> Signature {
        key.sign(SigningPurpose::HostingRequest, &self.signing_bytes())
    }

    /// Whether `signature` is the signature of the holder of `key` over this request.
    pub fn verify(&self, key: &PublicKey, signature: &Signature) -> Result<(), CryptoError> {
        key.verify(
            SigningPurpose::HostingRequest,
            &self.signing_bytes(),
            signature,
        )
    }
}

/// The topology at one point in time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopologySnapshot {
    managers: BTreeMap<MemberId, PublicKey>,
    participants: BTreeMap<ParticipantId, PublicKey>,
    mediators: BTreeMap<MemberId, PublicKey>,
    hosting: BTreeMap<PartyId, BTreeMap<ParticipantId, Permission>>,
}

impl TopologySnapshot {
    fn apply(&mut self, mapping: &TopologyMapping) -> Result<(), TopologyError> {
        match mapping {
            TopologyMapping::TopologyManager {
                manager,
                public_key,
            } => {
                self.managers
                    .insert(manager.clone(), PublicKey::from_hex(public_key)?);
            }
            TopologyMapping::Participant {
                participant,
                public_key,
            } => {
                self.participants
                    .insert(participant.clone(), PublicKey::from_hex(public_key)?);
            }
            TopologyMapping::Mediator {
                mediator,
                public_key,
            } => {
                self.mediators
                    .insert(mediator.clone(), PublicKey::from_hex(public_key)?);
            }
            TopologyMapping::PartyToParticipant {
                party,
                participant,
                permission,
            } => {
                if !self.participants.contains_key(participant) {
                    return Err(TopologyError::UnknownParticipant {
                        party: party.clone(),
                        participant: participant.clone(),
                    });
                }
                self.hosting
                    .entry(party.clone())
                    .or_default()
                    .insert(participant.clone(), *permission);
            }
        }
        Ok(())
    }

    /// Every member that may use the sequencer: manager, participants and mediators.
    pub fn members(&self) -> BTreeSet<MemberId> {
        self.managers
            .keys()
            .cloned()
            .chain(self.participants.keys().map(ParticipantId::as_member))
            .chain(self.mediators.keys().cloned())
            .collect()
    }

    pub fn participant_key(&self, participant: &ParticipantId) -> Option<&PublicKey> {
        self.participants.get(participant)
    }

    pub fn participants(&self) -> impl Iterator<Item = &ParticipantId> {
        self.participants.keys()
    }

    pub fn mediator_key(&self, mediator: &MemberId) -> Option<&PublicKey> {
        self.mediators.get(mediator)
    }

    pub fn mediators(&self) -> impl Iterator<Item = &MemberId> {
        self.mediators.keys()
    }

    pub fn parties(
        &self,
    ) -> impl Iterator<Item = (&PartyId, &BTreeMap<ParticipantId, Permission>)> {
        self.hosting.iter()
    }

    /// The permission `participant` has for `party`, if it hosts it.
    pub fn permission(&self, party: &PartyId, participant: &ParticipantId) -> Option<Permission> {
        self.hosting.get(party)?.get(participant).copied()
    }

    /// Every participant hosting any of `parties`.
    pub fn hosting_participants(&self, parties: &BTreeSet<PartyId>) -> BTreeSet<ParticipantId> {
        parties
            .iter()
            .filter_map(|p| self.hosting.get(p))
            .flat_map(|hosts| hosts.keys().cloned())
            .collect()
    }

    /// Participants that may confirm for `party`.
    pub fn confirmers(&self, party: &PartyId) -> BTreeSet<ParticipantId> {
        self.hosting
            .get(party)
            .map(|hosts| {
                hosts
                    .iter()
                    .filter(|(_, permission)| permission.can_confirm())
                    .map(|(participant, _)| participant.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Parties `participant` hosts, with permissions.
    pub fn hosted_by(&self, participant: &ParticipantId) -> BTreeMap<PartyId, Permission> {
        self.hosting
            .iter()
            .filter_map(|(party, hosts)| hosts.get(participant).map(|p| (party.clone(), *p)))
            .collect()
    }
}

/// The signed topology history, as every member keeps it.
#[derive(Debug, Clone)]
pub struct TopologyState {
    owner: PublicKey,
    /// (effective time, serial) → transaction, in effect order.
    history: BTreeMap<(Timestamp, u64), TopologyTransaction>,
    by_serial: BTreeMap<u64, (Timestamp, SignedTopologyTransaction)>,
    latest: TopologySnapshot,
}

impl TopologyState {
    pub fn new(owner: PublicKey) -> Self {
        Self {
            owner,
            history: BTreeMap::new(),
            by_serial: BTreeMap::new(),
            latest: TopologySnapshot::default(),
        }
    }

    pub fn owner(&self) -> &PublicKey {
        &self.owner
    }

    /// Verifies and records a transaction effective at `effective`. Returns false if the same
    /// transaction was already known (it arrives both from the manager and from the sequencer).
    pub fn add(
        &mut self,
        effective: Timestamp,
        signed: &SignedTopologyTransaction,
    ) -> Result<bool, TopologyError> {
        let transaction = signed.verify(&self.owner)?;
        if let Some((_, known)) = self.by_serial.get(&transaction.serial) {
            if known.transaction_json == signed.transaction_json {
                return Ok(false);
            }
            return Err(TopologyError::SerialConflict {
                serial: transaction.serial,
            });
        }
        // Check it applies cleanly on top of everything before it.
        let mut check =
            self.snapshot_at(effective.saturating_add(std::time::Duration::from_micros(1)));
        check.apply(&transaction.mapping)?;
        self.by_serial
            .insert(transaction.serial, (effective, signed.clone()));
        self.history
            .insert((effective, transaction.serial), transaction);
        self.latest = self.snapshot_at(Timestamp::MAX);
        Ok(true)
    }

    /// The topology in force for a request sequenced at `at`: everything effective before it.
    pub fn snapshot_at(&self, at: Timestamp) -> TopologySnapshot {
        let mut snapshot = TopologySnapshot::default();
        for ((effective, _), transaction) in &self.history {
            if *effective >= at {
                break;
            }
            // Every entry was checked to apply when added.
            let _ = snapshot.apply(&transaction.mapping);
        }
        snapshot
    }

    pub fn latest(&self) -> &TopologySnapshot {
        &self.latest
    }

    pub fn highest_serial(&self) -> Option<u64> {
        self.by_serial.keys().next_back().copied()
    }

    /// The signed history with effective times, for distribution to new members.
    pub fn signed_history(&self) -> Vec<(Timestamp, SignedTopologyTransaction)> {
        let mut entries: Vec<_> = self.by_serial.values().cloned().collect();
        entries.sort_by_key(|(effective, _)| *effective);
        entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: u64) -> Timestamp {
        Timestamp::from_micros(micros)
    }

    #[test]
    fn snapshots_follow_effective_time_and_signatures_are_checked() {
        let owner = SigningKey::generate();
        let mut state = TopologyState::new(owner.public_key());
        let p1 = ParticipantId::new("p1").unwrap();
        let alice = PartyId::new("alice").unwrap();
        let add_p1 = SignedTopologyTransaction::sign(
            &TopologyTransaction {
                serial: 1,
                mapping: TopologyMapping::Participant {
                    participant: p1.clone(),
                    public_key: SigningKey::generate().public_key().to_string(),
                },
            },
            &owner,
        );
        let host_alice = SignedTopologyTransaction::sign(
            &TopologyTransaction {
                serial: 2,
                mapping: TopologyMapping::PartyToParticipant {
                    party: alice.clone(),
                    participant: p1.clone(),
                    permission: Permission::Submission,
                },
            },
            &owner,
        );
        assert!(state.add(ts(10), &add_p1).unwrap());
        assert!(
            !state.add(ts(10), &add_p1).unwrap(),
            "duplicates are ignored"
        );
        assert!(state.add(ts(20), &host_alice).unwrap());
        assert_eq!(state.snapshot_at(ts(20)).permission(&alice, &p1), None);
        assert_eq!(
            state.snapshot_at(ts(21)).permission(&alice, &p1),
            Some(Permission::Submission)
        );
        assert_eq!(
            state.latest().confirmers(&alice),
            BTreeSet::from([p1.clone()])
        );

        let forged = SignedTopologyTransaction::sign(
            &TopologyTransaction {
                serial: 3,
                mapping: TopologyMapping::Mediator {
                    mediator: MemberId::new("m").unwrap(),
                    public_key: SigningKey::generate().public_key().to_string(),
                },
            },
            &SigningKey::generate(),
        );
        assert!(matches!(
            state.add(ts(30), &forged),
            Err(TopologyError::Signature(_))
        ));
    }

    #[test]
    fn hosting_request_signatures_bind_every_field() {
        let key = SigningKey::generate();
        let request = HostingRequest {
            party: PartyId::new("bob").unwrap(),
            participant: ParticipantId::new("p1").unwrap(),
            permission: Permission::Submission,
            requested_by: ParticipantId::new("p1").unwrap(),
            requested_at: ts(1_000),
        };
        let signature = request.sign(&key);
        assert_eq!(request.verify(&key.public_key(), &signature), Ok(()));
        let changed = [
            HostingRequest {
                party: PartyId::new("alice").unwrap(),
                ..request.clone()
            },
            HostingRequest {
                participant: ParticipantId::new("p2").unwrap(),
                ..request.clone()
            },
            HostingRequest {
                permission: Permission::Observation,
                ..request.clone()
            },
            HostingRequest {
                requested_by: ParticipantId::new("p2").unwrap(),
                ..request.clone()
            },
            HostingRequest {
                requested_at: ts(1_001),
                ..request.clone()
            },
        ];
        for other in changed {
            assert_eq!(
                other.verify(&key.public_key(), &signature),
                Err(CryptoError::BadSignature),
                "{other:?}"
            );
        }
        assert_eq!(
            request.verify(&SigningKey::generate().public_key(), &signature),
            Err(CryptoError::BadSignature)
        );
        // Another purpose's signature over the same bytes does not pass.
        let elsewhere = key.sign(
            SigningPurpose::SequencerAuthentication,
            &request.signing_bytes(),
        );
        assert_eq!(
            request.verify(&key.public_key(), &elsewhere),
            Err(CryptoError::BadSignature)
        );
        // Length prefixes: moving a character from one id to the next changes the bytes.
        let shifted = HostingRequest {
            party: PartyId::new("bo").unwrap(),
            participant: ParticipantId::new("bp1").unwrap(),
            ..request.clone()
        };
        assert_ne!(shifted.signing_bytes(), request.signing_bytes());
    }

    #[test]
    fn hosting_needs_a_registered_participant() {
        let owner = SigningKey::generate();
        let mut state = TopologyState::new(owner.public_key());
        let orphan = SignedTopologyTransaction::sign(
            &TopologyTransaction {
                serial: 1,
                mapping: TopologyMapping::PartyToParticipant {
                    party: PartyId::new("alice").unwrap(),
                    participant: ParticipantId::new("nowhere").unwrap(),
                    permission: Permission::Observation,
                },
            },
            &owner,
        );
        assert!(matches!(
            state.add(ts(5), &orphan),
            Err(TopologyError::UnknownParticipant { .. })
        ));
        assert!(state.signed_history().is_empty());
    }
}
