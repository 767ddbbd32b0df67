//! TLS for deployments the lab starts (`up`, `demo`, drills, benches, tests): a development CA
//! and a certificate per node under `<data>/tls/` ([`deployment_certs`]), every node's `[tls]`
//! with mutual TLS on ([`node_config`]), and the lab's own clients — gRPC through the process
//! default of `meridian_client::tls`, admin HTTP through [`http`] — presenting the `lab`
//! certificate and trusting only that CA.
//!
//! One CA per lab process, created on first use and written into every deployment's
//! `<data>/tls/`, so the lab's clients trust every deployment it starts from the first moment
//! (a client built before a deployment starts still works), one `lab` certificate, and one
//! `controller` certificate (the controller's HTTP API, see
//! `crate::controller::command::tls_config`) — the same
//! files each time a process writes them, so a controller that loaded its certificate before
//! its deployment's first start serves what the files say.
//!
//! TLS is the default; [`set_plaintext`] (the benches' `--plaintext`) turns a whole run to
//! explicit plaintext so TLS and plaintext can be measured side by side. The state is
//! process-wide because a lab process drives one deployment at a time and its many pollers
//! and clients must agree on the scheme.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use meridian_client::tls::ClientTls;
use meridian_node::certs::{write_issued, DevCa, DevCerts, IssuedPem, NodeSpec, CA_CERT_FILE};
use meridian_node::tls::TlsConfig;

/// Where a deployment's certificates live, under its data directory.
pub const TLS_DIR: &str = "tls";
/// The certificate the lab itself presents to nodes that require client certificates.
pub const LAB_CLIENT: &str = "lab";
/// The certificate the controller's HTTP API serves (every replica of a deployment's
/// controller: they run on this machine, reached at `localhost`/`127.0.0.1`).
pub const CONTROLLER_CERT_NAME: &str = "controller";
/// Timeout of one admin HTTP request of the lab.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

struct State {
    plaintext: bool,
    client: Option<ClientTls>,
    http: reqwest::Client,
}

static STATE: RwLock<Option<Arc<State>>> = RwLock::new(None);

/// The lab process's CA and its own client certificate.
struct LabIdentity {
    ca: DevCa,
    lab: IssuedPem,
    controller: IssuedPem,
}

static IDENTITY: std::sync::OnceLock<Result<LabIdentity, String>> = std::sync::OnceLock::new();

fn identity() -> anyhow::Result<&'static LabIdentity> {
    IDENTITY
        .get_or_init(|| {
            let make = || -> anyhow::Result<LabIdentity> {
                let ca = DevCa::generate()?;
                let lab = ca.issue(&LAB_CLIENT.parse().map_err(anyhow::Error::msg)?)?;
                let controller =
                    ca.issue(&CONTROLLER_CERT_NAME.parse().map_err(anyhow::Error::msg)?)?;
                Ok(LabIdentity {
                    ca,
                    lab,
                    controller,
                })
            };
            make().map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot create the lab's TLS identity: {e}"))
}

/// The TLS state of this process: plaintext, a deployment loaded from files, or (first use)
/// the lab's own CA.
fn state() -> Option<Arc<State>> {
    if let Some(state) = STATE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
    {
        return Some(state);
    }
    let identity = identity().ok()?;
    let client = ClientTls::new(identity.ca.cert_pem())
        .with_identity(identity.lab.cert_pem.clone(), identity.lab.key_pem.clone());
    let http = build_http(Some(&client)).ok()?;
    meridian_client::tls::install_default(client.clone());
    let mut slot = STATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Some(
        slot.get_or_insert_with(|| {
            Arc::new(State {
                plaintext: false,
                client: Some(client),
                http,
            })
        })
        .clone(),
    )
}

fn set_state(state: State) {
    *STATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(state));
}

/// Runs every deployment this process starts from now on in plaintext (`[tls] plaintext =
/// true`, `http://`), for the benches' `--plaintext`.
pub fn set_plaintext() -> anyhow::Result<()> {
    set_state(State {
        plaintext: true,
        client: None,
        http: build_http(None)?,
    });
    Ok(())
}

/// Whether this process runs deployments in plaintext.
pub fn is_plaintext() -> bool {
    STATE
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .is_some_and(|s| s.plaintext)
}

/// `https` (the default) or `http` under [`set_plaintext`].
pub fn scheme() -> &'static str {
    if is_plaintext() {
        "http"
    } else {
        "https"
    }
}

/// `scheme://address`.
pub fn url(address: impl std::fmt::Display) -> String {
    format!("{}://{address}", scheme())
}

/// The directory of a deployment's certificates.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(TLS_DIR)
}

/// Writes the lab's CA, a new certificate per node, the lab's own and the controller's into
/// `<data>/tls`; nothing under [`set_plaintext`].
pub fn deployment_certs(data_dir: &Path, nodes: &[String]) -> anyhow::Result<Option<DevCerts>> {
    if is_plaintext() {
        return Ok(None);
    }
    let specs: Vec<NodeSpec> = nodes
        .iter()
        .map(|name| name.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let identity = identity()?;
    let dir = tls_dir(data_dir);
    let mut certs = identity
        .ca
        .write(&dir, &specs)
        .context("writing the deployment's TLS certificates")?;
    certs
        .nodes
        .push(write_issued(&dir, LAB_CLIENT, &identity.lab)?);
    certs.nodes.push(write_issued(
        &dir,
        CONTROLLER_CERT_NAME,
        &identity.controller,
    )?);
    // Make sure this process's clients use the lab identity (installs the gRPC default).
    let _ = state();
    Ok(Some(certs))
}

/// Makes this process's clients trust the CA of the deployment in `data_dir` and present the
/// lab certificate: for commands (`meridian admin`) that talk to a deployment another process
/// started. A data directory without certificates leaves plaintext.
pub fn use_deployment(data_dir: &Path) -> anyhow::Result<()> {
    if is_plaintext() {
        return Ok(());
    }
    let dir = tls_dir(data_dir);
    let ca_file = dir.join(CA_CERT_FILE);
    if !ca_file.exists() {
        return Ok(());
    }
    let read =
        |path: PathBuf| std::fs::read(&path).with_context(|| format!("reading {}", path.display()));
    let ca = read(ca_file)?;
    if let Some(Ok(identity)) = IDENTITY.get() {
        if identity.ca.cert_pem().as_bytes() == ca.as_slice() {
            // This process made the deployment: its clients already trust it.
            return Ok(());
        }
    }
    let cert = read(dir.join(format!("{LAB_CLIENT}.crt")))?;
    meridian_node::tls::check_private(&dir.join(format!("{LAB_CLIENT}.key")))?;
    let key = read(dir.join(format!("{LAB_CLIENT}.key")))?;
    let client = ClientTls::new(ca).with_identity(cert, key);
    let http = build_http(Some(&client))?;
    meridian_client::tls::install_default(client.clone());
    set_state(State {
        plaintext: false,
        client: Some(client),
        http,
    });
    Ok(())
}

/// The node name standalone processes ([`crate::launch::NodeProcess::sequencer`]) share.
pub const STANDALONE_NODE: &str = "node";

/// The `[tls]` of a standalone process launched in `dir`: one CA and node certificate per
/// directory, written on first use, so several processes in one directory trust each other.
pub fn standalone_node_config(dir: &Path) -> anyhow::Result<TlsConfig> {
    if is_plaintext() {
        return Ok(TlsConfig::plaintext());
    }
    if tls_dir(dir).join(CA_CERT_FILE).exists() {
        use_deployment(dir)?;
    } else {
        deployment_certs(dir, &[STANDALONE_NODE.to_owned()])?;
    }
    Ok(node_config(dir, STANDALONE_NODE))
}

/// The `[tls]` of node `name` of the deployment in `data_dir`: its certificate, the CA, and
/// mutual TLS; explicit plaintext under [`set_plaintext`].
pub fn node_config(data_dir: &Path, name: &str) -> TlsConfig {
    if is_plaintext() {
        return TlsConfig::plaintext();
    }
    let dir = tls_dir(data_dir);
    TlsConfig::files(
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(CA_CERT_FILE),
    )
    .with_client_auth()
}

/// The lab's admin HTTP client: trusts the deployment's CA only and presents the lab
/// certificate. Cheap to clone (one connection pool).
pub fn http() -> anyhow::Result<reqwest::Client> {
    match state() {
        Some(state) => Ok(state.http.clone()),
        None => build_http(None),
    }
}

/// A builder for an admin HTTP client with the lab's TLS settings, for callers that need
/// other timeouts than [`http`]'s.
pub fn http_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let client = state().and_then(|s| s.client.clone());
    tls_builder(reqwest::Client::builder().no_proxy(), client.as_ref())
}

fn build_http(tls: Option<&ClientTls>) -> anyhow::Result<reqwest::Client> {
    tls_builder(
        reqwest::Client::builder().no_proxy().timeout(HTTP_TIMEOUT),
        tls,
    )?
    .build()
    .context("cannot build an HTTP client")
}

fn tls_builder(
    builder: reqwest::ClientBuilder,
    tls: Option<&ClientTls>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = builder.tls_built_in_root_certs(false);
    if let Some(tls) = tls {
        builder = builder.add_root_certificate(
            reqwest::Certificate::from_pem(&tls.ca_pem).context("the deployment's CA")?,
        );
        if let Some(identity) = &tls.identity {
            let mut pem = identity.cert_pem.clone();
            pem.extend_from_slice(&identity.key_pem);
            builder = builder.identity(
                reqwest::Identity::from_pem(&pem).context("the lab's client certificate")?,
            );
        }
    }
    Ok(builder)
}
