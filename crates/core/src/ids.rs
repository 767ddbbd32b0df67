//! Newtype identifiers. Each is validated once at the edge (gRPC, config, database) so the rest
//! of the code can rely on the invariants without re-checking strings.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest identifier we accept; keeps index keys and log lines bounded.
pub const MAX_ID_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is {len} bytes long; the limit is {MAX_ID_LEN}")]
    TooLong { kind: &'static str, len: usize },
    #[error("{kind} {value:?} contains {bad:?}; allowed are ASCII letters, digits and . _ - : /")]
    BadCharacter {
        kind: &'static str,
        value: String,
        bad: char,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
        });
    }
    // Bytes, not characters: every id of every message passes here, and only a bad id needs
    // its character. All bytes before the first bad one are ASCII, so that one starts a
    // character, which the error names.
    match value.bytes().position(|b| !is_id_byte(b)) {
        None => Ok(()),
        Some(at) => Err(IdError::BadCharacter {
            kind,
            value: value.to_owned(),
            bad: value[at..]
                .chars()
                .next()
                .expect("`at` indexes a byte of `value`"),
        }),
    }
}

fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-' | b':' | b'/')
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(value: &str) -> Result<Self, IdError> {
                Self::new(value)
            }
        }
    };
}

string_id!(
    /// A synchronizer member: a participant, mediator, topology manager or sequencer client.
    MemberId,
    "member id"
);
string_id!(
    /// A sender-chosen id for one submission; the sequencer's deduplication key with the sender.
    MessageId,
    "message id"
);

string_id!(
    /// A party: the ledger identity on whose behalf contracts are signed and observed.
    PartyId,
    "party id"
);
string_id!(
    /// A participant node. Its sequencer member id is the same string.
    ParticipantId,
    "participant id"
);
string_id!(
    /// An application user submitting commands; part of the deduplication key.
    UserId,
    "user id"
);
string_id!(
    /// An application-chosen command id; with user and act-as parties the deduplication key.
    CommandId,
    "command id"
);
string_id!(
    /// A contract, derived deterministically from the transaction seed and node position.
    ContractId,
    "contract id"
);
string_id!(
    /// A template name, e.g. `Iou`.
    TemplateId,
    "template id"
);
string_id!(
    /// A committed transaction: derived from its request id, identical on every participant.
    TransactionId,
    "transaction id"
);

impl ParticipantId {
    /// The participant's identity as a sequencer member.
    pub fn as_member(&self) -> MemberId {
        MemberId(self.0.clone())
    }

    pub fn from_member(member: &MemberId) -> Self {
        ParticipantId(member.0.clone())
    }
}

/// A position in one participant's ledger: strictly increasing per committed transaction,
/// local to that participant.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
pub struct LedgerOffset(pub u64);

impl fmt::Display for LedgerOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The index `i` of a sequencer instance among `n`: it only issues timestamps `t` with
/// `t % n == i`, which makes timestamps unique across instances without coordination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceIndex(pub u32);

impl fmt::Display for InstanceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        assert_eq!(
            MemberId::new("participant::p1").unwrap().as_str(),
            "participant::p1"
        );
        assert!(MessageId::new("cmd-00001/retry.2").is_ok());
    }

    #[test]
    fn rejects_empty_long_and_odd_ids() {
        assert_eq!(MemberId::new(""), Err(IdError::Empty { kind: "member id" }));
        assert!(matches!(
            MemberId::new("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { .. })
        ));
        let err = MemberId::new("bad id").unwrap_err();
        assert!(err.to_string().contains("' '"), "{err}");
        // A character of several bytes is named whole, wherever it stands.
        for (value, bad) in [("café", 'é'), ("ü", 'ü'), ("a-€-b", '€'), ("ok\u{0}", '\0')] {
            assert_eq!(
                PartyId::new(value),
                Err(IdError::BadCharacter {
                    kind: "party id",
                    value: value.to_owned(),
                    bad
                }),
                "{value:?}"
            );
        }
    }
}
