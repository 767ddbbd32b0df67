//! Validation of admin requests, before anything is signed or stored: every malformed field
//! becomes a [`FieldError`] naming the field (INVALID_ARGUMENT on the wire), so bad input
//! changes nothing. Pure, so each refusal is unit-tested.

use meridian_core::crypto::PublicKey;
use meridian_core::ledger::Permission;
use meridian_core::topology::TopologyMapping;
use meridian_core::{MemberId, ParticipantId, PartyId};

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

fn field<T, E: std::fmt::Display>(
    name: &'static str,
    result: Result<T, E>,
) -> Result<T, FieldError> {
    result.map_err(|e| FieldError {
        field: name,
        reason: e.to_string(),
    })
}

/// The key as the mapping carries it: lower-case hex of a valid ed25519 point, so that equal
/// keys are equal strings and idempotency checks can compare mappings directly.
fn key_hex(bytes: &[u8]) -> Result<String, FieldError> {
    Ok(field("public_key", PublicKey::from_bytes(bytes))?.to_string())
}

pub fn add_participant(
    participant: String,
    public_key: &[u8],
) -> Result<TopologyMapping, FieldError> {
    let participant = field("participant", ParticipantId::new(participant))?;
    Ok(TopologyMapping::Participant {
        participant,
        public_key: key_hex(public_key)?,
    })
}

pub fn add_mediator(mediator: String, public_key: &[u8]) -> Result<TopologyMapping, FieldError> {
    let mediator = field("mediator", MemberId::new(mediator))?;
    Ok(TopologyMapping::Mediator {
        mediator,
        public_key: key_hex(public_key)?,
    })
}

pub fn allocate_party(
    party: String,
    participant: String,
    permission: &str,
) -> Result<TopologyMapping, FieldError> {
    let party = field("party", PartyId::new(party))?;
    let participant = field("participant", ParticipantId::new(participant))?;
    let permission = field("permission", parse_permission(permission))?;
    Ok(TopologyMapping::PartyToParticipant {
        party,
        participant,
        permission,
    })
}

/// `submission`, `confirmation` or `observation`, exactly as the proto documents them.
pub fn parse_permission(text: &str) -> Result<Permission, String> {
    match text {
        "submission" => Ok(Permission::Submission),
        "confirmation" => Ok(Permission::Confirmation),
        "observation" => Ok(Permission::Observation),
        "" => Err("must be one of submission, confirmation, observation".to_owned()),
        other => Err(format!(
            "{other:?} is not one of submission, confirmation, observation"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;

    fn key() -> Vec<u8> {
        SigningKey::generate().public_key().to_bytes().to_vec()
    }

    fn err_field(result: Result<TopologyMapping, FieldError>) -> (&'static str, String) {
        let err = result.expect_err("must be refused");
        (err.field, err.to_string())
    }

    #[test]
    fn valid_requests_become_mappings_with_canonical_keys() {
        let signing = SigningKey::generate();
        let mapping =
            add_participant("p1".into(), &signing.public_key().to_bytes()).expect("valid");
        assert_eq!(
            mapping,
            TopologyMapping::Participant {
                participant: ParticipantId::new("p1").expect("id"),
                public_key: signing.public_key().to_string(),
            }
        );
        assert!(add_mediator("mediator-1".into(), &key()).is_ok());
        assert_eq!(
            allocate_party("alice".into(), "p1".into(), "confirmation").expect("valid"),
            TopologyMapping::PartyToParticipant {
                party: PartyId::new("alice").expect("id"),
                participant: ParticipantId::new("p1").expect("id"),
                permission: Permission::Confirmation,
            }
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let (name, message) = err_field(add_participant(String::new(), &key()));
        assert_eq!(name, "participant");
        assert!(message.starts_with("invalid `participant`: "), "{message}");
        let (name, message) = err_field(add_participant("p1".into(), &[1, 2, 3]));
        assert_eq!(name, "public_key");
        assert!(message.contains("32 bytes, got 3"), "{message}");
        assert_eq!(err_field(add_participant("p1".into(), &[])).0, "public_key");
        assert_eq!(err_field(add_mediator("m 1".into(), &key())).0, "mediator");
        assert_eq!(
            err_field(allocate_party("al/ice!".into(), "p1".into(), "submission")).0,
            "party"
        );
        assert_eq!(
            err_field(allocate_party("alice".into(), String::new(), "submission")).0,
            "participant"
        );
        let (name, message) = err_field(allocate_party("alice".into(), "p1".into(), "admin"));
        assert_eq!(name, "permission");
        assert!(message.contains("\"admin\" is not one of"), "{message}");
        assert_eq!(
            err_field(allocate_party("alice".into(), "p1".into(), "")).0,
            "permission"
        );
        assert_eq!(
            err_field(allocate_party("alice".into(), "p1".into(), "Submission")).0,
            "permission",
            "permissions are lower case, as documented"
        );
    }
}
