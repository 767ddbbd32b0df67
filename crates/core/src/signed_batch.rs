//! One signature for several signed messages: a Merkle tree over their bytes.
//!
//! The mediator sends its verdicts coalesced, dozens per submission at load, and each used to
//! carry a signature of its own: one ed25519 signature per verdict, and one verification per
//! verdict by each of its informee participants, about a tenth of the synchronizer's CPU at
//! saturation (issue 14). Now the signer hashes every message of a group into a Merkle tree
//! and signs only the root; each message carries its path to the root ([`BatchProof`]). A
//! recipient still checks each message on its own (it receives only those addressed to it,
//! never its neighbours'), but the signature check is over the root, so a recipient that
//! remembers the roots it has verified ([`VerifiedRoots`]) checks one signature per group.
//!
//! Leaves and inner nodes are hashed under different BLAKE3 contexts, so no inner node can pass
//! for a leaf; the signed bytes start with a zero byte, which no JSON text does, so a root
//! signature can never pass for a single message's signature of the same purpose. A level with
//! an odd number of nodes carries its last node up unchanged, and the count is part of the
//! signed bytes, so a proof names exactly one position in exactly one tree.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, Signature, SigningPurpose};

/// The largest group one root signs: twelve levels, far above a coalesced submission (64).
pub const MAX_BATCH_MESSAGES: u32 = 4_096;

const LEAF_CONTEXT: &str = "meridian/v1 signed-batch leaf";
const NODE_CONTEXT: &str = "meridian/v1 signed-batch node";

pub type Hash = [u8; 32];

/// Where one message sits in its group's tree: enough to recompute the root from the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchProof {
    /// The message's position in the group, from 0.
    pub index: u32,
    /// The group's size.
    pub count: u32,
    /// The sibling hashes (hex) from the leaf up, one per level that has a sibling.
    pub path: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error(
        "batch proof names message {index} of {count} (at most {MAX_BATCH_MESSAGES} in a batch)"
    )]
    OutOfRange { index: u32, count: u32 },
    #[error("batch proof has {got} sibling hashes, the tree needs {expected}")]
    PathLength { got: usize, expected: usize },
    #[error("batch proof has a sibling hash that is not 32 bytes of hex")]
    BadHash,
}

fn leaf_hash(message: &[u8]) -> Hash {
    blake3::Hasher::new_derive_key(LEAF_CONTEXT)
        .update(message)
        .finalize()
        .into()
}

fn node_hash(left: &Hash, right: &Hash) -> Hash {
    blake3::Hasher::new_derive_key(NODE_CONTEXT)
        .update(left)
        .update(right)
        .finalize()
        .into()
}

/// The bytes the signer signs for a group: a zero byte (never the first byte of a JSON text),
/// the group's size and the root.
pub fn root_message(count: u32, root: &Hash) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 4 + root.len());
    bytes.push(0);
    bytes.extend_from_slice(&count.to_be_bytes());
    bytes.extend_from_slice(root);
    bytes
}

/// The root of a group of messages and each message's proof, in order. `messages` must hold
/// between 1 and [`MAX_BATCH_MESSAGES`] messages.
pub fn build(messages: &[&[u8]]) -> (Hash, Vec<BatchProof>) {
    assert!(
        !messages.is_empty() && messages.len() <= MAX_BATCH_MESSAGES as usize,
        "a signed batch holds 1 to {MAX_BATCH_MESSAGES} messages"
    );
    let count = messages.len() as u32;
    let mut level: Vec<Hash> = messages.iter().map(|m| leaf_hash(m)).collect();
    let mut paths: Vec<Vec<String>> = vec![Vec::new(); messages.len()];
    // Each message's node on the current level.
    let mut position: Vec<usize> = (0..messages.len()).collect();
    while level.len() > 1 {
        for (path, at) in paths.iter_mut().zip(position.iter_mut()) {
            let sibling = *at ^ 1;
            if sibling < level.len() {
                path.push(hex::encode(level[sibling]));
            }
            *at /= 2;
        }
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => node_hash(left, right),
                [alone] => *alone,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    let proofs = paths
        .into_iter()
        .enumerate()
        .map(|(index, path)| BatchProof {
            index: index as u32,
            count,
            path,
        })
        .collect();
    (level[0], proofs)
}

impl BatchProof {
    /// The root of the tree `message` sits in at this proof's position.
    pub fn root(&self, message: &[u8]) -> Result<Hash, ProofError> {
        if self.count == 0 || self.count > MAX_BATCH_MESSAGES || self.index >= self.count {
            return Err(ProofError::OutOfRange {
                index: self.index,
                count: self.count,
            });
        }
        let expected = siblings(self.index, self.count);
        if self.path.len() != expected {
            return Err(ProofError::PathLength {
                got: self.path.len(),
                expected,
            });
        }
        let mut hash = leaf_hash(message);
        let mut siblings = self.path.iter();
        let (mut at, mut width) = (self.index, self.count);
        while width > 1 {
            if at ^ 1 < width {
                let sibling = siblings.next().ok_or(ProofError::BadHash)?;
                let sibling = decode_hash(sibling)?;
                hash = if at % 2 == 0 {
                    node_hash(&hash, &sibling)
                } else {
                    node_hash(&sibling, &hash)
                };
            }
            at /= 2;
            width = width.div_ceil(2);
        }
        Ok(hash)
    }
}

/// How many siblings the path of message `index` of `count` has.
fn siblings(index: u32, count: u32) -> usize {
    let (mut at, mut width, mut n) = (index, count, 0);
    while width > 1 {
        if at ^ 1 < width {
            n += 1;
        }
        at /= 2;
        width = width.div_ceil(2);
    }
    n
}

fn decode_hash(text: &str) -> Result<Hash, ProofError> {
    let bytes = hex::decode(text).map_err(|_| ProofError::BadHash)?;
    bytes.try_into().map_err(|_| ProofError::BadHash)
}

/// The batch roots a verifier has checked the signature of, so that the other messages of
/// the same group cost a hash path instead of a signature check. Bounded: the oldest is
/// forgotten first (a forgotten root is only checked again).
#[derive(Debug)]
pub struct VerifiedRoots {
    entries: VecDeque<VerifiedRoot>,
    capacity: usize,
}

/// What a check proved: this key signed this root with this signature for this purpose. All
/// four are the key of the memory, so a root remembered for one signer, or for verdicts,
/// proves nothing for another signer, or for responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRoot {
    pub key: PublicKey,
    pub purpose: SigningPurpose,
    pub root_message: Vec<u8>,
    pub signature: Signature,
}

impl VerifiedRoots {
    /// Roots kept by default: a few coalesced submissions' worth per signer.
    pub const DEFAULT_CAPACITY: usize = 64;

    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    pub fn contains(&self, root: &VerifiedRoot) -> bool {
        self.entries.iter().rev().any(|known| known == root)
    }

    /// Remembers a root whose signature was just checked.
    pub fn insert(&mut self, root: VerifiedRoot) {
        if self.contains(&root) {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(root);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Default for VerifiedRoots {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn messages(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect()
    }

    fn refs(messages: &[Vec<u8>]) -> Vec<&[u8]> {
        messages.iter().map(Vec::as_slice).collect()
    }

    proptest! {
        #[test]
        fn every_proof_leads_its_own_message_to_the_root(n in 1usize..200) {
            let messages = messages(n);
            let (root, proofs) = build(&refs(&messages));
            prop_assert_eq!(proofs.len(), n);
            for (message, proof) in messages.iter().zip(&proofs) {
                prop_assert_eq!(proof.root(message), Ok(root));
            }
        }

        #[test]
        fn a_proof_does_not_lead_another_message_to_the_root(n in 2usize..100, pick in 0usize..100) {
            let messages = messages(n);
            let (root, proofs) = build(&refs(&messages));
            let (a, b) = (pick % n, (pick + 1) % n);
            prop_assert_ne!(proofs[a].root(&messages[b]), Ok(root));
        }
    }

    #[test]
    fn a_group_of_one_is_its_leaf_with_an_empty_path() {
        let (root, proofs) = build(&[b"{}"]);
        assert_eq!(root, leaf_hash(b"{}"));
        assert!(proofs[0].path.is_empty());
    }

    #[test]
    fn a_moved_index_a_changed_count_or_a_bad_path_is_refused() {
        let messages = messages(5);
        let (root, proofs) = build(&refs(&messages));
        let mut moved = proofs[2].clone();
        moved.index = 3;
        assert_ne!(moved.root(&messages[2]), Ok(root));
        let mut beyond = proofs[4].clone();
        beyond.index = 5;
        assert_eq!(
            beyond.root(&messages[4]),
            Err(ProofError::OutOfRange { index: 5, count: 5 })
        );
        let mut short = proofs[0].clone();
        short.path.pop();
        assert!(matches!(
            short.root(&messages[0]),
            Err(ProofError::PathLength { .. })
        ));
        let mut garbage = proofs[0].clone();
        garbage.path[0] = "zz".into();
        assert_eq!(garbage.root(&messages[0]), Err(ProofError::BadHash));
        let mut huge = proofs[0].clone();
        huge.count = MAX_BATCH_MESSAGES + 1;
        assert!(matches!(
            huge.root(&messages[0]),
            Err(ProofError::OutOfRange { .. })
        ));
    }

    #[test]
    fn an_inner_node_cannot_pass_for_a_leaf() {
        let messages = messages(2);
        let (root, _) = build(&refs(&messages));
        let inner: Vec<u8> = [leaf_hash(&messages[0]), leaf_hash(&messages[1])].concat();
        assert_ne!(leaf_hash(&inner), root);
    }

    #[test]
    fn the_memory_is_bounded_and_keyed_by_key_purpose_root_and_signature() {
        use crate::crypto::SigningKey;
        let key = SigningKey::generate();
        let root = |i: u8| {
            let message = root_message(2, &[i; 32]);
            VerifiedRoot {
                key: key.public_key(),
                purpose: SigningPurpose::Verdict,
                signature: key.sign(SigningPurpose::Verdict, &message),
                root_message: message,
            }
        };
        let mut memory = VerifiedRoots::new(2);
        memory.insert(root(1));
        memory.insert(root(2));
        memory.insert(root(2));
        assert_eq!(memory.len(), 2);
        memory.insert(root(3));
        assert_eq!(memory.len(), 2);
        assert!(!memory.contains(&root(1)));
        assert!(memory.contains(&root(3)));
        let other_signer = VerifiedRoot {
            key: SigningKey::generate().public_key(),
            ..root(3)
        };
        assert!(!memory.contains(&other_signer));
        let other_purpose = VerifiedRoot {
            purpose: SigningPurpose::ConfirmationResponse,
            ..root(3)
        };
        assert!(!memory.contains(&other_purpose));
    }
}
