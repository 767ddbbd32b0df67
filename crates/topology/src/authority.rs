//! Who may change where a party is hosted, decided before anything is signed (sans-I/O).
//!
//! Hosting a party is the decision of the party's current hosting participant(s) and of the
//! synchronizer owner, as Canton's party-to-participant mappings require their authorization:
//! otherwise any client that reaches any participant could have that participant host someone
//! else's party and act as it. A request to host party P on participant X is allowed when
//!
//! - it comes from the owner (the admin token), who may make any change; or
//! - P is hosted nowhere yet and the request comes from X itself (a new party's first host); or
//! - it comes from a participant that hosts P now with `submission` permission (it may add a
//!   host or change a permission, its own included); or
//! - it comes from X and changes nothing (X already hosts P with that permission: a retry).
//!
//! A participant's request is authenticated, not claimed: [`authenticate`] checks its
//! signature against the key the topology registers for the requester, and refuses a request
//! made more than [`REQUEST_WINDOW`] away from the manager's clock, so a captured request
//! cannot be replayed later. Only `submission` hosts carry the party's authority: an
//! observing or confirming host must not be able to promote itself to act as the party.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_core::crypto::{PublicKey, Signature};
use meridian_core::ledger::Permission;
use meridian_core::topology::{HostingRequest, TopologyMapping};
use meridian_core::{ParticipantId, Timestamp};

/// How far a participant's request time may lie from the manager's clock, either way. Long
/// enough for a request tried at each manager replica in turn (10 s each) and for ordinary
/// clock differences; short enough that a captured request is of no use for long.
pub const REQUEST_WINDOW: Duration = Duration::from_secs(60);

/// Whose authority a change request carries, once established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authority {
    /// The synchronizer owner, proven by the admin token: any change.
    Owner,
    /// A participant, proven by its signature on the request.
    Participant(ParticipantId),
}

/// Why a request's claimed origin was not accepted (UNAUTHENTICATED on the wire). Each names
/// the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthenticationError {
    #[error(
        "`requested_by`: {0} is not a registered participant, so its signature cannot be checked"
    )]
    UnknownRequester(ParticipantId),
    #[error("`signature`: {0} bytes are not an ed25519 signature (64 bytes)")]
    MalformedSignature(usize),
    #[error("`signature`: does not verify against the registered key of participant {0} over this request")]
    BadSignature(ParticipantId),
    #[error(
        "`requested_at_us`: the request was made at {requested_at}, {apart_s} s from the topology manager's clock ({now}); requests more than {window_s} s apart are refused (a replay, or a clock out of step)",
        window_s = REQUEST_WINDOW.as_secs()
    )]
    Stale {
        requested_at: Timestamp,
        now: Timestamp,
        apart_s: u64,
    },
}

/// The participant whose signed request this is: `request` signed with `signature` by the
/// holder of `key`, the key the topology registers for `request.requested_by` (`None` if it is
/// not a registered participant), made within [`REQUEST_WINDOW`] of `now`.
pub fn authenticate(
    request: &HostingRequest,
    signature: &[u8],
    key: Option<&PublicKey>,
    now: Timestamp,
) -> Result<ParticipantId, AuthenticationError> {
    let requester = &request.requested_by;
    let key = key.ok_or_else(|| AuthenticationError::UnknownRequester(requester.clone()))?;
    let signature = Signature::from_bytes(signature)
        .map_err(|_| AuthenticationError::MalformedSignature(signature.len()))?;
    request
        .verify(key, &signature)
        .map_err(|_| AuthenticationError::BadSignature(requester.clone()))?;
    let apart = if request.requested_at > now {
        request.requested_at.duration_since(now)
    } else {
        now.duration_since(request.requested_at)
    };
    if apart > REQUEST_WINDOW {
        return Err(AuthenticationError::Stale {
            requested_at: request.requested_at,
            now,
            apart_s: apart.as_secs(),
        });
    }
    Ok(requester.clone())
}

/// Whether `authority` may put `mapping` in force, given `hosts`, every participant hosting
/// the mapping's party now. Mappings other than party hosting are the owner's alone (the
/// admin calls that make them check the token). The refusal (PERMISSION_DENIED) names the
/// party and who hosts it.
pub fn authorize(
    mapping: &TopologyMapping,
    authority: &Authority,
    hosts: &BTreeMap<ParticipantId, Permission>,
) -> Result<(), String> {
    let requester = match authority {
        Authority::Owner => return Ok(()),
        Authority::Participant(requester) => requester,
    };
    let TopologyMapping::PartyToParticipant {
        party,
        participant,
        permission,
    } = mapping
    else {
        return Err(format!(
            "participant {requester} may only request party hosting; this change needs the synchronizer owner"
        ));
    };
    if hosts.is_empty() {
        if requester == participant {
            return Ok(());
        }
        return Err(format!(
            "party {party} is hosted nowhere yet: only {participant} itself may become its first host (the request comes from {requester}), or the synchronizer owner may place it"
        ));
    }
    if hosts.get(requester) == Some(&Permission::Submission) {
        return Ok(());
    }
    if requester == participant && hosts.get(participant) == Some(permission) {
        return Ok(());
    }
    Err(format!(
        "party {party} is hosted on {}; {requester} is not one of its hosts with submission permission, and only they or the synchronizer owner (admin token) may have {participant} host it",
        describe(hosts)
    ))
}

/// `p3 (submission), p4 (observation)`: who hosts a party, for refusals.
fn describe(hosts: &BTreeMap<ParticipantId, Permission>) -> String {
    hosts
        .iter()
        .map(|(participant, permission)| format!("{participant} ({})", permission.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;
    use meridian_core::PartyId;

    fn pid(name: &str) -> ParticipantId {
        ParticipantId::new(name).expect("id")
    }

    fn hosting(party: &str, participant: &str, permission: Permission) -> TopologyMapping {
        TopologyMapping::PartyToParticipant {
            party: PartyId::new(party).expect("id"),
            participant: pid(participant),
            permission,
        }
    }

    fn hosts(list: &[(&str, Permission)]) -> BTreeMap<ParticipantId, Permission> {
        list.iter().map(|(p, perm)| (pid(p), *perm)).collect()
    }

    fn by(participant: &str) -> Authority {
        Authority::Participant(pid(participant))
    }

    const NOW: Timestamp = Timestamp::from_micros(1_000_000_000_000);

    fn request(requested_by: &str, requested_at: Timestamp) -> HostingRequest {
        HostingRequest {
            party: PartyId::new("bob").expect("id"),
            participant: pid("participant1"),
            permission: Permission::Submission,
            requested_by: pid(requested_by),
            requested_at,
        }
    }

    #[test]
    fn a_new_party_is_placed_by_its_first_host_or_the_owner() {
        let mapping = hosting("carol", "p1", Permission::Submission);
        assert_eq!(authorize(&mapping, &by("p1"), &hosts(&[])), Ok(()));
        assert_eq!(authorize(&mapping, &Authority::Owner, &hosts(&[])), Ok(()));
        let refused = authorize(&mapping, &by("p2"), &hosts(&[])).expect_err("not its host");
        assert!(
            refused.contains("party carol is hosted nowhere yet"),
            "{refused}"
        );
        assert!(refused.contains("only p1 itself"), "{refused}");
    }

    #[test]
    fn an_existing_party_is_changed_only_by_a_submission_host_or_the_owner() {
        let bob = hosts(&[("p3", Permission::Submission)]);
        // The takeover: p1 asks to host bob on itself.
        let takeover = hosting("bob", "p1", Permission::Submission);
        let refused = authorize(&takeover, &by("p1"), &bob).expect_err("a stranger");
        assert!(
            refused.contains("party bob is hosted on p3 (submission)"),
            "{refused}"
        );
        assert!(refused.contains("p1 is not one of its hosts"), "{refused}");
        // A stranger cannot place the party elsewhere either, nor downgrade its host.
        assert!(authorize(
            &hosting("bob", "p2", Permission::Observation),
            &by("p1"),
            &bob
        )
        .is_err());
        assert!(authorize(
            &hosting("bob", "p3", Permission::Observation),
            &by("p1"),
            &bob
        )
        .is_err());
        // Its host may add a host, or change its own permission; the owner may do anything.
        assert_eq!(authorize(&takeover, &by("p3"), &bob), Ok(()));
        assert_eq!(
            authorize(
                &hosting("bob", "p3", Permission::Confirmation),
                &by("p3"),
                &bob
            ),
            Ok(())
        );
        assert_eq!(authorize(&takeover, &Authority::Owner, &bob), Ok(()));
    }

    #[test]
    fn a_host_without_submission_cannot_promote_itself_but_may_repeat() {
        let bob = hosts(&[
            ("p3", Permission::Submission),
            ("p4", Permission::Observation),
        ]);
        let promote = hosting("bob", "p4", Permission::Submission);
        let refused = authorize(&promote, &by("p4"), &bob).expect_err("observer");
        assert!(
            refused.contains("hosted on p3 (submission), p4 (observation)"),
            "{refused}"
        );
        // Re-allocating what is already in force is a retry, allowed (answered unchanged).
        assert_eq!(
            authorize(
                &hosting("bob", "p4", Permission::Observation),
                &by("p4"),
                &bob
            ),
            Ok(())
        );
        assert_eq!(
            authorize(
                &hosting("bob", "p3", Permission::Submission),
                &by("p3"),
                &bob
            ),
            Ok(())
        );
    }

    #[test]
    fn participants_may_only_request_hosting() {
        let member = TopologyMapping::Participant {
            participant: pid("p9"),
            public_key: SigningKey::generate().public_key().to_string(),
        };
        assert!(authorize(&member, &by("p1"), &hosts(&[])).is_err());
        assert_eq!(authorize(&member, &Authority::Owner, &hosts(&[])), Ok(()));
    }

    #[test]
    fn a_signed_fresh_request_authenticates_its_requester() {
        let key = SigningKey::generate();
        let made = request("participant1", NOW.saturating_sub(Duration::from_secs(5)));
        let signature = made.sign(&key).to_bytes();
        assert_eq!(
            authenticate(&made, &signature, Some(&key.public_key()), NOW),
            Ok(pid("participant1"))
        );
        // Clocks differ both ways: a request a little ahead of the manager passes too.
        let ahead = request("participant1", NOW.saturating_add(Duration::from_secs(30)));
        let signature = ahead.sign(&key).to_bytes();
        assert!(authenticate(&ahead, &signature, Some(&key.public_key()), NOW).is_ok());
    }

    #[test]
    fn forged_malformed_unknown_and_stale_requests_are_refused() {
        let key = SigningKey::generate();
        let made = request("participant1", NOW);
        let signature = made.sign(&key).to_bytes();

        // Signed by someone else (say, a client claiming to be participant1).
        let forged = made.sign(&SigningKey::generate()).to_bytes();
        let error = authenticate(&made, &forged, Some(&key.public_key()), NOW).unwrap_err();
        assert_eq!(
            error,
            AuthenticationError::BadSignature(pid("participant1"))
        );
        assert!(error.to_string().starts_with("`signature`: "), "{error}");

        // A valid signature over another request: the party changed after signing.
        let altered = HostingRequest {
            party: PartyId::new("alice").expect("id"),
            ..made.clone()
        };
        assert!(matches!(
            authenticate(&altered, &signature, Some(&key.public_key()), NOW),
            Err(AuthenticationError::BadSignature(_))
        ));

        assert_eq!(
            authenticate(&made, &signature[..10], Some(&key.public_key()), NOW),
            Err(AuthenticationError::MalformedSignature(10))
        );
        assert_eq!(
            authenticate(&made, &signature, None, NOW),
            Err(AuthenticationError::UnknownRequester(pid("participant1")))
        );

        // Replayed later, or made by a clock far ahead: stale either way.
        let later = NOW.saturating_add(REQUEST_WINDOW + Duration::from_secs(1));
        let error = authenticate(&made, &signature, Some(&key.public_key()), later).unwrap_err();
        assert!(
            matches!(error, AuthenticationError::Stale { apart_s: 61, .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("more than 60 s apart"),
            "{error}"
        );
        let earlier = NOW.saturating_sub(REQUEST_WINDOW + Duration::from_secs(1));
        assert!(matches!(
            authenticate(&made, &signature, Some(&key.public_key()), earlier),
            Err(AuthenticationError::Stale { .. })
        ));
        // Exactly at the window's edge it still passes.
        let edge = NOW.saturating_add(REQUEST_WINDOW);
        assert!(authenticate(&made, &signature, Some(&key.public_key()), edge).is_ok());
    }
}
