//! A deployment's secrets under `<data>/secrets/`, each written 0600 (the directory 0700):
//! here the Ledger API signing key ([`ledger_auth`]), whose JWKS every participant's
//! `[ledger_auth]` points at, and the tokens the lab's own clients (workload, drills, benches)
//! mint with it. Kept across restarts of the same data directory, so tokens stay valid.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use meridian_auth::keys::{write_key_pair, KeyPairFiles};
use meridian_auth::mint::{TokenGrant, TokenMinter};
use meridian_client::ledger::TokenSource;

/// Where a deployment's secrets live.
pub fn secrets_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
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
