//! Ledger API authorization (issue 11, items 2 and 7): the claims a participant's Ledger API
//! token carries, their verification and the per-call permission checks, and the development
//! side (minting tokens, generating a key pair, refusing private key files others can read).
//!
//! A crate of its own, not a module of the participant: the participant verifies, while the
//! `meridian token` command and the lab (`up`, `demo`, the workload and the benches) mint, and
//! neither of those should depend on the participant node. Everything here is sans-I/O except
//! reading and writing key files ([`keys`]): the verifier takes the current time as an
//! argument, so expiry and lifetime are tested without clocks.
//!
//! - [`verify`]: [`Verifier`] turns an `authorization` header value into [`Authorized`] claims
//!   or an [`Unauthenticated`] reason; [`Authorized`] answers the per-call questions (may act
//!   as, may read as, is the user, is admin) with [`PermissionDenied`].
//! - [`mint`]: [`mint::TokenMinter`] signs [`LedgerClaims`] with a private key file.
//! - [`keys`]: key pair generation (EdDSA), JWKS and PEM output, the 0600 check.

pub mod keys;
pub mod mint;
pub mod verify;

use serde::{Deserialize, Serialize};

pub use verify::{
    Authorized, KeySource, PermissionDenied, Unauthenticated, Verifier, VerifierError,
    VerifierSettings,
};

/// The algorithms a Ledger API key may use. Symmetric (HS*) keys are not offered: whoever
/// verifies could also mint.
pub const SUPPORTED_ALGORITHMS: [jsonwebtoken::Algorithm; 3] = [
    jsonwebtoken::Algorithm::EdDSA,
    jsonwebtoken::Algorithm::ES256,
    jsonwebtoken::Algorithm::RS256,
];

/// The JWT claims of a Ledger API token. Every field is optional on the wire so that a token
/// lacking one is refused with a message naming it, not a generic parse error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerClaims {
    /// The participant the token is for (its id, or the configured audience).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// The user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Parties the user may act as (submit for).
    #[serde(rename = "actAs", default)]
    pub act_as: Vec<String>,
    /// Parties the user may read as (besides `actAs`).
    #[serde(rename = "readAs", default)]
    pub read_as: Vec<String>,
    /// Participant administration (AllocateParty).
    #[serde(default)]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// `aud` is one string or a list of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

/// Seconds since the Unix epoch, for callers that verify or mint now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
