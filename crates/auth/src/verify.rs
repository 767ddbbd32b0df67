//! Verifying a Ledger API bearer token, sans I/O: the header value and the current time in,
//! the user's [`Authorized`] claims or the reason it is [`Unauthenticated`] out. The per-call
//! checks on [`Authorized`] answer [`PermissionDenied`] naming the party or claim missing.
//!
//! Time-dependent checks (expiry, not-before, issued-at, the lifetime bound) are done here with
//! the caller's `now_s` rather than by `jsonwebtoken`, which reads the system clock; the
//! library checks the shape and the signature. No message ever contains the token: only the
//! claim that failed, and at most a short, printable key id.
//!
//! Verified tokens are cached (bounded, keyed by the BLAKE3 hash of the token, never the token
//! itself): a signature check costs 0.15-0.4 ms per call on a busy 2-core machine, a cache hit
//! a few microseconds, and a client sends the same token on every call until it renews it. A
//! hit still checks expiry and not-before against `now_s`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::LedgerClaims;

/// Longest token accepted: real ones are well under 1 KiB; this bounds the work a hostile
/// header can cause before it is refused.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Verified tokens remembered; when full, expired entries go first, then everything.
pub const CACHE_ENTRIES: usize = 4_096;
/// Longest key id echoed in a message.
const MAX_KID_ECHO: usize = 64;

/// Why a call is UNAUTHENTICATED. Messages say which check failed, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("no authorization header: send `authorization: Bearer <JWT>` with a token for this participant (see `meridian token`)")]
    Missing,
    #[error("the authorization header is not of the form `Bearer <JWT>`")]
    NotBearer,
    #[error("the bearer token is not a well-formed JWT: {0}")]
    Malformed(&'static str),
    #[error("the token's key id {0} is not among the configured verification keys")]
    UnknownKey(String),
    #[error("the token names no key id (kid) and the configured JWKS holds several keys")]
    NoKeyId,
    #[error("the token is signed with {token}, but its key is for {key}")]
    AlgorithmMismatch { token: String, key: String },
    #[error("the token's signature does not verify against the configured key (forged, or signed by another key)")]
    BadSignature,
    #[error("the token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error(
        "the token is for another audience (aud); this participant accepts tokens for {expected:?}"
    )]
    WrongAudience { expected: String },
    #[error("the token expired at {exp_s} (now {now_s}, seconds since the epoch)")]
    Expired { exp_s: u64, now_s: u64 },
    #[error("the token is not valid before {nbf_s} (now {now_s}, seconds since the epoch)")]
    NotYetValid { nbf_s: u64, now_s: u64 },
    #[error("the token was issued in the future (iat {iat_s}, now {now_s})")]
    IssuedInFuture { iat_s: u64, now_s: u64 },
    #[error("the token's lifetime of {lifetime_s} s exceeds this participant's max_token_lifetime_s of {max_s} s; mint a shorter-lived token")]
    LifetimeTooLong { lifetime_s: u64, max_s: u64 },
}

/// Why a call is PERMISSION_DENIED: the token is valid, the call is outside its claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PermissionDenied(pub String);

/// A configuration that cannot verify anything; named at start-up.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("the JWKS is not valid JSON of the form {{\"keys\": [...]}}: {0}")]
    Jwks(String),
    #[error("the JWKS holds no key")]
    EmptyJwks,
    #[error("the JWKS holds several keys, and key {index} has no `kid`")]
    MissingKid { index: usize },
    #[error("the JWKS holds two keys with kid {0:?}")]
    DuplicateKid(String),
    #[error("key {kid:?}: {reason}")]
    UnsupportedKey { kid: String, reason: String },
    #[error("algorithm {0:?} is not supported: use EdDSA, ES256 or RS256")]
    UnsupportedAlgorithm(String),
    #[error("the public key PEM is not a valid {algorithm} public key: {reason}")]
    Pem { algorithm: String, reason: String },
}

/// Where the verification keys come from (already read from their file).
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JSON Web Key Set (RFC 7517): tokens name their key by `kid`.
    Jwks(String),
    /// One public key in PEM (SPKI, or PKCS#1 for RSA) with its algorithm.
    Pem { pem: Vec<u8>, algorithm: Algorithm },
}

/// The checks besides the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierSettings {
    /// The `aud` a token must carry (the participant id unless configured otherwise).
    pub audience: String,
    /// Longest lifetime accepted: `exp - iat`, or `exp - now` without `iat`.
    pub max_token_lifetime_s: u64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_s: u64,
}

/// A verified token's grants, for one call's checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub user: String,
    pub act_as: BTreeSet<String>,
    pub read_as: BTreeSet<String>,
    pub admin: bool,
    pub expires_at_s: u64,
    pub not_before_s: Option<u64>,
}

impl Authorized {
    /// Every party must be in `actAs`.
    pub fn check_act_as<'a>(
        &self,
        parties: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), PermissionDenied> {
        for party in parties {
            if !self.act_as.contains(party) {
                return Err(PermissionDenied(format!(
                    "the token of user {:?} may not act as party {party:?} (not in its actAs claim)",
                    self.user
                )));
            }
        }
        Ok(())
    }

    /// Every party must be in `actAs` or `readAs`.
    pub fn check_read_as<'a>(
        &self,
        parties: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), PermissionDenied> {
        for party in parties {
            if !self.act_as.contains(party) && !self.read_as.contains(party) {
                return Err(PermissionDenied(format!(
                    "the token of user {:?} may not read as party {party:?} (not in its actAs or readAs claims)",
                    self.user
                )));
            }
        }
        Ok(())
    }

    /// The request's user id must be the token's `sub`.
    pub fn check_user(&self, field: &str, user: &str) -> Result<(), PermissionDenied> {
        if user == self.user {
            return Ok(());
        }
        Err(PermissionDenied(format!(
            "{field} {user:?} is not the token's user {:?}",
            self.user
        )))
    }

    pub fn check_admin(&self) -> Result<(), PermissionDenied> {
        if self.admin {
            return Ok(());
        }
        Err(PermissionDenied(format!(
            "this call needs a token with the admin claim; the token of user {:?} has none",
            self.user
        )))
    }

    fn check_time(&self, now_s: u64, leeway_s: u64) -> Result<(), Unauthenticated> {
        if now_s > self.expires_at_s.saturating_add(leeway_s) {
            return Err(Unauthenticated::Expired {
                exp_s: self.expires_at_s,
                now_s,
            });
        }
        if let Some(nbf_s) = self.not_before_s {
            if nbf_s > now_s.saturating_add(leeway_s) {
                return Err(Unauthenticated::NotYetValid { nbf_s, now_s });
            }
        }
        Ok(())
    }
}

struct Key {
    decoding: DecodingKey,
    algorithm: Algorithm,
}

enum Keys {
    /// A PEM key: the token's kid, if any, is not consulted.
    Single(Key),
    /// A JWKS: by kid; a token without kid is accepted only when the set has one key.
    Set(HashMap<String, Key>),
}

/// Verifies bearer tokens against the configured keys and settings; shared by every call.
pub struct Verifier {
    keys: Keys,
    settings: VerifierSettings,
    cache: Mutex<HashMap<[u8; 32], Arc<Authorized>>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::Single(_) => 1,
            Keys::Set(set) => set.len(),
        };
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("settings", &self.settings)
            .finish()
    }
}

fn algorithm_name(algorithm: Algorithm) -> String {
    format!("{algorithm:?}")
}

/// Parses an algorithm name of the config (`EdDSA`, `ES256`, `RS256`).
pub fn parse_algorithm(name: &str) -> Result<Algorithm, VerifierError> {
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| VerifierError::UnsupportedAlgorithm(name.to_owned()))?;
    if !crate::SUPPORTED_ALGORITHMS.contains(&algorithm) {
        return Err(VerifierError::UnsupportedAlgorithm(name.to_owned()));
    }
    Ok(algorithm)
}

fn jwks_keys(json: &str) -> Result<HashMap<String, Key>, VerifierError> {
    let set: JwkSet = serde_json::from_str(json).map_err(|e| VerifierError::Jwks(e.to_string()))?;
    if set.keys.is_empty() {
        return Err(VerifierError::EmptyJwks);
    }
    let several = set.keys.len() > 1;
    let mut keys = HashMap::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let kid = match (&jwk.common.key_id, several) {
            (Some(kid), _) => kid.clone(),
            (None, false) => String::new(),
            (None, true) => return Err(VerifierError::MissingKid { index }),
        };
        let unsupported = |reason: &str| VerifierError::UnsupportedKey {
            kid: kid.clone(),
            reason: reason.to_owned(),
        };
        // The key type decides the algorithm; a stated `alg` must agree with it.
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => {
                return Err(unsupported(
                    "only Ed25519 (OKP), P-256 (EC) and RSA keys are supported",
                ))
            }
        };
        let stated = match jwk.common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
            Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
            Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
            Some(other) => {
                return Err(unsupported(&format!(
                    "alg {other:?} is not supported: use EdDSA, ES256 or RS256"
                )))
            }
        };
        if stated.is_some_and(|stated| stated != algorithm) {
            return Err(unsupported("its alg does not match its key type"));
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| unsupported(&e.to_string()))?;
        if keys
            .insert(
                kid.clone(),
                Key {
                    decoding,
                    algorithm,
                },
            )
            .is_some()
        {
            return Err(VerifierError::DuplicateKid(kid));
        }
    }
    Ok(keys)
}

fn pem_key(pem: &[u8], algorithm: Algorithm) -> Result<Key, VerifierError> {
    let decoding = match algorithm {
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        Algorithm::ES256 => DecodingKey::from_ec_pem(pem),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
        other => return Err(VerifierError::UnsupportedAlgorithm(algorithm_name(other))),
    }
    .map_err(|e| VerifierError::Pem {
        algorithm: algorithm_name(algorithm),
        reason: e.to_string(),
    })?;
    Ok(Key {
        decoding,
        algorithm,
    })
}

/// A key id as it may appear in a message: short and printable, or not at all.
fn echo_kid(kid: &str) -> String {
    if kid.len() <= MAX_KID_ECHO && kid.chars().all(|c| c.is_ascii_graphic()) {
        format!("{kid:?}")
    } else {
        "(too long or unprintable)".to_owned()
    }
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'=')
}

/// The token of an `authorization` header value (`Bearer <token>`, scheme case-insensitive).
pub fn bearer_token(header: Option<&str>) -> Result<&str, Unauthenticated> {
    let header = header.ok_or(Unauthenticated::Missing)?.trim();
    let (scheme, token) = header.split_once(' ').ok_or(Unauthenticated::NotBearer)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Unauthenticated::NotBearer);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(Unauthenticated::Malformed("the token is empty"));
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Unauthenticated::Malformed("the token is longer than 8 KiB"));
    }
    if !token.bytes().all(is_token_char) || token.bytes().filter(|&b| b == b'.').count() != 2 {
        return Err(Unauthenticated::Malformed(
            "expected three base64url parts separated by dots",
        ));
    }
    Ok(token)
}

impl Verifier {
    pub fn new(source: &KeySource, settings: VerifierSettings) -> Result<Self, VerifierError> {
        let keys = match source {
            KeySource::Jwks(json) => Keys::Set(jwks_keys(json)?),
            KeySource::Pem { pem, algorithm } => Keys::Single(pem_key(pem, *algorithm)?),
        };
        Ok(Self {
            keys,
            settings,
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn settings(&self) -> &VerifierSettings {
        &self.settings
    }

    /// The grants of the token in an `authorization` header value, at `now_s`.
    pub fn verify_header(
        &self,
        header: Option<&str>,
        now_s: u64,
    ) -> Result<Arc<Authorized>, Unauthenticated> {
        self.verify(bearer_token(header)?, now_s)
    }

    /// The grants of a bare token, at `now_s`.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Arc<Authorized>, Unauthenticated> {
        let hash = *blake3::hash(token.as_bytes()).as_bytes();
        let cached = self.cache().get(&hash).cloned();
        if let Some(authorized) = cached {
            authorized.check_time(now_s, self.settings.leeway_s)?;
            return Ok(authorized);
        }
        let authorized = Arc::new(self.verify_uncached(token, now_s)?);
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES {
            let leeway_s = self.settings.leeway_s;
            cache.retain(|_, a| a.check_time(now_s, leeway_s).is_ok());
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(hash, authorized.clone());
        Ok(authorized)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<Authorized>>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key_for(&self, header: &jsonwebtoken::Header) -> Result<&Key, Unauthenticated> {
        match (&self.keys, &header.kid) {
            (Keys::Single(key), _) => Ok(key),
            (Keys::Set(set), Some(kid)) => set
                .get(kid)
                .ok_or_else(|| Unauthenticated::UnknownKey(echo_kid(kid))),
            (Keys::Set(set), None) if set.len() == 1 => {
                set.values().next().ok_or(Unauthenticated::NoKeyId)
            }
            (Keys::Set(_), None) => Err(Unauthenticated::NoKeyId),
        }
    }

    /// The signature and every claim, without the cache.
    pub fn verify_uncached(&self, token: &str, now_s: u64) -> Result<Authorized, Unauthenticated> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Unauthenticated::Malformed("its header is not a JWT header"))?;
        let key = self.key_for(&header)?;
        if header.alg != key.algorithm {
            return Err(Unauthenticated::AlgorithmMismatch {
                token: algorithm_name(header.alg),
                key: algorithm_name(key.algorithm),
            });
        }
        let mut validation = Validation::new(key.algorithm);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<LedgerClaims>(token, &key.decoding, &validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::Crypto(_) => Unauthenticated::BadSignature,
                    ErrorKind::InvalidAlgorithm => Unauthenticated::AlgorithmMismatch {
                        token: algorithm_name(header.alg),
                        key: algorithm_name(key.algorithm),
                    },
                    ErrorKind::Json(_) => Unauthenticated::Malformed(
                        "its claims are not a JSON object of the expected claims (sub, aud, exp, actAs, readAs, admin)",
                    ),
                    _ => Unauthenticated::Malformed("its parts are not valid base64url JSON"),
                }
            })?;
        self.check_claims(data.claims, now_s)
    }

    /// The claim checks after the signature verified.
    pub fn check_claims(
        &self,
        claims: LedgerClaims,
        now_s: u64,
    ) -> Result<Authorized, Unauthenticated> {
        let settings = &self.settings;
        let exp_s = claims.exp.ok_or(Unauthenticated::MissingClaim("exp"))?;
        let user = claims
            .sub
            .filter(|sub| !sub.is_empty())
            .ok_or(Unauthenticated::MissingClaim("sub"))?;
        let audience = claims.aud.ok_or(Unauthenticated::MissingClaim("aud"))?;
        if !audience.contains(&settings.audience) {
            return Err(Unauthenticated::WrongAudience {
                expected: settings.audience.clone(),
            });
        }
        let authorized = Authorized {
            user,
            act_as: claims.act_as.into_iter().collect(),
            read_as: claims.read_as.into_iter().collect(),
            admin: claims.admin,
            expires_at_s: exp_s,
            not_before_s: claims.nbf,
        };
        authorized.check_time(now_s, settings.leeway_s)?;
        if let Some(iat_s) = claims.iat {
            if iat_s > now_s.saturating_add(settings.leeway_s) {
                return Err(Unauthenticated::IssuedInFuture { iat_s, now_s });
            }
        }
        let lifetime_s = exp_s.saturating_sub(claims.iat.unwrap_or(now_s));
        if lifetime_s > settings.max_token_lifetime_s {
            return Err(Unauthenticated::LifetimeTooLong {
                lifetime_s,
                max_s: settings.max_token_lifetime_s,
            });
        }
        Ok(authorized)
    }
}
