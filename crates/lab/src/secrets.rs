//! A deployment's secrets, kept under `<data-dir>/secrets/` with mode 0600 and generated on its
//! first start: one function per secret, so that each is made, and found again, in one place.
//! Kept across restarts of the same data directory, so tokens stay valid.
//!
//! - The admin token ([`admin_token`]) guards every node's mutating admin routes (step-down,
//!   the topology manager's changes); every node of the deployment reads it from the file
//!   (`admin_token_file`) and the lab's own admin calls send it ([`bearer`]).
//! - The Ledger API signing key ([`ledger_auth`]), whose JWKS every participant's
//!   `[ledger_auth]` points at, mints the tokens of the lab's own clients (workload, drills,
//!   benches).
//!
//! Nothing here logs a secret: callers print the file's path, never its contents.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use meridian_auth::keys::{write_key_pair, KeyPairFiles};
use meridian_auth::mint::{TokenGrant, TokenMinter};
use meridian_client::ledger::TokenSource;
use meridian_node::secrets::{read_secret, write_secret};
use rand::RngCore as _;

/// The directory of a deployment's secrets.
pub const SECRETS_DIR: &str = "secrets";
/// The admin token's file name in [`SECRETS_DIR`].
pub const ADMIN_TOKEN_FILE: &str = "admin-token";
/// Random bytes in a generated admin token (written as hex).
const ADMIN_TOKEN_BYTES: usize = 32;

/// Where the admin token of the deployment in `data_dir` lives.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    secrets_dir(data_dir).join(ADMIN_TOKEN_FILE)
}

/// The admin token file of the deployment in `data_dir`: created (32 random bytes as hex,
/// mode 0600) on its first start, reused after, so that restarted nodes keep the token.
/// An existing file that others can read, or that is empty, is an error naming it.
pub fn admin_token(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = admin_token_path(data_dir);
    if !path.exists() {
        let mut bytes = [0u8; ADMIN_TOKEN_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        write_secret(&path, &token)
            .with_context(|| format!("writing the admin token {}", path.display()))?;
    }
    read_secret(&path, "admin token")?;
    Ok(path)
}

/// The `Authorization` value for an admin call with the token in `path`.
pub fn bearer(path: &Path) -> anyhow::Result<String> {
    Ok(format!("Bearer {}", read_secret(path, "admin token")?))
}

/// The token file an admin command uses: `explicit` (the `--admin-token-file` option or
/// `MERIDIAN_ADMIN_TOKEN_FILE`) if given, else the deployment's own in `data_dir` if it has
/// one (a deployment from before admin tokens has none, and its nodes need none).
pub fn admin_token_for(data_dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(path) => Some(path.to_path_buf()),
        None => Some(admin_token_path(data_dir)).filter(|path| path.exists()),
    }
}

/// Where a deployment's secrets live.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRETS_DIR)
}

/// Lifetime of the lab's tokens; a [`LedgerAuth::token_source`] renews at half of it.
pub const LAB_TOKEN_LIFETIME_S: u64 = 3_600;

/// The Ledger API signing key of a deployment.
#[derive(Clone)]
pub struct LedgerAuth {
    pub files: KeyPairFiles,
    minter: Arc<TokenMinter>,
}

impl std::fmt::Debug for LedgerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerAuth")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// The deployment's Ledger API key pair in `<data>/secrets/`: loaded when present, generated
/// (EdDSA) otherwise.
pub fn ledger_auth(data_dir: &Path) -> anyhow::Result<LedgerAuth> {
    let dir = secrets_dir(data_dir);
    let existing = KeyPairFiles::in_dir(&dir, String::new());
    let files = if existing.private_key.exists() && existing.jwks.exists() {
        existing
    } else {
        write_key_pair(&dir).context("generating the Ledger API signing key")?
    };
    let minter = TokenMinter::from_file(&files.private_key)?;
    let files = KeyPairFiles {
        kid: minter.key_id().to_owned(),
        ..files
    };
    Ok(LedgerAuth {
        files,
        minter: Arc::new(minter),
    })
}

impl LedgerAuth {
    /// A token for `grant`, issued now.
    pub fn token(&self, grant: &TokenGrant) -> anyhow::Result<String> {
        Ok(self.minter.mint(grant, meridian_auth::now_s())?)
    }

    /// A source that mints a token for `grant` and a fresh one once half its lifetime passed,
    /// so that runs longer than a token's lifetime stay authorized.
    pub fn token_source(&self, grant: TokenGrant) -> TokenSource {
        let minter = self.minter.clone();
        let current: Mutex<Option<(u64, String)>> = Mutex::new(None);
        Arc::new(move || {
            let now_s = meridian_auth::now_s();
            let mut current = current.lock().unwrap_or_else(PoisonError::into_inner);
            let stale = current
                .as_ref()
                .is_none_or(|(issued_s, _)| now_s >= issued_s + grant.lifetime_s / 2);
            if stale {
                match minter.mint(&grant, now_s) {
                    Ok(token) => *current = Some((now_s, token)),
                    Err(error) => tracing::warn!(%error, "minting a Ledger API token failed"),
                }
            }
            current.as_ref().map(|(_, token)| token.clone())
        })
    }

    /// The `meridian token` command line that mints a token for `participant`.
    pub fn command_line(&self, participant: &str) -> String {
        format!(
            "meridian token --key {} --participant {participant} --user <USER> --act-as <PARTY> [--read-as <PARTY>] [--admin] --lifetime 1h",
            self.files.private_key.display()
        )
    }
}

/// The grant the lab's own clients use on one participant: acting as the deployment's
/// parties, and admin to allocate them.
pub fn lab_grant(participant: &str, user: &str, parties: &[&str]) -> TokenGrant {
    TokenGrant {
        participant: participant.to_owned(),
        user: user.to_owned(),
        act_as: parties.iter().map(|p| (*p).to_owned()).collect(),
        read_as: Vec::new(),
        admin: true,
        lifetime_s: LAB_TOKEN_LIFETIME_S,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_token_is_made_once_owner_only_and_reused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = admin_token(dir.path()).expect("created");
        assert_eq!(path, dir.path().join("secrets/admin-token"));
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let token = std::fs::read_to_string(&path).expect("read");
        assert_eq!(token.len(), 64);
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
        admin_token(dir.path()).expect("reused");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), token);
        assert_eq!(bearer(&path).expect("bearer"), format!("Bearer {token}"));
    }
}
