//! Key files: generating a development EdDSA key pair (private key PKCS#8 PEM, mode 0600; the
//! public key as a JWKS and as SPKI PEM, either of which a participant's `[ledger_auth]` can
//! point at), reading a private key only when nobody but its owner can read it, and the key id
//! (`kid`) both sides derive from the public key.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

/// File names `write_key_pair` uses in its directory.
pub const PRIVATE_KEY_FILE: &str = "ledger-auth.key";
pub const JWKS_FILE: &str = "ledger-auth.jwks.json";
pub const PUBLIC_PEM_FILE: &str = "ledger-auth.pub.pem";

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// SubjectPublicKeyInfo prefix of an Ed25519 public key, followed by its 32 bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("private key file {path} is readable by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    Readable { path: String, mode: u32 },
    #[error("reading key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("writing key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a PEM key: {reason}")]
    NotPem { path: String, reason: String },
    #[error("the system random generator failed")]
    Random,
}

/// The key id of a public key: a short hash, the same wherever it is computed.
pub fn key_id(public_key: &[u8]) -> String {
    let hash = blake3::hash(public_key);
    format!("k-{}", &hex::encode(hash.as_bytes())[..16])
}

/// Reads a private key file, refusing one that group or others may read.
pub fn read_private_key(path: &Path) -> Result<String, KeyFileError> {
    let shown = path.display().to_string();
    let metadata = std::fs::metadata(path).map_err(|source| KeyFileError::Read {
        path: shown.clone(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::Readable { path: shown, mode });
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: shown,
        source,
    })
}

/// PEM text of DER bytes under `label`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The label and DER bytes of the first PEM block in `text`.
pub fn pem_decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text.lines().map(str::trim).skip_while(|l| l.is_empty());
    let begin = lines.next().ok_or("the file is empty")?;
    let label = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.strip_suffix("-----"))
        .ok_or("no -----BEGIN ...----- line")?;
    let end = format!("-----END {label}-----");
    let mut body = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = STANDARD
                .decode(body.as_bytes())
                .map_err(|e| format!("the PEM body is not base64: {e}"))?;
            return Ok((label.to_owned(), der));
        }
        body.push_str(line);
    }
    Err(format!("no {end} line"))
}

/// A freshly generated EdDSA key pair, as file contents.
#[derive(Clone)]
pub struct GeneratedKeyPair {
    pub kid: String,
    /// PKCS#8 PEM (`PRIVATE KEY`).
    pub private_pem: String,
    /// SPKI PEM (`PUBLIC KEY`).
    pub public_pem: String,
    /// `{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ..., "kid": ..., "alg": "EdDSA", "use": "sig"}]}`
    pub jwks: String,
}

impl std::fmt::Debug for GeneratedKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKeyPair")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A new Ed25519 key pair.
pub fn generate_ed25519() -> Result<GeneratedKeyPair, KeyFileError> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| KeyFileError::Random)?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyFileError::Random)?;
    let public = pair.public_key().as_ref().to_vec();
    let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
    pkcs8.extend_from_slice(&seed);
    let mut spki = ED25519_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(&public);
    let kid = key_id(&public);
    let jwks = serde_json::json!({
        "keys": [{
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&public),
            "kid": kid,
            "alg": "EdDSA",
            "use": "sig",
        }]
    });
    Ok(GeneratedKeyPair {
        kid,
        private_pem: pem_encode("PRIVATE KEY", &pkcs8),
        public_pem: pem_encode("PUBLIC KEY", &spki),
        jwks: format!("{jwks:#}\n"),
    })
}

/// Where `write_key_pair` put the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPairFiles {
    pub kid: String,
    pub private_key: PathBuf,
    pub jwks: PathBuf,
    pub public_pem: PathBuf,
}

impl KeyPairFiles {
    /// The files `write_key_pair` writes in `dir`.
    pub fn in_dir(dir: &Path, kid: String) -> Self {
        Self {
            kid,
            private_key: dir.join(PRIVATE_KEY_FILE),
            jwks: dir.join(JWKS_FILE),
            public_pem: dir.join(PUBLIC_PEM_FILE),
        }
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), KeyFileError> {
    let error = |source| KeyFileError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(error)?;
    // `mode` applies only to a new file: an existing one is narrowed explicitly.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(error)?;
    }
    file.write_all(contents.as_bytes()).map_err(error)
}

/// Generates an Ed25519 key pair into `dir` (created 0700 if missing): the private key 0600,
/// the JWKS and public PEM 0644.
pub fn write_key_pair(dir: &Path) -> Result<KeyPairFiles, KeyFileError> {
    let error = |source| KeyFileError::Write {
        path: dir.display().to_string(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(error)?;
    let pair = generate_ed25519()?;
    let files = KeyPairFiles::in_dir(dir, pair.kid.clone());
    write_file(&files.private_key, &pair.private_pem, 0o600)?;
    write_file(&files.jwks, &pair.jwks, 0o644)?;
    write_file(&files.public_pem, &pair.public_pem, 0o644)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der: Vec<u8> = (0..=200).collect();
        let (label, back) = pem_decode(&pem_encode("PRIVATE KEY", &der)).expect("decodes");
        assert_eq!(label, "PRIVATE KEY");
        assert_eq!(back, der);
    }

    #[cfg(unix)]
    #[test]
    fn a_private_key_others_can_read_is_refused_naming_the_file_and_chmod() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_key_pair(dir.path()).expect("key pair");
        let mode = std::fs::metadata(&files.private_key)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        read_private_key(&files.private_key).expect("0600 is accepted");
        std::fs::set_permissions(&files.private_key, std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let error = read_private_key(&files.private_key)
            .expect_err("0644 is refused")
            .to_string();
        assert!(
            error.contains(&files.private_key.display().to_string()),
            "{error}"
        );
        assert!(error.contains("chmod 600"), "{error}");
        assert!(error.contains("644"), "{error}");
    }
}
