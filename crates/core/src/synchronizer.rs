//! The synchronizer's identity, [`SynchronizerId`]: a short fingerprint of the owner's public
//! key, which every member already configures (the topology manager holds the key itself). It
//! needs no configuration of its own and cannot drift from what members verify topology
//! against, so two deployments (two owners) always have different ids, and every node of one
//! deployment derives the same one.

use std::fmt;

use crate::crypto::PublicKey;

/// What a synchronizer id starts with, so that it reads as one in logs and database rows.
const PREFIX: &str = "sync-";
/// Hex digits after the prefix: 64 bits of the fingerprint, plenty to tell deployments apart.
const FINGERPRINT_HEX_DIGITS: usize = 16;
/// BLAKE3's key-derivation context: domain separation, so the fingerprint can never equal a
/// digest of the same key taken for another purpose.
const FINGERPRINT_CONTEXT: &str = "meridian 2026 synchronizer id v1";

/// A synchronizer, named by the fingerprint of its owner's public key: `sync-` and 16 lowercase
/// hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SynchronizerId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a synchronizer id (`{PREFIX}` and {FINGERPRINT_HEX_DIGITS} lowercase hex digits)"
)]
pub struct BadSynchronizerId(String);

impl SynchronizerId {
    /// The id of the synchronizer whose owner holds `owner`'s private key.
    pub fn of_owner(owner: &PublicKey) -> Self {
        let digest = blake3::derive_key(FINGERPRINT_CONTEXT, &owner.to_bytes());
        let hex = hex::encode(digest);
        Self(format!("{PREFIX}{}", &hex[..FINGERPRINT_HEX_DIGITS]))
    }

    /// Checks an id read back (from a database row, say).
    pub fn parse(text: &str) -> Result<Self, BadSynchronizerId> {
        let well_formed = text.strip_prefix(PREFIX).is_some_and(|digits| {
            digits.len() == FINGERPRINT_HEX_DIGITS
                && digits
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        });
        if well_formed {
            Ok(Self(text.to_owned()))
        } else {
            Err(BadSynchronizerId(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SynchronizerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;

    #[test]
    fn one_owner_one_id_and_owners_apart() {
        let owner = SigningKey::generate().public_key();
        let other = SigningKey::generate().public_key();
        let id = SynchronizerId::of_owner(&owner);
        assert_eq!(id, SynchronizerId::of_owner(&owner));
        assert_ne!(id, SynchronizerId::of_owner(&other));
        assert_eq!(id.as_str().len(), PREFIX.len() + FINGERPRINT_HEX_DIGITS);
        assert_eq!(SynchronizerId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn parse_refuses_what_of_owner_never_makes() {
        for bad in [
            "",
            "sync-",
            "sync-0123456789abcde",
            "sync-0123456789abcdef0",
            "sync-0123456789ABCDEF",
            "sink-0123456789abcdef",
        ] {
            assert!(SynchronizerId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
