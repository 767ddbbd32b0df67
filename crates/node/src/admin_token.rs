//! The one check of an admin token: a node's admin gRPC calls (the sequencer's member
//! registration, the topology manager's changes) carry `authorization: Bearer <admin_token>`
//! when the node's config sets `admin_token`.
//!
//! Why constant time: comparing the token byte by byte and stopping at the first difference
//! tells a caller, through the answer's timing, how much of a guess was right. Both sides are
//! hashed with BLAKE3 to fixed-size digests (so the length does not leak either) and the
//! digests are compared with [`subtle::ConstantTimeEq`].
//!
//! The same check guards the admin HTTP routes ([`AdminToken::verify_http`], used by
//! [`crate::admin`]), so gRPC and HTTP share one comparison. The token comes from the config's
//! `admin_token_file` (preferred: a 0600 file, [`crate::secrets`]) or its inline `admin_token`
//! ([`AdminToken::configured`]).

use std::path::Path;

use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataMap;
use tonic::Status;

use crate::secrets::{read_secret, SecretFileError};

/// Why a node's configured admin token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenConfigError {
    #[error("set either admin_token_file or admin_token, not both (the file is preferred: it keeps the token out of the config)")]
    Both,
    #[error("admin_token is empty")]
    EmptyInline,
    #[error("admin_token_file: {0}")]
    File(#[from] SecretFileError),
}

/// Why a call's token was refused; the status says which, never the expected token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no `authorization` metadata")]
    Missing,
    #[error("the `authorization` metadata is not `Bearer <token>`")]
    Malformed,
    #[error("the admin token does not match")]
    Wrong,
}

/// A node's configured admin token, or none (admin calls are then open).
#[derive(Clone)]
pub struct AdminToken {
    /// The digest of the expected token; the token itself is not kept.
    expected: Option<[u8; 32]>,
    /// What a refused caller is told to send, e.g. "from the sequencer config".
    hint: &'static str,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("required", &self.expected.is_some())
            .finish()
    }
}

impl AdminToken {
    /// Checks calls against `token` when set. `hint` ends the refusal's message, saying where
    /// the caller finds the token (e.g. "from the sequencer config").
    pub fn new(token: Option<&str>, hint: &'static str) -> Self {
        Self {
            expected: token.map(digest),
            hint,
        }
    }

    /// The token a node's config sets: read from `file` (refused unless only its owner can
    /// read it, see [`crate::secrets`]) or taken from the inline `inline`; none when neither
    /// is set. Both at once is an error, so it is never unclear which one holds.
    pub fn configured(
        inline: Option<&str>,
        file: Option<&Path>,
        hint: &'static str,
    ) -> Result<Self, AdminTokenConfigError> {
        match (inline, file) {
            (Some(_), Some(_)) => Err(AdminTokenConfigError::Both),
            (Some(token), None) if token.trim().is_empty() => {
                Err(AdminTokenConfigError::EmptyInline)
            }
            (Some(token), None) => Ok(Self::new(Some(token), hint)),
            (None, Some(path)) => {
                let token = read_secret(path, "admin token")?;
                Ok(Self::new(Some(&token), hint))
            }
            (None, None) => Ok(Self::new(None, hint)),
        }
    }

    /// Whether a token is required at all.
    pub fn is_required(&self) -> bool {
        self.expected.is_some()
    }

    /// Whether `metadata` carries the token: `Ok` when none is configured, UNAUTHENTICATED
    /// naming what is wrong otherwise.
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        self.verify(metadata).map_err(|error| {
            Status::unauthenticated(format!(
                "admin calls need `authorization: Bearer <admin_token>` {}: {error}",
                self.hint
            ))
        })
    }

    /// [`Self::check`] with the reason as a [`TokenError`].
    pub fn verify(&self, metadata: &MetadataMap) -> Result<(), TokenError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let presented = bearer(metadata)?;
        Self::compare(presented, expected)
    }

    /// [`Self::verify`] for an HTTP request's headers (`Authorization: Bearer <token>`).
    pub fn verify_http(&self, headers: &axum::http::HeaderMap) -> Result<(), TokenError> {
        let Some(expected) = &self.expected else {
            return Ok(());
        };
        let value = headers.get(axum::http::header::AUTHORIZATION);
        let presented = bearer_value(value.map(|value| value.to_str().ok()))?;
        Self::compare(presented, expected)
    }

    /// The one comparison: digests, in constant time.
    fn compare(presented: &str, expected: &[u8; 32]) -> Result<(), TokenError> {
        if bool::from(digest(presented).ct_eq(expected)) {
            Ok(())
        } else {
            Err(TokenError::Wrong)
        }
    }
}

/// The token of `authorization: Bearer <token>` (surrounding whitespace ignored).
pub fn bearer(metadata: &MetadataMap) -> Result<&str, TokenError> {
    let value = metadata.get("authorization");
    bearer_value(value.map(|value| value.to_str().ok()))
}

/// The token of an `authorization` value: `None` when there is none, `Some(None)` when it is
/// not printable text; gRPC metadata and HTTP headers both come here.
fn bearer_value(value: Option<Option<&str>>) -> Result<&str, TokenError> {
    value
        .ok_or(TokenError::Missing)?
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or(TokenError::Malformed)
}

fn digest(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(authorization: Option<&str>) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        if let Some(value) = authorization {
            metadata.insert("authorization", value.parse().unwrap());
        }
        metadata
    }

    #[test]
    fn missing_malformed_wrong_and_right_tokens() {
        let token = AdminToken::new(Some("s3cret"), "from the test config");
        assert!(token.is_required());
        assert_eq!(token.verify(&metadata(None)), Err(TokenError::Missing));
        for malformed in ["s3cret", "Basic s3cret", "Bearer ", "bearer s3cret"] {
            assert_eq!(
                token.verify(&metadata(Some(malformed))),
                Err(TokenError::Malformed),
                "{malformed}"
            );
        }
        for wrong in ["Bearer other", "Bearer s3cre", "Bearer s3cret2"] {
            assert_eq!(
                token.verify(&metadata(Some(wrong))),
                Err(TokenError::Wrong),
                "{wrong}"
            );
        }
        assert_eq!(token.verify(&metadata(Some("Bearer s3cret"))), Ok(()));
        assert_eq!(token.verify(&metadata(Some("Bearer s3cret "))), Ok(()));
    }

    #[test]
    fn refusals_are_unauthenticated_and_never_name_the_token() {
        let token = AdminToken::new(Some("s3cret"), "from the test config");
        let status = token
            .check(&metadata(Some("Bearer guess")))
            .expect_err("wrong");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert!(status.message().contains("from the test config"));
        assert!(!status.message().contains("s3cret"));
        assert!(!format!("{token:?}").contains("s3cret"));
    }

    #[test]
    fn the_configured_token_comes_from_an_owner_only_file_or_inline_never_both() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("admin-token");
        crate::secrets::write_secret(&path, "s3cret\n").expect("written");
        let token = AdminToken::configured(None, Some(&path), "from the test config")
            .expect("an owner-only file");
        assert_eq!(token.verify(&metadata(Some("Bearer s3cret"))), Ok(()));
        assert!(matches!(
            AdminToken::configured(Some("s3cret"), Some(&path), ""),
            Err(AdminTokenConfigError::Both)
        ));
        assert!(matches!(
            AdminToken::configured(Some(" "), None, ""),
            Err(AdminTokenConfigError::EmptyInline)
        ));
        assert!(!AdminToken::configured(None, None, "")
            .expect("open")
            .is_required());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = AdminToken::configured(None, Some(&path), "").expect_err("too open");
        let message = err.to_string();
        assert!(message.starts_with("admin_token_file: "), "{message}");
        assert!(
            message.contains(&format!("chmod 600 {}", path.display())),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
    }

    #[test]
    fn without_a_configured_token_every_call_passes() {
        let open = AdminToken::new(None, "");
        assert!(!open.is_required());
        assert_eq!(open.verify(&metadata(None)), Ok(()));
        assert!(open.check(&metadata(Some("garbage"))).is_ok());
    }
}
