//! The topology manager's TOML configuration. Unknown keys are errors (`deny_unknown_fields`),
//! so a typo never silently falls back to a default.
//!
//! ```toml
//! member_id = "topology-manager"          # its sequencer identity (default shown)
//! owner_key_file = "keys/owner.key"       # owner signing key; created if missing (not by a replica)
//! key_file = "keys/topology-manager.key"  # its member key; created if missing (not by a replica)
//! sequencer_endpoints = ["http://127.0.0.1:4001"] # every instance; one string also works
//! listen_address = "127.0.0.1:4201"       # gRPC: TopologyAdminService, health, reflection
//! admin_address = "127.0.0.1:4301"        # HTTP: /livez /readyz /status /metrics
//! admin_token = "secret"                  # optional: the owner's token for admin calls (see docs/topology.md)
//!
//! [storage]
//! backend = "sqlite"
//! path = "data/topology.db"
//!
//! [replication]                           # optional: active/passive replicas
//! replica_id = "topology-manager-a"       # this replica; unique among the replicas
//! advertised_endpoint = "http://10.0.0.5:4201"  # default: http://<listen_address>
//! lease_timeout_ms = 700                  # an active not renewing this long is deposed
//! poll_interval_ms = 50                   # how often a passive tries to take over
//! ```
//!
//! Replicas of one manager share `member_id`, the contents of both key files and the database;
//! the lease row is keyed by `member_id`. `key_file` and `sequencer_endpoints` are checked as on
//! every member, by [`MemberConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_core::MemberId;
use meridian_node::config::{Endpoints, InvalidSetting, MemberConfig};
use meridian_node::replica::ReplicaSettings;
// The `[replication]` table is the same on every role; re-exported so it is still named here.
pub use meridian_node::replication::{ReplicationConfig, MAX_LEASE_TIMEOUT_MS};
use meridian_node::tls::TlsConfig;
use meridian_node::AdminHttpConfig;
use meridian_store::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyManagerConfig {
    /// The manager's own sequencer member id.
    #[serde(default = "default_member_id")]
    pub member_id: String,
    /// The synchronizer owner's signing key (64 hex digits), created if missing. Whoever holds
    /// it decides who joins the synchronizer: keep it as private as a CA key.
    pub owner_key_file: PathBuf,
    /// The manager's member key for authenticating to the sequencer, created if missing.
    pub key_file: PathBuf,
    /// gRPC endpoints of the sequencer's instances, e.g. `["http://127.0.0.1:4001"]`
    /// (`sequencer_endpoint = "..."`, one, is accepted too).
    #[serde(alias = "sequencer_endpoint")]
    pub sequencer_endpoints: Endpoints,
    pub listen_address: SocketAddr,
    pub admin_address: SocketAddr,
    /// The owner's token. If set, AddParticipant, AddMediator and unsigned AllocateParty need
    /// `authorization: Bearer <admin_token>`; if not, the first two are open and unsigned
    /// AllocateParty is refused (participants' signed requests never need it; see
    /// `crate::authority`). GetTopology stays open for members catching up. Inline here;
    /// prefer `admin_token_file`, which keeps the token out of the
    /// config file (setting both is an error).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (mode 0600; refused if group or others can read it).
    /// When set, mutating admin HTTP routes (`POST /admin/step-down`) and TopologyAdminService changes need
    /// `authorization: Bearer <token>`. See docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Whether `/status` and `/metrics` also need the admin token (default: open).
    #[serde(default, skip_serializing_if = "AdminHttpConfig::is_default")]
    pub admin_http: AdminHttpConfig,
    pub storage: StorageConfig,
    /// Absent: a single manager, active from the start (no lease, no fencing).
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// TLS of the gRPC and admin HTTP listeners and of this node's clients: certificate
    /// files, or `plaintext = true` explicitly. Absent: refused at load (see docs/tls.md).
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_member_id() -> String {
    "topology-manager".to_owned()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigCheckError {
    #[error(transparent)]
    Load(#[from] meridian_node::config::ConfigError),
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
}

impl TopologyManagerConfig {
    /// Loads and checks a config file; every error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigCheckError> {
        meridian_node::config::load_checked(path, Self::check)
    }

    /// A single manager (no `[replication]`, no admin token) with the default member id.
    pub fn new(
        owner_key_file: PathBuf,
        key_file: PathBuf,
        sequencer_endpoints: Endpoints,
        listen_address: SocketAddr,
        admin_address: SocketAddr,
        storage: StorageConfig,
    ) -> Self {
        Self {
            admin_token_file: None,
            admin_http: Default::default(),
            member_id: default_member_id(),
            owner_key_file,
            key_file,
            sequencer_endpoints,
            listen_address,
            admin_address,
            admin_token: None,
            storage,
            replication: None,
            // Built in code: plaintext, explicitly (written as `[tls] plaintext = true`), until
            // `with_tls`.
            tls: TlsConfig::plaintext(),
        }
    }

    /// Serves (and connects) with `tls`.
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        Self { tls, ..self }
    }

    /// The keys the manager shares with the other member nodes: it holds the owner's key
    /// itself and is what their `topology_endpoints` name.
    pub fn member_config(&self) -> MemberConfig<'_> {
        MemberConfig {
            key_file: &self.key_file,
            owner_public_key: None,
            sequencer_endpoints: &self.sequencer_endpoints,
            topology_endpoints: None,
        }
    }

    /// Checks what the types alone do not: ids, the endpoint, distinct key files.
    pub fn check(&self, path: &str) -> Result<(), ConfigCheckError> {
        let invalid =
            |key, reason: String| ConfigCheckError::from(InvalidSetting::new(path, key, reason));
        self.member()
            .map_err(|e| invalid("member_id", e.to_string()))?;
        self.member_config().check(path)?;
        // One file for both keys would make the manager's member key the owner key: anyone who
        // obtains its (less guarded) member key could then sign topology.
        if self.owner_key_file == self.key_file {
            return Err(invalid(
                "key_file",
                "must differ from owner_key_file: the member key must not be the owner key"
                    .to_owned(),
            ));
        }
        if self.admin_token.as_deref() == Some("") {
            return Err(invalid(
                "admin_token",
                "must not be empty; remove the key to disable the check".to_owned(),
            ));
        }
        if self.listen_address == self.admin_address {
            return Err(invalid(
                "admin_address",
                format!("must differ from listen_address ({})", self.listen_address),
            ));
        }
        if let Some(replication) = &self.replication {
            replication.check().map_err(InvalidSetting::in_file(path))?;
        }
        // Last, so a config from before `[tls]` existed still reports its other errors first.
        self.tls
            .check_in_file(path, &[("sequencer_endpoints", &self.sequencer_endpoints)])?;
        Ok(())
    }

    /// The replica manager's settings, for a replicated manager. The lease is keyed by the
    /// member id: all replicas are the same sequencer member.
    pub fn replica_settings(&self) -> Option<ReplicaSettings> {
        let replication = self.replication.as_ref()?;
        Some(replication.settings(self.member_id.clone(), || self.tls.url(self.listen_address)))
    }

    pub fn member(&self) -> Result<MemberId, meridian_core::IdError> {
        MemberId::new(self.member_id.clone())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const BASE: &str = "owner_key_file = \"owner.key\"\nkey_file = \"tm.key\"\n\
        sequencer_endpoint = \"http://127.0.0.1:4001\"\n\
        listen_address = \"127.0.0.1:4201\"\nadmin_address = \"127.0.0.1:4301\"\n";
    const STORAGE: &str =
        "[tls]\nplaintext = true\n[storage]\nbackend = \"sqlite\"\npath = \"t.db\"\n";

    fn parse(text: &str) -> Result<TopologyManagerConfig, meridian_node::ConfigError> {
        meridian_node::config::parse_toml(text, "tm.toml")
    }

    #[test]
    fn a_built_config_round_trips_through_its_file() {
        let single = TopologyManagerConfig::new(
            PathBuf::from("keys/owner.key"),
            PathBuf::from("keys/topology-manager.key"),
            Endpoints::new(vec!["http://s:1".to_owned(), "http://s:2".to_owned()]),
            "127.0.0.1:4201".parse().unwrap(),
            "127.0.0.1:4301".parse().unwrap(),
            StorageConfig::Sqlite {
                path: "data/topology.db".into(),
            },
        );
        let replicated = TopologyManagerConfig {
            admin_token: Some("secret".into()),
            replication: Some(ReplicationConfig {
                lease_timeout_ms: 2_000,
                ..ReplicationConfig::new("topology-manager-b")
            }),
            ..single.clone()
        };
        meridian_node::config::assert_round_trips(
            "topology.toml",
            [single, replicated],
            TopologyManagerConfig::load,
        );
    }

    #[test]
    fn defaults_and_checks() {
        let config = parse(&format!("{BASE}{STORAGE}")).expect("parses");
        assert_eq!(config.member_id, "topology-manager");
        assert_eq!(config.admin_token, None);
        config.check("tm.toml").expect("valid");

        let bad_id = parse(&format!("member_id = \"a b\"\n{BASE}{STORAGE}")).expect("parses");
        let err = bad_id.check("tm.toml").unwrap_err().to_string();
        assert!(err.starts_with("tm.toml: member_id: "), "{err}");

        let same_keys =
            parse(&format!("{BASE}{STORAGE}").replace("tm.key", "owner.key")).expect("parses");
        let err = same_keys.check("tm.toml").unwrap_err().to_string();
        assert!(err.contains("key_file"), "{err}");

        let bad_endpoint =
            parse(&format!("{BASE}{STORAGE}").replace("http://", "grpc://")).expect("parses");
        let err = bad_endpoint.check("tm.toml").unwrap_err().to_string();
        assert!(err.contains("sequencer_endpoint"), "{err}");
        assert!(config.replica_settings().is_none());
    }

    #[test]
    fn replication_defaults_and_checks() {
        meridian_node::replication::assert_replication_table(
            &format!("{BASE}{STORAGE}"),
            "topology-manager",
            "http://127.0.0.1:4201",
            |toml| {
                let config = parse(toml).map_err(|error| error.to_string())?;
                config.check("tm.toml").map_err(|error| error.to_string())?;
                Ok(config.replica_settings())
            },
        );
    }

    #[test]
    fn unknown_and_missing_keys_are_named() {
        let err = parse(&format!("{BASE}owner_key = \"x\"\n{STORAGE}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `owner_key`"), "{err}");
        let err = parse(BASE).unwrap_err().to_string();
        assert!(err.contains("missing field `storage`"), "{err}");
    }
}
