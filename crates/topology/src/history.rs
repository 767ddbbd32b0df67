//! What is in force, and which serial put it there: the index the manager consults to decide
//! whether a request changes anything. Pure, so the idempotency and refusal rules are
//! unit-tested without a sequencer.
//!
//! Each topology key — a member id, or a (party, participant) pair — is set by the latest
//! serial that mapped it. A request whose mapping equals what is in force is answered with
//! that serial and effective time (`changed = false`), which makes every admin call safe to
//! retry.

use std::collections::{BTreeMap, BTreeSet};

use meridian_core::crypto::PublicKey;
use meridian_core::ledger::Permission;
use meridian_core::topology::{SignedTopologyTransaction, TopologyMapping};
use meridian_core::{MemberId, ParticipantId, PartyId, Timestamp};

/// The entry that set a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InForce {
    pub serial: u64,
    pub effective: Timestamp,
    pub mapping: TopologyMapping,
    pub signed: SignedTopologyTransaction,
}

/// What to do with a requested mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Exactly this mapping is already in force.
    Unchanged { serial: u64, effective: Timestamp },
    /// Publish it as a new serial.
    Apply,
}

/// Why a well-formed request cannot be applied to the current topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The member id is taken by another kind of member, or registered with another key.
    #[error("{0}")]
    MemberTaken(String),
    /// The party is to be hosted on a participant the topology does not know.
    #[error("{0}")]
    UnknownParticipant(String),
}

#[derive(Debug, Clone, Default)]
pub struct History {
    members: BTreeMap<MemberId, InForce>,
    hosting: BTreeMap<(PartyId, ParticipantId), InForce>,
}

fn kind(mapping: &TopologyMapping) -> &'static str {
    match mapping {
        TopologyMapping::TopologyManager { .. } => "topology manager",
        TopologyMapping::Participant { .. } => "participant",
        TopologyMapping::Mediator { .. } => "mediator",
        TopologyMapping::PartyToParticipant { .. } => "party hosting",
    }
}

impl History {
    /// Records a completed entry; later serials override earlier ones for the same key.
    pub fn record(&mut self, entry: InForce) {
        match &entry.mapping {
            TopologyMapping::PartyToParticipant {
                party, participant, ..
            } => {
                self.hosting
                    .insert((party.clone(), participant.clone()), entry);
            }
            mapping => {
                if let Some((member, _)) = mapping.member_key() {
                    self.members.insert(member, entry);
                }
            }
        }
    }

    /// The entry in force for a member id.
    pub fn member(&self, member: &MemberId) -> Option<&InForce> {
        self.members.get(member)
    }

    /// The key `participant` is registered with, if it is a registered participant.
    pub fn participant_key(&self, participant: &ParticipantId) -> Option<PublicKey> {
        match self.members.get(&participant.as_member()) {
            Some(InForce {
                mapping: TopologyMapping::Participant { public_key, .. },
                ..
            }) => PublicKey::from_hex(public_key).ok(),
            _ => None,
        }
    }

    /// Every participant hosting `party` now, with its permission.
    pub fn hosts(&self, party: &PartyId) -> BTreeMap<ParticipantId, Permission> {
        self.hosting
            .iter()
            .filter(|((hosted, _), _)| hosted == party)
            .filter_map(|((_, participant), entry)| match entry.mapping {
                TopologyMapping::PartyToParticipant { permission, .. } => {
                    Some((participant.clone(), permission))
                }
                _ => None,
            })
            .collect()
    }

    /// Every member, plus the one `mapping` would add: the recipients of its distribution.
    pub fn members_with(&self, mapping: &TopologyMapping) -> BTreeSet<MemberId> {
        let mut members: BTreeSet<MemberId> = self.members.keys().cloned().collect();
        if let Some((member, _)) = mapping.member_key() {
            members.insert(member);
        }
        members
    }

    pub fn plan(&self, mapping: &TopologyMapping) -> Result<Plan, Refusal> {
        let current = match mapping {
            TopologyMapping::PartyToParticipant {
                party, participant, ..
            } => {
                match self.members.get(&participant.as_member()) {
                    Some(InForce {
                        mapping: TopologyMapping::Participant { .. },
                        ..
                    }) => {}
                    Some(other) => {
                        return Err(Refusal::UnknownParticipant(format!(
                            "{participant} is not a participant: it is the {} registered by serial {}",
                            kind(&other.mapping),
                            other.serial
                        )))
                    }
                    None => {
                        return Err(Refusal::UnknownParticipant(format!(
                            "participant {participant} is not registered; add it with AddParticipant first"
                        )))
                    }
                }
                self.hosting.get(&(party.clone(), participant.clone()))
            }
            mapping => {
                let Some((member, _)) = mapping.member_key() else {
                    return Ok(Plan::Apply);
                };
                let current = self.members.get(&member);
                if let Some(current) = current.filter(|c| c.mapping != *mapping) {
                    let reason = if kind(&current.mapping) == kind(mapping) {
                        format!(
                            "{} {member} is already registered with a different key (serial {}); changing a member's key is not supported",
                            kind(mapping),
                            current.serial
                        )
                    } else {
                        format!(
                            "member id {member} is already taken by the {} registered by serial {}",
                            kind(&current.mapping),
                            current.serial
                        )
                    };
                    return Err(Refusal::MemberTaken(reason));
                }
                current
            }
        };
        Ok(match current {
            Some(current) if current.mapping == *mapping => Plan::Unchanged {
                serial: current.serial,
                effective: current.effective,
            },
            // A new key, or a party whose permission on this participant changes.
            _ => Plan::Apply,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;

    fn key() -> String {
        SigningKey::generate().public_key().to_string()
    }

    fn participant(name: &str, key: &str) -> TopologyMapping {
        TopologyMapping::Participant {
            participant: ParticipantId::new(name).expect("id"),
            public_key: key.to_owned(),
        }
    }

    fn hosting(party: &str, participant: &str, permission: Permission) -> TopologyMapping {
        TopologyMapping::PartyToParticipant {
            party: PartyId::new(party).expect("id"),
            participant: ParticipantId::new(participant).expect("id"),
            permission,
        }
    }

    fn entry(serial: u64, mapping: TopologyMapping) -> InForce {
        InForce {
            serial,
            effective: Timestamp::from_micros(serial * 100),
            mapping,
            signed: SignedTopologyTransaction {
                transaction_json: String::new(),
                signature: String::new(),
            },
        }
    }

    #[test]
    fn repeats_are_unchanged_and_permission_changes_apply() {
        let mut history = History::default();
        let p1_key = key();
        history.record(entry(1, participant("p1", &p1_key)));
        history.record(entry(2, hosting("alice", "p1", Permission::Submission)));

        assert_eq!(
            history.plan(&participant("p1", &p1_key)),
            Ok(Plan::Unchanged {
                serial: 1,
                effective: Timestamp::from_micros(100)
            })
        );
        assert_eq!(
            history.plan(&hosting("alice", "p1", Permission::Submission)),
            Ok(Plan::Unchanged {
                serial: 2,
                effective: Timestamp::from_micros(200)
            })
        );
        assert_eq!(
            history.plan(&hosting("alice", "p1", Permission::Observation)),
            Ok(Plan::Apply)
        );
        history.record(entry(3, hosting("alice", "p1", Permission::Observation)));
        assert_eq!(
            history.plan(&hosting("alice", "p1", Permission::Observation)),
            Ok(Plan::Unchanged {
                serial: 3,
                effective: Timestamp::from_micros(300)
            })
        );
        assert_eq!(history.plan(&participant("p2", &key())), Ok(Plan::Apply));
    }

    #[test]
    fn conflicts_and_unknown_participants_are_refused() {
        let mut history = History::default();
        history.record(entry(1, participant("p1", &key())));
        history.record(entry(
            2,
            TopologyMapping::Mediator {
                mediator: MemberId::new("m1").expect("id"),
                public_key: key(),
            },
        ));

        let err = history.plan(&participant("p1", &key())).unwrap_err();
        assert!(matches!(err, Refusal::MemberTaken(_)));
        assert!(
            err.to_string().contains("different key (serial 1)"),
            "{err}"
        );
        let err = history.plan(&participant("m1", &key())).unwrap_err();
        assert!(
            err.to_string()
                .contains("taken by the mediator registered by serial 2"),
            "{err}"
        );

        let err = history
            .plan(&hosting("alice", "p9", Permission::Submission))
            .unwrap_err();
        assert!(matches!(err, Refusal::UnknownParticipant(_)));
        assert!(
            err.to_string().contains("participant p9 is not registered"),
            "{err}"
        );
        let err = history
            .plan(&hosting("alice", "m1", Permission::Submission))
            .unwrap_err();
        assert!(err.to_string().contains("m1 is not a participant"), "{err}");
    }

    #[test]
    fn recipients_include_the_member_being_added() {
        let mut history = History::default();
        history.record(entry(1, participant("p1", &key())));
        let with_p2 = history.members_with(&participant("p2", &key()));
        assert_eq!(with_p2.len(), 2);
        let with_party = history.members_with(&hosting("alice", "p1", Permission::Submission));
        assert_eq!(with_party.len(), 1);
    }
}
