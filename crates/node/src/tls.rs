//! TLS for every listener and client of a node: the `[tls]` section every role config has
//! ([`TlsConfig`]), loading its files into what the gRPC server (tonic), the admin HTTP server
//! (rustls through tokio-rustls, connections served by hyper-util) and the node's own clients
//! use ([`NodeTls`]), and serving an axum router over TLS ([`serve_router_tls`]).
//!
//! Why the rules: plaintext is possible only when a config says so (`plaintext = true`), and a
//! node then warns at start-up; a config with neither certificates nor that setting is refused,
//! so no node ends up on plaintext because someone forgot a section. A private key readable by
//! group or others is refused, naming the file and the `chmod 600` that fixes it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use meridian_client::tls::ClientTls;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// PEM files larger than this are refused: a certificate chain or key is a few kilobytes.
pub const MAX_PEM_BYTES: u64 = 256 * 1024;

/// A TLS handshake on the admin port that takes longer than this is dropped, so a client that
/// connects and sends nothing cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most admin HTTP connections served at once; further ones wait in the listen backlog.
pub const MAX_ADMIN_CONNECTIONS: usize = 256;

/// Whether the node's listeners ask clients for a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Any client may connect (TLS still authenticates the node to the client).
    #[default]
    None,
    /// Mutual TLS: a client must present a certificate issued by the CA in `ca_file`; the
    /// node's own clients present `cert_file`.
    Required,
}

/// `[tls]` of a role config. Either the certificate files or `plaintext = true`.
///
/// ```toml
/// [tls]
/// cert_file = "tls/sequencer.crt"   # PEM chain this node presents
/// key_file = "tls/sequencer.key"    # PEM private key, mode 0600
/// ca_file = "tls/ca.crt"            # CAs this node trusts as a client (and for client_auth)
/// client_auth = "required"          # optional: mutual TLS
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve and connect without TLS. Only for development and measurements; logged as a
    /// warning at start-up.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "is_none_auth")]
    pub client_auth: ClientAuth,
}

fn is_none_auth(auth: &ClientAuth) -> bool {
    *auth == ClientAuth::None
}

impl TlsConfig {
    /// `[tls] plaintext = true`.
    pub fn plaintext() -> Self {
        Self {
            plaintext: true,
            ..Self::default()
        }
    }

    /// TLS with this node's certificate and key, trusting `ca_file`.
    pub fn files(cert_file: PathBuf, key_file: PathBuf, ca_file: PathBuf) -> Self {
        Self {
            cert_file: Some(cert_file),
            key_file: Some(key_file),
            ca_file: Some(ca_file),
            ..Self::default()
        }
    }

    /// Requires client certificates (mutual TLS).
    pub fn with_client_auth(mut self) -> Self {
        self.client_auth = ClientAuth::Required;
        self
    }

    /// Whether this node's listeners serve TLS.
    pub fn is_enabled(&self) -> bool {
        !self.plaintext
    }

    /// The URL scheme of this node's endpoints: `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.is_enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// `scheme://address`, how clients reach a listener of this node.
    pub fn url(&self, address: impl std::fmt::Display) -> String {
        format!("{}://{address}", self.scheme())
    }

    /// Refuses a section that is neither TLS nor explicit plaintext, plaintext mixed with TLS
    /// files, half an identity, and client_auth without a CA. `(key, reason)` as
    /// [`crate::config::InvalidSetting::in_file`] takes it.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let any_file =
            self.cert_file.is_some() || self.key_file.is_some() || self.ca_file.is_some();
        if self.plaintext {
            if any_file || self.client_auth != ClientAuth::None {
                return Err((
                    "tls.plaintext",
                    "plaintext = true cannot be combined with cert_file, key_file, ca_file or client_auth; choose one".into(),
                ));
            }
            return Ok(());
        }
        if self.cert_file.is_none() && self.key_file.is_none() {
            return Err((
                "tls",
                "no TLS configured: set [tls] cert_file and key_file (and ca_file), e.g. from \
                 `meridian certs`, or serve plaintext explicitly with [tls] plaintext = true"
                    .into(),
            ));
        }
        if self.cert_file.is_none() {
            return Err((
                "tls.cert_file",
                "key_file is set but cert_file is not".into(),
            ));
        }
        if self.key_file.is_none() {
            return Err((
                "tls.key_file",
                "cert_file is set but key_file is not".into(),
            ));
        }
        if self.client_auth == ClientAuth::Required && self.ca_file.is_none() {
            return Err((
                "tls.ca_file",
                "client_auth = \"required\" needs ca_file, the CA client certificates must come from".into(),
            ));
        }
        Ok(())
    }

    /// Refuses endpoints that do not match this section: `https://` without a `ca_file` to
    /// check the peer with, `http://` on a node that is not explicitly plaintext. `key` names
    /// the endpoints' setting.
    pub fn check_endpoints<'a>(
        &self,
        key: &'static str,
        endpoints: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), (&'static str, String)> {
        for endpoint in endpoints {
            if endpoint.starts_with("https://") && self.ca_file.is_none() {
                return Err((
                    key,
                    format!("{endpoint:?} is https:// but [tls] has no ca_file to check its certificate with"),
                ));
            }
            if endpoint.starts_with("http://") && !self.plaintext {
                return Err((
                    key,
                    format!("{endpoint:?} is plaintext http:// but this node uses TLS; use https:// (or [tls] plaintext = true)"),
                ));
            }
        }
        Ok(())
    }

    /// [`Self::check`] and [`Self::check_endpoints`] for each `(key, endpoints)`, as the
    /// error every role's config check returns.
    pub fn check_in_file(
        &self,
        path: &str,
        endpoints: &[(&'static str, &crate::config::Endpoints)],
    ) -> Result<(), crate::config::InvalidSetting> {
        let in_file = crate::config::InvalidSetting::in_file(path);
        self.check().map_err(&in_file)?;
        for (key, list) in endpoints {
            self.check_endpoints(key, list.as_slice())
                .map_err(&in_file)?;
        }
        Ok(())
    }

    /// Reads the files (refusing a key readable by others) and prepares the server and client
    /// settings. Logs a warning when plaintext.
    pub fn load(&self) -> Result<NodeTls, TlsError> {
        if self.plaintext {
            return Ok(NodeTls::default());
        }
        let (Some(cert_file), Some(key_file)) = (&self.cert_file, &self.key_file) else {
            return Err(TlsError::NotConfigured);
        };
        let cert_pem = read_pem(cert_file)?;
        let key_pem = read_private_pem(key_file)?;
        let ca_pem = self.ca_file.as_deref().map(read_pem).transpose()?;
        let client_ca = match self.client_auth {
            ClientAuth::Required => ca_pem.clone(),
            ClientAuth::None => None,
        };
        let server =
            ServerTls::new(cert_pem.clone(), key_pem.clone(), client_ca).map_err(|reason| {
                TlsError::Invalid {
                    path: cert_file.clone(),
                    reason,
                }
            })?;
        let client = ca_pem.map(|ca| {
            let tls = ClientTls::new(ca);
            match self.client_auth {
                // Nodes that require client certificates get this node's own.
                ClientAuth::Required => tls.with_identity(cert_pem, key_pem),
                ClientAuth::None => tls,
            }
        });
        Ok(NodeTls {
            server: Some(Arc::new(server)),
            client,
        })
    }

    /// [`Self::load`] for a node starting: warns when plaintext and installs the client
    /// settings as the process default, so every connection to another node uses them.
    pub fn start(&self, role: &str) -> Result<NodeTls, TlsError> {
        let tls = self.load()?;
        if self.plaintext {
            tracing::warn!(
                role,
                "TLS is OFF ([tls] plaintext = true): gRPC and admin HTTP are served in plaintext"
            );
        }
        if let Some(client) = &tls.client {
            meridian_client::tls::install_default(client.clone());
        }
        Ok(tls)
    }
}

/// Why TLS files could not be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no TLS configured: set [tls] cert_file and key_file, or [tls] plaintext = true")]
    NotConfigured,
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A private key group or others can access (the rule every secret file follows).
    #[error(transparent)]
    KeyPermissions(#[from] crate::secrets::SecretFileError),
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read as _;
    let read_err = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Invalid {
            path: path.to_path_buf(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes; not a PEM file"),
        });
    }
    Ok(bytes)
}

/// Reads a private key, refusing one that group or others may read.
fn read_private_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    check_private(path)?;
    read_pem(path)
}

/// Refuses a private file whose mode lets group or others read it (see [`crate::secrets`]).
pub fn check_private(path: &Path) -> Result<(), TlsError> {
    crate::secrets::check_owner_only(path, "key")?;
    Ok(())
}

/// What a node's listeners serve TLS with, checked when built.
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_auth", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From a PEM certificate chain and key; with `client_ca_pem`, clients must present a
    /// certificate issued by one of its CAs. The reason is one line.
    pub fn new(
        cert_pem: Vec<u8>,
        key_pem: Vec<u8>,
        client_ca_pem: Option<Vec<u8>>,
    ) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
        if chain.is_empty() {
            return Err("holds no certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("the key file holds no usable PEM private key: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &client_ca_pem {
            Some(ca_pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca_pem) {
                    let cert = cert.map_err(|e| format!("ca_file is not PEM: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("ca_file holds an unusable CA certificate: {e}"))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("ca_file: {e}"))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| format!("certificate and key do not work together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            client_ca_pem,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The settings for tonic's gRPC server.
    pub fn tonic_config(&self) -> tonic::transport::ServerTlsConfig {
        let config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(HANDSHAKE_TIMEOUT);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }

    /// The acceptor for the admin HTTP port.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }
}

/// A node's loaded TLS: what its listeners serve with (none when plaintext) and what its
/// clients of other nodes use (none without a `ca_file`).
#[derive(Debug, Clone, Default)]
pub struct NodeTls {
    pub server: Option<Arc<ServerTls>>,
    pub client: Option<ClientTls>,
}

/// Serves `router` over TLS on `listener` until `shutdown`, then lets open connections finish
/// for up to `grace`. Handshakes are bounded by [`HANDSHAKE_TIMEOUT`], connections by
/// [`MAX_ADMIN_CONNECTIONS`]; a failed handshake (a plaintext client, an unknown CA, a missing
/// client certificate) closes that connection only.
pub async fn serve_router_tls(
    listener: TcpListener,
    router: axum::Router,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;

    let addr = listener
        .local_addr()
        .context("TLS listener has no local address")?;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.context("connection slots closed")?,
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%addr, %error, "cannot accept an admin HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tls.acceptor();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "admin HTTP TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "admin HTTP TLS handshake timed out");
                        return;
                    }
                };
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(error) = watcher.watch(connection).await {
                tracing::debug!(%peer, %error, "admin HTTP connection ended with an error");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(%addr, grace_ms = grace.as_millis() as u64, "admin HTTP requests still open at shutdown; dropping them");
        }
    }
    Ok(())
}
