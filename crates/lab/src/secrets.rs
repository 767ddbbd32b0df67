//! A deployment's secrets, kept under `<data-dir>/secrets/` with mode 0600 and generated on its
//! first start: one function per secret, so that each is made, and found again, in one place.
//!
//! The admin token ([`admin_token`]) guards every node's mutating admin routes (step-down, the
//! topology manager's changes); every node of the deployment reads it from the file
//! (`admin_token_file`) and the lab's own admin calls send it ([`bearer`]). Nothing here logs a
//! secret: callers print the file's path, never its contents.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
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
    data_dir.join(SECRETS_DIR).join(ADMIN_TOKEN_FILE)
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
