//! Development certificates (`meridian certs`, and every lab deployment): a fresh CA and, per
//! node, a certificate for `localhost`, `127.0.0.1` and the hosts given, usable both as a
//! server certificate and as a client certificate (mutual TLS between nodes). Written as PEM
//! files; private keys with mode 0600, which is what [`crate::tls`] demands of a key file.
//!
//! Why one function for both: the lab and operators trying Meridian by hand get the same
//! layout, so the docs' `grpcurl -cacert DIR/ca.crt` line works for both.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// File name of the CA certificate in the output directory.
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the CA's private key in the output directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Most nodes one call writes certificates for; a deployment has a few dozen at most.
pub const MAX_NODES: usize = 256;

/// A node to write a certificate for: its name (file names and common name) and the host
/// names or IP addresses it is reached at besides `localhost` and `127.0.0.1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub hosts: Vec<String>,
}

impl std::str::FromStr for NodeSpec {
    type Err = String;

    /// `NAME` or `NAME=host,host,...`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, hosts) = match text.split_once('=') {
            Some((name, hosts)) => (
                name,
                hosts
                    .split(',')
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => (text, Vec::new()),
        };
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !name.starts_with('.');
        if !valid {
            return Err(format!(
                "node name {name:?} must be letters, digits, '-', '_' or '.' (it names files)"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            hosts,
        })
    }
}

/// The files written for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    pub name: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Everything [`write_dev_certs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    pub ca_cert_file: PathBuf,
    pub ca_key_file: PathBuf,
    pub nodes: Vec<NodeFiles>,
}

impl DevCerts {
    /// The files of node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeFiles> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Every file written, for printing.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.ca_cert_file.as_path(), self.ca_key_file.as_path()];
        for node in &self.nodes {
            files.push(&node.cert_file);
            files.push(&node.key_file);
        }
        files
    }
}

/// Writes a new development CA and a certificate + key per node into `out` (created if
/// missing): `ca.crt`, `ca.key`, `NAME.crt`, `NAME.key`. Existing files are overwritten.
pub fn write_dev_certs(out: &Path, nodes: &[NodeSpec]) -> anyhow::Result<DevCerts> {
    DevCa::generate()?.write(out, nodes)
}

/// A development CA held in memory, so one process (the lab) can issue certificates for
/// several deployments under one CA its clients trust from the start.
pub struct DevCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for DevCa {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedPem {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedPem").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA (ECDSA P-256).
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Meridian development CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let cert = params
            .self_signed(&key)
            .context("signing the CA certificate")?;
        Ok(Self { cert, key })
    }

    /// The CA certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `node`, for `localhost`, `127.0.0.1` and its hosts, usable as server
    /// and client certificate.
    pub fn issue(&self, node: &NodeSpec) -> anyhow::Result<IssuedPem> {
        let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        for host in &node.hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        let mut params = CertificateParams::new(names)
            .with_context(|| format!("the hosts of node {}", node.name))?;
        params
            .distinguished_name
            .push(DnType::CommonName, node.name.as_str());
        // Server and client: nodes are clients of each other under mutual TLS.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params);
        let key = KeyPair::generate().context("generating a node key")?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .with_context(|| format!("signing the certificate of node {}", node.name))?;
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes the CA (`ca.crt`, `ca.key`) and a new certificate + key per node into `out`.
    pub fn write(&self, out: &Path, nodes: &[NodeSpec]) -> anyhow::Result<DevCerts> {
        anyhow::ensure!(
            nodes.len() <= MAX_NODES,
            "{} nodes; at most {MAX_NODES} per call",
            nodes.len()
        );
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let ca_cert_file = out.join(CA_CERT_FILE);
        let ca_key_file = out.join(CA_KEY_FILE);
        write_public(&ca_cert_file, self.cert.pem().as_bytes())?;
        write_private(&ca_key_file, self.key.serialize_pem().as_bytes())?;
        let mut written = Vec::with_capacity(nodes.len());
        for node in nodes {
            let issued = self.issue(node)?;
            written.push(write_issued(out, &node.name, &issued)?);
        }
        Ok(DevCerts {
            ca_cert_file,
            ca_key_file,
            nodes: written,
        })
    }
}

/// Writes `issued` as `out/NAME.crt` and `out/NAME.key` (mode 0600).
pub fn write_issued(out: &Path, name: &str, issued: &IssuedPem) -> anyhow::Result<NodeFiles> {
    let cert_file = out.join(format!("{name}.crt"));
    let key_file = out.join(format!("{name}.key"));
    write_public(&cert_file, issued.cert_pem.as_bytes())?;
    write_private(&key_file, issued.key_pem.as_bytes())?;
    Ok(NodeFiles {
        name: name.to_owned(),
        cert_file,
        key_file,
    })
}

/// From a day ago (clock skew between machines) to two years on: development certificates
/// expire rather than living forever.
fn set_validity(params: &mut CertificateParams) {
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (year, month, day) = civil_from_days((now_s / 86_400) as i64 - 1);
    params.not_before = rcgen::date_time_ymd(year, month, day);
    params.not_after = rcgen::date_time_ymd(year + 2, month, day.min(28));
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as i32, month as u8, day as u8)
}

fn write_public(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a private key readable by the owner only, from its creation on.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open; make it private either way.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod 600 {}", path.display()))?;
    }
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn node_specs_parse() {
        let spec: NodeSpec = "seq-0=a.example,10.0.0.5".parse().expect("parses");
        assert_eq!(spec.name, "seq-0");
        assert_eq!(spec.hosts, vec!["a.example", "10.0.0.5"]);
        assert!("../x".parse::<NodeSpec>().is_err());
        assert!("".parse::<NodeSpec>().is_err());
    }
}
