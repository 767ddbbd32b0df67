//! Validation of admin requests, before anything is signed or stored: every malformed field
//! becomes a [`FieldError`] naming the field (INVALID_ARGUMENT on the wire), so bad input
//! changes nothing. Pure, so each refusal is unit-tested.

use meridian_core::crypto::PublicKey;
use meridian_core::ledger::Permission;
use meridian_core::topology::{HostingRequest, TopologyMapping};
use meridian_core::{MemberId, ParticipantId, PartyId, Timestamp};

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

/// A participant's signature on an AllocateParty request, as the request carries it; who signed
/// is established by [`crate::authority::authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub requested_by: ParticipantId,
    pub requested_at: Timestamp,
    pub signature: Vec<u8>,
}

impl Signed {
    /// The request this signature must cover: `mapping` (a party hosting) as asked by the
    /// signer at its time.
    pub fn request(&self, mapping: &TopologyMapping) -> Option<HostingRequest> {
        match mapping {
            TopologyMapping::PartyToParticipant {
                party,
                participant,
                permission,
            } => Some(HostingRequest {
                party: party.clone(),
                participant: participant.clone(),
                permission: *permission,
                requested_by: self.requested_by.clone(),
                requested_at: self.requested_at,
            }),
            _ => None,
        }
    }
}

/// The signature fields of AllocateParty: `None` when `signature` is empty (an unsigned
/// request, which only the owner's admin token can authorize).
pub fn signed_by(
    requested_by: String,
    requested_at_us: u64,
    signature: Vec<u8>,
) -> Result<Option<Signed>, FieldError> {
    if signature.is_empty() {
        return Ok(None);
    }
    let requested_by = field("requested_by", ParticipantId::new(requested_by))?;
    if requested_at_us == 0 {
        return Err(FieldError {
            field: "requested_at_us",
            reason: "a signed request needs the time it was made (microseconds since the epoch)"
                .to_owned(),
        });
    }
    Ok(Some(Signed {
        requested_by,
        requested_at: Timestamp::from_micros(requested_at_us),
        signature,
    }))
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

    #[test]
    fn signature_fields_are_optional_but_complete_when_present() {
        assert_eq!(signed_by(String::new(), 0, Vec::new()), Ok(None));
        let signed = signed_by("p1".into(), 42, vec![7; 64])
            .expect("valid")
            .expect("signed");
        assert_eq!(signed.requested_by, ParticipantId::new("p1").expect("id"));
        assert_eq!(signed.requested_at, Timestamp::from_micros(42));
        let request = signed
            .request(&allocate_party("bob".into(), "p2".into(), "observation").expect("valid"))
            .expect("a hosting");
        assert_eq!(request.participant, ParticipantId::new("p2").expect("id"));
        assert_eq!(request.requested_by, ParticipantId::new("p1").expect("id"));
        assert_eq!(request.permission, Permission::Observation);

        let error = signed_by(String::new(), 42, vec![7; 64]).expect_err("no requester");
        assert_eq!(error.field, "requested_by");
        let error = signed_by("p1".into(), 0, vec![7; 64]).expect_err("no time");
        assert_eq!(error.field, "requested_at_us");
    }
}
