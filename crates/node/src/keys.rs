//! Node signing keys on disk: a file holding the 32-byte ed25519 seed as hex. An unreadable or
//! malformed file is an error naming the file, never a silently new identity.
//!
//! Who may create a key: a single (unreplicated) node creates its missing key on its first
//! start (mode 0600), so it needs no separate key ceremony ([`load_node_key`]); the lab
//! creates a deployment's keys on its first start. The replicas of a node share one identity,
//! so a replica never creates one: each would invent a different key and all but one would be
//! refused by the sequencer. Its missing key file is an error saying so.
//!
//! An existing key file that group or others can access is refused ([`crate::secrets`]): a
//! key others can read is someone else's identity too.

use std::io::Write;
use std::path::Path;

use meridian_core::crypto::SigningKey;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a 64-hex-digit ed25519 seed: {reason}")]
    Malformed { path: String, reason: String },
    /// The file is open to group or others (or its mode cannot be read); the message names the
    /// file and the fix (`chmod 600`).
    #[error(transparent)]
    NotOwnerOnly(#[from] crate::secrets::SecretFileError),
    #[error("key file {path} does not exist; a replica never creates its node's key (each replica would invent a different identity): copy the key_file of the node's other replicas here")]
    MissingReplicaKey { path: String },
}

/// The key of a node at `path`: created if missing unless the node is `replicated`, whose
/// replicas must all hold the one key provisioned for the node (see the module doc).
pub fn load_node_key(path: &Path, replicated: bool) -> Result<SigningKey, KeyFileError> {
    if replicated && !path.exists() {
        return Err(KeyFileError::MissingReplicaKey {
            path: path.display().to_string(),
        });
    }
    load_or_create_key(path)
}

/// Loads the key at `path`, creating it (mode 0600) if the file does not exist; an existing
/// file that group or others can access is refused.
pub fn load_or_create_key(path: &Path) -> Result<SigningKey, KeyFileError> {
    let shown = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            crate::secrets::check_owner_only(path, "key")?;
            SigningKey::from_hex(&text).map_err(|e| KeyFileError::Malformed {
                path: shown,
                reason: e.to_string(),
            })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate();
            write_key(path, &key)?;
            Ok(key)
        }
        Err(source) => Err(KeyFileError::Read {
            path: shown,
            source,
        }),
    }
}

/// Writes `key` to `path` (mode 0600), replacing nothing: an existing file is an error.
pub fn write_key(path: &Path, key: &SigningKey) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| KeyFileError::Write {
            path: shown.clone(),
            source,
        })?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| KeyFileError::Write {
            path: shown.clone(),
            source,
        })?;
    file.write_all(key.to_hex().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyFileError::Write {
            path: shown,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_the_same_key_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("keys/node.key");
        let first = load_or_create_key(&path).expect("created");
        let again = load_or_create_key(&path).expect("loaded");
        assert_eq!(first.public_key(), again.public_key());
        std::fs::write(dir.path().join("bad.key"), "not hex").expect("write");
        let err = load_or_create_key(&dir.path().join("bad.key")).unwrap_err();
        assert!(err.to_string().contains("bad.key"), "{err}");
    }

    #[test]
    fn a_replica_never_creates_its_key() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("replica.key");
        let err = load_node_key(&path, true).unwrap_err();
        assert!(
            matches!(err, KeyFileError::MissingReplicaKey { .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains("replica.key does not exist"),
            "{err}"
        );
        assert!(!path.exists(), "no key was created");
        // The node's first start (unreplicated) creates it; a replica then loads the same.
        let created = load_node_key(&path, false).expect("created");
        let loaded = load_node_key(&path, true).expect("loaded");
        assert_eq!(created.public_key(), loaded.public_key());
    }

    #[test]
    fn a_key_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("node.key");
        let key = load_or_create_key(&path).expect("created");
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            for err in [
                load_or_create_key(&path).unwrap_err(),
                load_node_key(&path, true).unwrap_err(),
            ] {
                let message = err.to_string();
                assert!(matches!(err, KeyFileError::NotOwnerOnly(_)), "{message}");
                assert!(
                    message.contains(&format!("chmod 600 {}", path.display())),
                    "{message}"
                );
                assert!(!message.contains(&key.to_hex()), "{message}");
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(
            load_or_create_key(&path).expect("loaded").public_key(),
            key.public_key()
        );
    }
}
