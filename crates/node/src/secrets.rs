//! Files that hold secrets (a node's signing key, the admin token) and the one rule they share:
//! only their owner may read them. A key or token that group or others can read is as good as
//! published on a shared machine, so a node refuses to start on one, with an error naming the
//! file and the fix (`chmod 600 FILE`), rather than quietly using it.
//!
//! The secret itself never appears in an error, a `Debug` output or a log line: errors name
//! the file, never its contents.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// Largest secret file read: a token or a hex key is well under a hundred bytes, and a
/// mistyped path to something large must not be read into memory.
pub const MAX_SECRET_BYTES: u64 = 4096;

/// Permission bits for group and others: any of them set and the file is not the owner's alone.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Why a secret file was refused; every message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} file {path} is accessible to group or others (mode {mode:04o}); a secret must be readable by its owner only: run `chmod 600 {path}`")]
    TooOpen {
        what: &'static str,
        path: String,
        mode: u32,
    },
    #[error("{what} file {path} is empty")]
    Empty { what: &'static str, path: String },
    #[error("{what} file {path} is larger than {limit_bytes} bytes")]
    TooLarge {
        what: &'static str,
        path: String,
        limit_bytes: u64,
    },
    #[error("{what} file {path} is not UTF-8 text")]
    NotText { what: &'static str, path: String },
}

/// Refuses `path` (a `what`, e.g. "key") if group or others have any access to it.
pub fn check_owner_only(path: &Path, what: &'static str) -> Result<(), SecretFileError> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        what,
        path: shown.clone(),
        source,
    })?;
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(SecretFileError::TooOpen {
            what,
            path: shown,
            mode,
        });
    }
    Ok(())
}

/// The secret in `path`, surrounding whitespace (a trailing newline from `echo`) removed:
/// refused if the file is open to group or others, empty, too large or not text.
pub fn read_secret(path: &Path, what: &'static str) -> Result<String, SecretFileError> {
    check_owner_only(path, what)?;
    let shown = || path.display().to_string();
    let read_err = |source| SecretFileError::Read {
        what,
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge {
            what,
            path: shown(),
            limit_bytes: MAX_SECRET_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotText {
        what,
        path: shown(),
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(SecretFileError::Empty {
            what,
            path: shown(),
        });
    }
    Ok(secret.to_owned())
}

/// Writes `secret` to a new file `path` with mode 0600 (creating its directory); an existing
/// file is an error, so a deployment's secret is never silently replaced.
pub fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(secret.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn an_owner_only_secret_is_read_trimmed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secrets/admin-token");
        write_secret(&path, "s3cret\n").expect("written");
        assert_eq!(read_secret(&path, "admin token").expect("read"), "s3cret");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(write_secret(&path, "other").is_err(), "never replaced");
    }

    #[test]
    fn a_secret_others_can_read_is_refused_naming_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("token");
        write_secret(&path, "s3cret").expect("written");
        for mode in [0o644, 0o640, 0o604, 0o660] {
            chmod(&path, mode);
            let err = read_secret(&path, "admin token").expect_err("too open");
            let message = err.to_string();
            assert!(matches!(err, SecretFileError::TooOpen { .. }), "{message}");
            assert!(
                message.contains(&format!("chmod 600 {}", path.display())),
                "{message}"
            );
            assert!(!message.contains("s3cret"), "{message}");
        }
        chmod(&path, 0o400);
        assert_eq!(read_secret(&path, "admin token").expect("read"), "s3cret");
    }

    #[test]
    fn empty_missing_and_oversized_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let empty = dir.path().join("empty");
        write_secret(&empty, " \n").expect("written");
        assert!(matches!(
            read_secret(&empty, "admin token"),
            Err(SecretFileError::Empty { .. })
        ));
        let missing = dir.path().join("missing");
        let err = read_secret(&missing, "admin token").expect_err("missing");
        assert!(err.to_string().contains("missing"), "{err}");
        let large = dir.path().join("large");
        write_secret(&large, &"x".repeat(5000)).expect("written");
        assert!(matches!(
            read_secret(&large, "admin token"),
            Err(SecretFileError::TooLarge { .. })
        ));
    }
}
