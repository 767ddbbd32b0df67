//! Member authentication: a signed challenge yields a session token.
//!
//! Why tokens and not a signature per submission: verifying an ed25519 signature costs tens of
//! microseconds, which at 10,000 sends/s would eat a core of this two-core budget; a token
//! lookup costs nanoseconds. The challenge is bound to the member and expires, the token is 256
//! random bits, and both are kept in memory per instance: a client that fails over to another
//! instance (or reaches a restarted one) gets UNAUTHENTICATED and re-authenticates in one round
//! trip. All tables are bounded so an unauthenticated caller cannot grow memory without limit.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use meridian_core::crypto::{authentication_challenge, PublicKey, Signature, SigningPurpose};
use meridian_core::MemberId;
use rand::RngCore;

pub const NONCE_LEN: usize = 32;
const NONCE_TTL: Duration = Duration::from_secs(60);
/// Outstanding challenges per member; older ones are dropped first.
const MAX_NONCES_PER_MEMBER: usize = 8;
/// Live sessions per member; a member that reconnects often evicts its oldest session.
const MAX_TOKENS_PER_MEMBER: usize = 64;
/// Global bound on tracked members with challenges (stops id-spraying).
const MAX_CHALLENGED_MEMBERS: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata; authenticate first")]
    MissingToken,
    #[error("unknown or expired session token; authenticate again")]
    UnknownToken,
    #[error("no outstanding challenge matches this nonce for {0} (expired or already used)")]
    UnknownNonce(MemberId),
    #[error("the challenge signature does not verify against {0}'s registered key")]
    BadSignature(MemberId),
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
}

struct Session {
    member: MemberId,
    expires_at: Instant,
}

#[derive(Default)]
struct Tables {
    nonces: HashMap<MemberId, VecDeque<([u8; NONCE_LEN], Instant)>>,
    sessions: HashMap<String, Session>,
    tokens_by_member: HashMap<MemberId, VecDeque<String>>,
}

pub struct Authenticator {
    token_ttl: Duration,
    tables: Mutex<Tables>,
}

impl Authenticator {
    pub fn new(token_ttl: Duration) -> Self {
        Self {
            token_ttl,
            tables: Mutex::new(Tables::default()),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issues a nonce for a member (registered or not: checking would leak membership).
    pub fn challenge(&self, member: &MemberId) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let now = Instant::now();
        let mut tables = self.tables();
        if tables.nonces.len() >= MAX_CHALLENGED_MEMBERS && !tables.nonces.contains_key(member) {
            tables
                .nonces
                .retain(|_, q| q.iter().any(|(_, issued)| now - *issued < NONCE_TTL));
        }
        let queue = tables.nonces.entry(member.clone()).or_default();
        queue.retain(|(_, issued)| now - *issued < NONCE_TTL);
        if queue.len() >= MAX_NONCES_PER_MEMBER {
            queue.pop_front();
        }
        queue.push_back((nonce, now));
        nonce
    }

    /// Verifies the signed nonce against the member's registered key and opens a session.
    /// The nonce is consumed either way, so a signature cannot be replayed.
    pub fn authenticate(
        &self,
        member: &MemberId,
        public_key: &PublicKey,
        nonce: &[u8],
        signature: &[u8],
    ) -> Result<(String, Duration), AuthError> {
        let now = Instant::now();
        {
            let mut tables = self.tables();
            let queue = tables
                .nonces
                .get_mut(member)
                .ok_or_else(|| AuthError::UnknownNonce(member.clone()))?;
            let position = queue
                .iter()
                .position(|(n, issued)| n.as_slice() == nonce && now - *issued < NONCE_TTL)
                .ok_or_else(|| AuthError::UnknownNonce(member.clone()))?;
            queue.remove(position);
        }
        let signature = Signature::from_bytes(signature)
            .map_err(|e| AuthError::MalformedSignature(e.to_string()))?;
        public_key
            .verify(
                SigningPurpose::SequencerAuthentication,
                &authentication_challenge(member, nonce),
                &signature,
            )
            .map_err(|_| AuthError::BadSignature(member.clone()))?;

        let mut token_bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut token_bytes);
        let token = hex::encode(token_bytes);
        let mut tables = self.tables();
        let tokens = tables.tokens_by_member.entry(member.clone()).or_default();
        tokens.push_back(token.clone());
        let evicted = if tokens.len() > MAX_TOKENS_PER_MEMBER {
            tokens.pop_front()
        } else {
            None
        };
        if let Some(old) = evicted {
            tables.sessions.remove(&old);
        }
        tables.sessions.insert(
            token.clone(),
            Session {
                member: member.clone(),
                expires_at: now + self.token_ttl,
            },
        );
        Ok((token, self.token_ttl))
    }

    /// Resolves a bearer token to its member.
    pub fn member_for_token(&self, token: &str) -> Result<MemberId, AuthError> {
        let tables = self.tables();
        match tables.sessions.get(token) {
            Some(session) if session.expires_at > Instant::now() => Ok(session.member.clone()),
            _ => Err(AuthError::UnknownToken),
        }
    }

    /// Drops every session of a member (e.g. when its key changes).
    pub fn revoke(&self, member: &MemberId) {
        let mut tables = self.tables();
        if let Some(tokens) = tables.tokens_by_member.remove(member) {
            for token in tokens {
                tables.sessions.remove(&token);
            }
        }
    }
}

/// Extracts the session token from gRPC metadata, parsed as every node parses an
/// `authorization` header ([`meridian_node::admin_token::bearer`]).
pub fn bearer_token(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    meridian_node::admin_token::bearer(metadata).map_err(|_| AuthError::MissingToken)
}

#[cfg(test)]
mod tests {
    use meridian_core::crypto::SigningKey;

    use super::*;

    /// `key`'s answer to `nonce` for `member`.
    fn sign_challenge(key: &SigningKey, member: &MemberId, nonce: &[u8]) -> Vec<u8> {
        key.sign(
            SigningPurpose::SequencerAuthentication,
            &authentication_challenge(member, nonce),
        )
        .to_bytes()
        .to_vec()
    }

    /// Member `p1`, challenged by `auth`, with `key`'s answer.
    fn challenged(auth: &Authenticator, key: &SigningKey) -> (MemberId, [u8; NONCE_LEN], Vec<u8>) {
        let member = MemberId::new("p1").unwrap();
        let nonce = auth.challenge(&member);
        let signature = sign_challenge(key, &member, &nonce);
        (member, nonce, signature)
    }

    #[test]
    fn challenge_response_yields_a_token_once() {
        let auth = Authenticator::new(Duration::from_secs(60));
        let key = SigningKey::generate();
        let (member, nonce, signature) = challenged(&auth, &key);
        let (token, _) = auth
            .authenticate(&member, &key.public_key(), &nonce, &signature)
            .unwrap();
        assert_eq!(auth.member_for_token(&token).unwrap(), member);
        // The nonce was consumed: replaying the same signature fails.
        assert!(matches!(
            auth.authenticate(&member, &key.public_key(), &nonce, &signature),
            Err(AuthError::UnknownNonce(_))
        ));
        assert_eq!(auth.member_for_token("nope"), Err(AuthError::UnknownToken));
    }

    #[test]
    fn wrong_key_is_refused() {
        let auth = Authenticator::new(Duration::from_secs(60));
        let impostor = SigningKey::generate();
        let (member, nonce, signature) = challenged(&auth, &impostor);
        let registered = SigningKey::generate().public_key();
        assert!(matches!(
            auth.authenticate(&member, &registered, &nonce, &signature),
            Err(AuthError::BadSignature(_))
        ));
    }

    #[test]
    fn expired_sessions_are_refused_and_revocation_works() {
        let auth = Authenticator::new(Duration::ZERO);
        let key = SigningKey::generate();
        let (member, nonce, signature) = challenged(&auth, &key);
        let (token, _) = auth
            .authenticate(&member, &key.public_key(), &nonce, &signature)
            .unwrap();
        assert_eq!(auth.member_for_token(&token), Err(AuthError::UnknownToken));
        auth.revoke(&member);
    }

    #[test]
    fn outstanding_nonces_are_bounded() {
        let auth = Authenticator::new(Duration::from_secs(60));
        let member = MemberId::new("p1").unwrap();
        for _ in 0..100 {
            auth.challenge(&member);
        }
        assert_eq!(auth.tables().nonces[&member].len(), MAX_NONCES_PER_MEMBER);
    }
}
