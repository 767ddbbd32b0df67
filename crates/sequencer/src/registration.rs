//! Who may register a member. Without a synchronizer owner key the sequencer keeps open
//! registration (any admin caller, guarded only by the optional admin token), which the
//! benchmarks and single-operator setups use. With `owner_public_key` configured, a member is
//! admitted only on the strength of a topology transaction the owner signed, whose mapping
//! names exactly the member and key being registered: the owner key, not network access to the
//! admin port, decides who joins the synchronizer.
//!
//! The check is pure (no store, no clock) so every refusal can be unit-tested; the gRPC handler
//! runs it before touching the store, so a refused registration changes nothing.

use meridian_core::crypto::PublicKey;
use meridian_core::topology::{SignedTopologyTransaction, TopologyError};
use meridian_core::MemberId;
use tonic::Status;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("this sequencer admits members only with an owner-signed topology transaction; `topology_transaction_json` and `owner_signature` are required")]
    MissingTransaction,
    #[error("the topology transaction is not signed by the synchronizer owner: {0}")]
    BadSignature(String),
    #[error("invalid `topology_transaction_json`: {0}")]
    Malformed(String),
    #[error("topology transaction {serial} does not register a member (it maps a party)")]
    NotAMemberMapping { serial: u64 },
    #[error("topology transaction {serial} registers member {named}, not {requested}")]
    MemberMismatch {
        serial: u64,
        named: MemberId,
        requested: MemberId,
    },
    #[error("topology transaction {serial} registers {member} with key {named}, not {requested}")]
    KeyMismatch {
        serial: u64,
        member: MemberId,
        named: String,
        /// Hex, like `named`; a `PublicKey` here would make every `Result` of this module large.
        requested: String,
    },
}

impl From<RegistrationError> for Status {
    fn from(error: RegistrationError) -> Status {
        match error {
            // Whoever cannot show the owner's signature is not authorised to register anyone.
            RegistrationError::MissingTransaction | RegistrationError::BadSignature(_) => {
                Status::unauthenticated(error.to_string())
            }
            // A genuine owner signature over the wrong content is a caller bug, not an intruder.
            RegistrationError::Malformed(_)
            | RegistrationError::NotAMemberMapping { .. }
            | RegistrationError::MemberMismatch { .. }
            | RegistrationError::KeyMismatch { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

/// Decides whether `member` with `public_key` may be registered. `owner` is the configured
/// owner key (`None`: open registration); `transaction_json` and `owner_signature` are the
/// request's fields, empty when absent.
pub fn authorize_registration(
    owner: Option<&PublicKey>,
    member: &MemberId,
    public_key: &PublicKey,
    transaction_json: &str,
    owner_signature: &str,
) -> Result<(), RegistrationError> {
    let Some(owner) = owner else {
        return Ok(());
    };
    if transaction_json.is_empty() || owner_signature.is_empty() {
        return Err(RegistrationError::MissingTransaction);
    }
    let signed = SignedTopologyTransaction {
        transaction_json: transaction_json.to_owned(),
        signature: owner_signature.to_owned(),
    };
    // `verify` checks the signature over the exact text before decoding it.
    let transaction = signed.verify(owner).map_err(|error| match error {
        TopologyError::Signature(e) => RegistrationError::BadSignature(e.to_string()),
        other => RegistrationError::Malformed(other.to_string()),
    })?;
    let serial = transaction.serial;
    let Some((named, named_key)) = transaction.mapping.member_key() else {
        return Err(RegistrationError::NotAMemberMapping { serial });
    };
    if named != *member {
        return Err(RegistrationError::MemberMismatch {
            serial,
            named,
            requested: member.clone(),
        });
    }
    // Compare keys as keys, not as text: hex case or whitespace must not matter.
    if PublicKey::from_hex(named_key).ok() != Some(*public_key) {
        return Err(RegistrationError::KeyMismatch {
            serial,
            member: named,
            named: named_key.to_owned(),
            requested: public_key.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;
    use meridian_core::ledger::Permission;
    use meridian_core::topology::{TopologyMapping, TopologyTransaction};
    use meridian_core::{ParticipantId, PartyId};

    fn id(name: &str) -> MemberId {
        MemberId::new(name).expect("valid id")
    }

    fn sign(owner: &SigningKey, mapping: TopologyMapping) -> SignedTopologyTransaction {
        SignedTopologyTransaction::sign(&TopologyTransaction { serial: 7, mapping }, owner)
    }

    fn participant(name: &str, key: &PublicKey) -> TopologyMapping {
        TopologyMapping::Participant {
            participant: ParticipantId::new(name).expect("valid id"),
            public_key: key.to_string(),
        }
    }

    fn check(
        owner: Option<&PublicKey>,
        member: &str,
        key: &PublicKey,
        signed: &SignedTopologyTransaction,
    ) -> Result<(), RegistrationError> {
        authorize_registration(
            owner,
            &id(member),
            key,
            &signed.transaction_json,
            &signed.signature,
        )
    }

    #[test]
    fn owner_signed_member_mappings_admit_exactly_their_member_and_key() {
        let owner = SigningKey::generate();
        let owner_key = owner.public_key();
        let key = SigningKey::generate().public_key();
        for mapping in [
            participant("p1", &key),
            TopologyMapping::Mediator {
                mediator: id("p1"),
                public_key: key.to_string(),
            },
            TopologyMapping::TopologyManager {
                manager: id("p1"),
                public_key: key.to_string().to_uppercase(),
            },
        ] {
            let signed = sign(&owner, mapping);
            assert_eq!(check(Some(&owner_key), "p1", &key, &signed), Ok(()));
        }
    }

    #[test]
    fn registration_without_owner_key_stays_open() {
        let key = SigningKey::generate().public_key();
        assert_eq!(
            authorize_registration(None, &id("anyone"), &key, "", ""),
            Ok(())
        );
    }

    #[test]
    fn every_refusal_names_its_reason_and_maps_to_a_status() {
        let owner = SigningKey::generate();
        let owner_key = owner.public_key();
        let key = SigningKey::generate().public_key();
        let good = sign(&owner, participant("p1", &key));

        let missing = authorize_registration(Some(&owner_key), &id("p1"), &key, "", "");
        assert_eq!(missing, Err(RegistrationError::MissingTransaction));
        let only_json = authorize_registration(
            Some(&owner_key),
            &id("p1"),
            &key,
            &good.transaction_json,
            "",
        );
        assert_eq!(only_json, Err(RegistrationError::MissingTransaction));

        let forged = sign(&SigningKey::generate(), participant("p1", &key));
        let err = check(Some(&owner_key), "p1", &key, &forged).unwrap_err();
        assert!(matches!(err, RegistrationError::BadSignature(_)), "{err}");
        assert_eq!(
            Status::from(err).code(),
            tonic::Code::Unauthenticated,
            "forgery is an authentication failure"
        );

        let mut tampered = good.clone();
        tampered.transaction_json = tampered.transaction_json.replace("p1", "p2");
        assert!(matches!(
            check(Some(&owner_key), "p2", &key, &tampered),
            Err(RegistrationError::BadSignature(_))
        ));
        let mut garbled = good.clone();
        garbled.signature = "zz".into();
        assert!(matches!(
            check(Some(&owner_key), "p1", &key, &garbled),
            Err(RegistrationError::BadSignature(_))
        ));

        let err = check(Some(&owner_key), "p2", &key, &good).unwrap_err();
        assert!(
            matches!(err, RegistrationError::MemberMismatch { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("registers member p1, not p2"),
            "{err}"
        );
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);

        let other_key = SigningKey::generate().public_key();
        let err = check(Some(&owner_key), "p1", &other_key, &good).unwrap_err();
        assert!(
            matches!(err, RegistrationError::KeyMismatch { .. }),
            "{err}"
        );
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);

        let hosting = sign(
            &owner,
            TopologyMapping::PartyToParticipant {
                party: PartyId::new("alice").expect("valid id"),
                participant: ParticipantId::new("p1").expect("valid id"),
                permission: Permission::Submission,
            },
        );
        assert_eq!(
            check(Some(&owner_key), "p1", &key, &hosting),
            Err(RegistrationError::NotAMemberMapping { serial: 7 })
        );

        // The owner signed something that is not a topology transaction at all.
        let text = "{\"not\":\"a transaction\"}".to_owned();
        let signature = owner
            .sign(
                meridian_core::crypto::SigningPurpose::TopologyTransaction,
                text.as_bytes(),
            )
            .to_hex();
        let err = authorize_registration(Some(&owner_key), &id("p1"), &key, &text, &signature)
            .unwrap_err();
        assert!(matches!(err, RegistrationError::Malformed(_)), "{err}");
        assert_eq!(Status::from(err).code(), tonic::Code::InvalidArgument);
    }
}
