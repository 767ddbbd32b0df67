//! ed25519 keys and signatures with domain separation.
//!
//! Every signature covers `tag || 0x00 || message`, where the tag names the purpose. A signature
//! made for one purpose (say, authenticating to a sequencer) can therefore never be replayed as
//! another (say, a confirmation response). We sign the exact bytes that travel, because protobuf
//! re-encoding is not canonical.

use std::fmt;

use ed25519_dalek::{Signer, Verifier};

use crate::ids::MemberId;

/// Length of an ed25519 public key, private seed and (half a) signature.
pub const KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("public key must be {KEY_LEN} bytes, got {0}")]
    PublicKeyLength(usize),
    #[error("public key is not a valid ed25519 point")]
    InvalidPublicKey,
    #[error("signature must be {SIGNATURE_LEN} bytes, got {0}")]
    SignatureLength(usize),
    #[error("signature does not verify")]
    BadSignature,
    #[error("secret key must be {KEY_LEN} bytes of hex: {0}")]
    BadSecretKey(String),
}

/// What a signature is for; part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningPurpose {
    /// A member proving its identity to a sequencer by signing a challenge nonce.
    SequencerAuthentication,
    /// The synchronizer owner authorising a topology transaction.
    TopologyTransaction,
    /// A participant's confirmation response to the mediator.
    ConfirmationResponse,
    /// The mediator's verdict on a request.
    Verdict,
    /// A participant asking the topology manager to host a party (see
    /// [`crate::topology::HostingRequest`]).
    HostingRequest,
}

impl SigningPurpose {
    fn tag(self) -> &'static [u8] {
        match self {
            SigningPurpose::SequencerAuthentication => b"meridian/v1/sequencer-authentication",
            SigningPurpose::TopologyTransaction => b"meridian/v1/topology-transaction",
            SigningPurpose::ConfirmationResponse => b"meridian/v1/confirmation-response",
            SigningPurpose::Verdict => b"meridian/v1/verdict",
            SigningPurpose::HostingRequest => b"meridian/v1/hosting-request",
        }
    }
}

fn framed(purpose: SigningPurpose, message: &[u8]) -> Vec<u8> {
    let tag = purpose.tag();
    let mut bytes = Vec::with_capacity(tag.len() + 1 + message.len());
    bytes.extend_from_slice(tag);
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// The bytes a member signs to authenticate: its id and the sequencer's nonce, length-prefixed
/// so that no (member, nonce) pair can be confused with another.
pub fn authentication_challenge(member: &MemberId, nonce: &[u8]) -> Vec<u8> {
    let member = member.as_str().as_bytes();
    let mut bytes = Vec::with_capacity(8 + member.len() + nonce.len());
    bytes.extend_from_slice(&(member.len() as u32).to_be_bytes());
    bytes.extend_from_slice(member);
    bytes.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    bytes.extend_from_slice(nonce);
    bytes
}

/// A member's signing key. Debug output never shows the secret.
#[derive(Clone)]
pub struct SigningKey(ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SigningKey")
            .field(&self.public_key())
            .finish()
    }
}

impl SigningKey {
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng))
    }

    pub fn from_seed(seed: [u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// Parses the 64-hex-digit seed format used in key files and configs.
    pub fn from_hex(hex_seed: &str) -> Result<Self, CryptoError> {
        let bytes =
            hex::decode(hex_seed.trim()).map_err(|e| CryptoError::BadSecretKey(e.to_string()))?;
        let seed: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| CryptoError::BadSecretKey(format!("got {} bytes", b.len())))?;
        Ok(Self::from_seed(seed))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, purpose: SigningPurpose, message: &[u8]) -> Signature {
        Signature(self.0.sign(&framed(purpose, message)))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.as_bytes()))
    }
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::PublicKeyLength(bytes.len()))?;
        ed25519_dalek::VerifyingKey::from_bytes(&array)
            .map(Self)
            .map_err(|_| CryptoError::InvalidPublicKey)
    }

    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::InvalidPublicKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn verify(
        &self,
        purpose: SigningPurpose,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        self.0
            .verify(&framed(purpose, message), &signature.0)
            .map_err(|_| CryptoError::BadSignature)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; SIGNATURE_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::SignatureLength(bytes.len()))?;
        Ok(Self(ed25519_dalek::Signature::from_bytes(&array)))
    }

    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0.to_bytes()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::SignatureLength(0))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_round_trip() {
        let key = SigningKey::generate();
        let member = MemberId::new("p1").unwrap();
        let msg = authentication_challenge(&member, b"nonce");
        let sig = key.sign(SigningPurpose::SequencerAuthentication, &msg);
        let public = PublicKey::from_bytes(&key.public_key().to_bytes()).unwrap();
        assert_eq!(
            public.verify(SigningPurpose::SequencerAuthentication, &msg, &sig),
            Ok(())
        );
        let other = authentication_challenge(&member, b"other nonce");
        assert_eq!(
            public.verify(SigningPurpose::SequencerAuthentication, &other, &sig),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn hex_round_trip_and_errors() {
        let key = SigningKey::generate();
        let again = SigningKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.public_key(), key.public_key());
        assert!(SigningKey::from_hex("abcd").is_err());
        assert!(SigningKey::from_hex("zz").is_err());
        assert_eq!(
            PublicKey::from_bytes(&[1, 2]),
            Err(CryptoError::PublicKeyLength(2))
        );
        assert_eq!(
            Signature::from_bytes(&[0; 3]),
            Err(CryptoError::SignatureLength(3))
        );
    }

    #[test]
    fn challenge_framing_is_unambiguous() {
        let a = authentication_challenge(&MemberId::new("ab").unwrap(), b"c");
        let b = authentication_challenge(&MemberId::new("a").unwrap(), b"bc");
        assert_ne!(a, b);
    }
}
