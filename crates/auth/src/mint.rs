//! Minting development tokens (`meridian token`, the lab, the benches): a private key file
//! (PEM; EdDSA, ES256 or RS256, told apart by trying the key) signs [`LedgerClaims`]. The key
//! id in the header is derived from the public key as [`crate::keys::key_id`] does for the
//! JWKS that `keys::write_key_pair` writes, so a participant pointed at that JWKS finds it.

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};

use crate::keys::{key_id, pem_decode, read_private_key, KeyFileError};
use crate::{Audience, LedgerClaims};

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    #[error("key file {path} holds no EdDSA (Ed25519 PKCS#8), ES256 (P-256 PKCS#8) or RS256 (RSA) private key")]
    UnknownKey { path: String },
    #[error("signing the token failed: {0}")]
    Sign(String),
    #[error("invalid lifetime {0:?}: use a number with a unit, e.g. 90s, 15m, 1h, 2d")]
    Lifetime(String),
}

/// What a token grants, before it is signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenGrant {
    /// The participant (audience).
    pub participant: String,
    pub user: String,
    pub act_as: Vec<String>,
    pub read_as: Vec<String>,
    pub admin: bool,
    pub lifetime_s: u64,
}

impl TokenGrant {
    /// The claims of a token issued at `now_s`.
    pub fn claims(&self, now_s: u64) -> LedgerClaims {
        LedgerClaims {
            aud: Some(Audience::One(self.participant.clone())),
            sub: Some(self.user.clone()),
            act_as: self.act_as.clone(),
            read_as: self.read_as.clone(),
            admin: self.admin,
            exp: Some(now_s.saturating_add(self.lifetime_s)),
            iat: Some(now_s),
            nbf: None,
        }
    }
}

/// A loaded signing key.
pub struct TokenMinter {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: String,
}

impl std::fmt::Debug for TokenMinter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMinter")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenMinter {
    /// Loads a private key file (refused when group or others can read it).
    pub fn from_file(path: &Path) -> Result<Self, MintError> {
        let text = read_private_key(path)?;
        Self::from_pem(&text).ok_or_else(|| MintError::UnknownKey {
            path: path.display().to_string(),
        })
    }

    /// A private key's PEM text: Ed25519 or P-256 PKCS#8, or RSA (PKCS#1 or PKCS#8).
    pub fn from_pem(text: &str) -> Option<Self> {
        let (label, der) = pem_decode(text).ok()?;
        let pem = text.as_bytes();
        let rng = ring::rand::SystemRandom::new();
        let (algorithm, public, key) = if label == "RSA PRIVATE KEY" {
            let pair = RsaKeyPair::from_der(&der).ok()?;
            (
                Algorithm::RS256,
                pair.public().as_ref().to_vec(),
                EncodingKey::from_rsa_pem(pem).ok()?,
            )
        } else if label != "PRIVATE KEY" {
            return None;
        } else if let Ok(pair) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            (
                Algorithm::EdDSA,
                pair.public_key().as_ref().to_vec(),
                EncodingKey::from_ed_der(&der),
            )
        } else if let Ok(pair) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
        {
            (
                Algorithm::ES256,
                pair.public_key().as_ref().to_vec(),
                EncodingKey::from_ec_der(&der),
            )
        } else if let Ok(pair) = RsaKeyPair::from_pkcs8(&der) {
            (
                Algorithm::RS256,
                pair.public().as_ref().to_vec(),
                EncodingKey::from_rsa_pem(pem).ok()?,
            )
        } else {
            return None;
        };
        Some(Self {
            key,
            algorithm,
            kid: key_id(&public),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The `kid` put in every token's header.
    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// Uses `kid` in the header instead of the derived key id (for a JWKS written elsewhere).
    pub fn with_key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// Signs claims as they are.
    pub fn sign(&self, claims: &LedgerClaims) -> Result<String, MintError> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| MintError::Sign(e.to_string()))
    }

    /// A token for `grant`, issued at `now_s`.
    pub fn mint(&self, grant: &TokenGrant, now_s: u64) -> Result<String, MintError> {
        self.sign(&grant.claims(now_s))
    }
}

/// Parses a lifetime such as `90s`, `15m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_lifetime_s(text: &str) -> Result<u64, MintError> {
    let text = text.trim();
    let error = || MintError::Lifetime(text.to_owned());
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| error())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(error()),
    };
    let lifetime_s = number.checked_mul(scale).ok_or_else(error)?;
    if lifetime_s == 0 {
        return Err(error());
    }
    Ok(lifetime_s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_parse_with_units() {
        assert_eq!(parse_lifetime_s("90").expect("s"), 90);
        assert_eq!(parse_lifetime_s("15m").expect("m"), 900);
        assert_eq!(parse_lifetime_s("1h").expect("h"), 3_600);
        assert_eq!(parse_lifetime_s("2d").expect("d"), 172_800);
        for bad in ["", "h", "1w", "0s", "-1h", "99999999999999999999d"] {
            assert!(parse_lifetime_s(bad).is_err(), "{bad}");
        }
    }
}
