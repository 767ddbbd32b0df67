//! Coalescing protocol messages into fewer sequencer submissions.
//!
//! A participant's confirmation responses and a mediator's verdicts each used to cost one
//! `Send`: one gRPC call, one signature check of the session, one event row, and one delivery
//! per recipient. Under load a writer batch produces dozens of them at once, so they go out
//! as one submission whose envelopes are the messages (each with its own recipients); a
//! recipient receives one event holding the envelopes addressed to it.
//!
//! A group of one keeps the message's own id, so a lone message is deduplicated by the
//! sequencer exactly as before. A group of several gets an id derived from every member's
//! id (`batch-<first member>-<count>-<hash>`): a retry of the same group is deduplicated,
//! while a replay after a restart may group differently and deliver a message twice. That is
//! safe because every receiver ignores a second copy: the mediator a second response of a
//! participant to a request, a participant a verdict for a request it no longer has pending.

use crate::ids::MessageId;
use crate::sequencing::Envelope;

/// Bounds on one coalesced submission: far below the sequencer's own limits (1,000
/// envelopes, 4 MiB by default), so that a group is never refused for its size and one slow
/// send holds back a bounded number of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceLimits {
    pub max_envelopes: usize,
    pub max_bytes: usize,
}

impl CoalesceLimits {
    pub const DEFAULT: CoalesceLimits = CoalesceLimits {
        max_envelopes: 64,
        max_bytes: 256 * 1024,
    };
}

/// One message to send: its own id and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub message_id: MessageId,
    pub envelope: Envelope,
}

/// What goes out as one submission: its message id, the envelopes, and the ids of the
/// messages it carries (for logs and for marking them sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coalesced {
    pub message_id: MessageId,
    pub envelopes: Vec<Envelope>,
    pub members: Vec<MessageId>,
}

fn envelope_bytes(envelope: &Envelope) -> usize {
    envelope.payload.len()
        + envelope
            .recipients
            .iter()
            .map(|r| r.as_str().len())
            .sum::<usize>()
}

/// Groups `messages`, in order, into submissions within `limits`. A message larger than
/// `max_bytes` on its own still goes out, alone.
pub fn coalesce(messages: Vec<Outgoing>, limits: CoalesceLimits) -> Vec<Coalesced> {
    let mut groups: Vec<Vec<Outgoing>> = Vec::new();
    let mut current: Vec<Outgoing> = Vec::new();
    let mut current_bytes = 0usize;
    for message in messages {
        let bytes = envelope_bytes(&message.envelope);
        let full = current.len() >= limits.max_envelopes.max(1)
            || (!current.is_empty() && current_bytes + bytes > limits.max_bytes);
        if full {
            groups.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += bytes;
        current.push(message);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups.into_iter().map(group).collect()
}

fn group(messages: Vec<Outgoing>) -> Coalesced {
    let members: Vec<MessageId> = messages.iter().map(|m| m.message_id.clone()).collect();
    let message_id = match members.as_slice() {
        [only] => only.clone(),
        _ => batch_id(&members),
    };
    Coalesced {
        message_id,
        envelopes: messages.into_iter().map(|m| m.envelope).collect(),
        members,
    }
}

/// `batch-<first member's id>-<count>-<128 bits of BLAKE3 over the member ids>`: the same
/// members in the same order always give the same id.
///
/// The first member leads because senders make their ids in clock order (a response or
/// verdict names its request's time, a submission its submitter's clock): the sequencer's
/// deduplication index, keyed by sender and message id, then takes a sender's groups at its
/// end rather than one random page each. Cut to [`BATCH_ID_FIRST_MEMBER_BYTES`] so the id
/// stays within [`crate::ids::MAX_ID_LEN`]; the hash still names every member.
fn batch_id(members: &[MessageId]) -> MessageId {
    let mut hasher = blake3::Hasher::new();
    for id in members {
        hasher.update(id.as_str().as_bytes());
        // A separator no id contains, so ["ab","c"] and ["a","bc"] differ.
        hasher.update(b"\n");
    }
    let hash = hasher.finalize().to_hex();
    // Message ids are ASCII (`ids::validate`), so any byte offset is a character boundary.
    let first = members.first().map_or("", |id| id.as_str());
    let first = &first[..first.len().min(BATCH_ID_FIRST_MEMBER_BYTES)];
    MessageId::new(format!("batch-{first}-{}-{}", members.len(), &hash[..32]))
        .expect("a message id's characters, digits, hex and dashes make a valid message id")
}

/// How much of the first member's id a group's id repeats: with `batch-`, the count and the
/// hash, at most 6 + 160 + 1 + 20 + 1 + 32 = 220 bytes.
const BATCH_ID_FIRST_MEMBER_BYTES: usize = 160;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MemberId;
    use proptest::prelude::*;

    fn message(id: &str, payload_bytes: usize) -> Outgoing {
        Outgoing {
            message_id: MessageId::new(id).unwrap(),
            envelope: Envelope {
                recipients: vec![MemberId::new("mediator").unwrap()],
                payload: vec![b'x'; payload_bytes],
            },
        }
    }

    #[test]
    fn a_lone_message_keeps_its_own_id() {
        let groups = coalesce(vec![message("verdict-7", 10)], CoalesceLimits::DEFAULT);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].message_id.as_str(), "verdict-7");
        assert_eq!(groups[0].envelopes.len(), 1);
    }

    #[test]
    fn several_messages_share_one_submission_with_a_derived_id() {
        let messages = vec![message("r-1", 10), message("r-2", 10), message("r-3", 10)];
        let groups = coalesce(messages.clone(), CoalesceLimits::DEFAULT);
        assert_eq!(groups.len(), 1);
        let id = groups[0].message_id.as_str();
        assert!(id.starts_with("batch-r-1-3-"), "{id}");
        assert_eq!(groups[0].members.len(), 3);
        // Deterministic: a retry of the same group is deduplicated by the sequencer.
        assert_eq!(coalesce(messages, CoalesceLimits::DEFAULT), groups);
        // Another membership, another id.
        let other = coalesce(
            vec![message("r-1", 10), message("r-2", 10), message("r-4", 10)],
            CoalesceLimits::DEFAULT,
        );
        assert_ne!(other[0].message_id, groups[0].message_id);
        // The separator keeps ["ab","c"] and ["a","bc"] apart.
        let ab_c = coalesce(
            vec![message("ab", 1), message("c", 1)],
            CoalesceLimits::DEFAULT,
        );
        let a_bc = coalesce(
            vec![message("a", 1), message("bc", 1)],
            CoalesceLimits::DEFAULT,
        );
        assert_ne!(ab_c[0].message_id, a_bc[0].message_id);
    }

    #[test]
    fn group_ids_sort_by_their_first_member_and_stay_within_the_id_limit() {
        let group = |first: &str, second: &str| {
            let groups = coalesce(
                vec![message(first, 1), message(second, 1)],
                CoalesceLimits::DEFAULT,
            );
            groups[0].message_id.clone()
        };
        // Members in clock order give groups in clock order, whatever the rest hashes to.
        let earlier = group("resp-1700000000000001-p1", "resp-1700000000000009-p1");
        let later = group("resp-1700000000000002-p1", "resp-1700000000000003-p1");
        assert!(earlier < later, "{earlier} {later}");
        // A first member of the longest id allowed is cut, and the group id is still valid
        // and still tells groups that differ only past the cut apart.
        let long = "x".repeat(crate::ids::MAX_ID_LEN);
        let a = group(&long, "a");
        let b = group(&long, "b");
        assert!(a.as_str().len() <= crate::ids::MAX_ID_LEN, "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn an_oversized_message_goes_out_alone() {
        let limits = CoalesceLimits {
            max_envelopes: 64,
            max_bytes: 100,
        };
        let groups = coalesce(
            vec![message("a", 10), message("big", 500), message("b", 10)],
            limits,
        );
        let sizes: Vec<usize> = groups.iter().map(|g| g.envelopes.len()).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(groups[1].message_id.as_str(), "big");
    }

    proptest! {
        /// Every message goes out exactly once, in order, and no group breaks a limit (a
        /// group over the byte limit holds exactly one message).
        #[test]
        fn groups_keep_every_message_in_order_within_the_limits(
            sizes in proptest::collection::vec(0usize..400, 0..300),
            max_envelopes in 1usize..80,
            max_bytes in 1usize..2_000,
        ) {
            let messages: Vec<Outgoing> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| message(&format!("m-{i}"), size))
                .collect();
            let limits = CoalesceLimits { max_envelopes, max_bytes };
            let groups = coalesce(messages.clone(), limits);
            let flattened: Vec<MessageId> =
                groups.iter().flat_map(|g| g.members.clone()).collect();
            let expected: Vec<MessageId> =
                messages.iter().map(|m| m.message_id.clone()).collect();
            prop_assert_eq!(flattened, expected);
            for group in &groups {
                prop_assert!(!group.envelopes.is_empty());
                prop_assert!(group.envelopes.len() <= max_envelopes);
                let bytes: usize = group.envelopes.iter().map(envelope_bytes).sum();
                prop_assert!(bytes <= max_bytes || group.envelopes.len() == 1);
                prop_assert_eq!(group.envelopes.len(), group.members.len());
            }
        }
    }
}
