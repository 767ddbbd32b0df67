//! How a client reaches a node over TLS: [`ClientTls`] holds the trust anchors (the CA
//! certificates, PEM) a client checks a node's certificate against and, for mutual TLS, the
//! client's own certificate and key. Every channel this crate builds goes through
//! [`endpoint`]: an `http://` endpoint is plaintext, an `https://` endpoint is TLS with the
//! explicitly given [`ClientTls`] or else the process default ([`install_default`]).
//!
//! Why a process default: a node process has one identity (its `[tls]` section) and reaches
//! every other node (sequencer instances, topology replicas, mediators) with it, through many
//! call paths; installing it once at start-up keeps every one of them on TLS without threading
//! it through each. Callers that need another identity (tests, tools talking to two
//! deployments) pass one explicitly, which always wins. An `https://` endpoint with no TLS
//! settings at all is a configuration error, never a silent downgrade.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::error::ClientError;

/// A client certificate and its private key, both PEM, presented to nodes that require
/// client certificates (`client_auth = "required"`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .finish_non_exhaustive()
    }
}

/// TLS settings of a client: whom to trust and, for mutual TLS, who the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificates of the CAs whose node certificates this client accepts.
    pub ca_pem: Vec<u8>,
    /// Presented when a node asks for a client certificate.
    pub identity: Option<ClientIdentity>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca_pem`; presents no client certificate.
    pub fn new(ca_pem: impl Into<Vec<u8>>) -> Self {
        Self {
            ca_pem: ca_pem.into(),
            identity: None,
        }
    }

    /// Presents `cert_pem` (with its `key_pem`) to nodes that require a client certificate.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(ClientIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// The tonic TLS settings for a channel.
    pub fn tonic_config(&self) -> ClientTlsConfig {
        self.tonic_config_within(HANDSHAKE_TIMEOUT)
    }

    /// [`Self::tonic_config`] with its own bound on the handshake.
    pub fn tonic_config_within(&self, handshake_timeout: Duration) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(handshake_timeout);
        match &self.identity {
            Some(identity) => {
                config.identity(Identity::from_pem(&identity.cert_pem, &identity.key_pem))
            }
            None => config,
        }
    }
}

static DEFAULT: RwLock<Option<Arc<ClientTls>>> = RwLock::new(None);

/// Makes `tls` what every `https://` channel of this process uses unless given its own. A
/// node installs its `[tls]` client settings at start-up; the lab installs its deployment's.
pub fn install_default(tls: ClientTls) {
    let mut slot = DEFAULT
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *slot = Some(Arc::new(tls));
}

/// The process default installed with [`install_default`], if any.
pub fn default_tls() -> Option<Arc<ClientTls>> {
    DEFAULT
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// An endpoint for `url`: plaintext for `http://`, TLS for `https://` with `tls` or the
/// process default. `what` names the endpoint in errors (e.g. "sequencer endpoint").
pub fn endpoint(url: &str, tls: Option<&ClientTls>, what: &str) -> Result<Endpoint, ClientError> {
    endpoint_within(url, tls, what, HANDSHAKE_TIMEOUT)
}

/// [`endpoint`] whose TLS handshake must finish within `handshake_timeout`.
pub fn endpoint_within(
    url: &str,
    tls: Option<&ClientTls>,
    what: &str,
    handshake_timeout: Duration,
) -> Result<Endpoint, ClientError> {
    let parsed = Endpoint::from_shared(url.to_owned())
        .map_err(|e| ClientError::InvalidConfig(format!("{what} {url:?} is not a URI: {e}")))?;
    match parsed.uri().scheme_str() {
        Some("http") => Ok(parsed),
        Some("https") => {
            let default = default_tls();
            let Some(tls) = tls.or(default.as_deref()) else {
                return Err(ClientError::InvalidConfig(format!(
                    "{what} {url:?} is https:// but no CA is configured to check its certificate \
                     (set [tls] ca_file, or use an http:// endpoint with [tls] plaintext = true)"
                )));
            };
            parsed
                .tls_config(tls.tonic_config_within(handshake_timeout))
                .map_err(|e| {
                    ClientError::InvalidConfig(format!("{what} {url:?}: TLS settings: {e}"))
                })
        }
        _ => Err(ClientError::InvalidConfig(format!(
            "{what} {url:?} must start with http:// or https://"
        ))),
    }
}

/// How long a TLS handshake may take before a connection attempt counts as failed; bounded
/// like every other wait.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
