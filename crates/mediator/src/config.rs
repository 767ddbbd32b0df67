//! The mediator's TOML configuration. Unknown keys are errors (`deny_unknown_fields`), so a
//! typo never silently falls back to a default.
//!
//! ```toml
//! member_id = "mediator"                       # its sequencer member id (default "mediator")
//! key_file = "data/mediator.key"               # ed25519 seed as hex; created if missing (not by a replica)
//! owner_public_key = "5f1c…"                   # the synchronizer owner's key, hex
//! sequencer_endpoints = ["http://127.0.0.1:4001"] # every instance; one string also works
//! topology_endpoints = ["http://127.0.0.1:4301"] # the topology manager's replicas
//! admin_address = "127.0.0.1:4201"             # HTTP: /livez /readyz /status /metrics
//! response_timeout_ms = 10000                  # a request's deadline after its sequencing
//! time_proof_interval_ms = 500                 # quiet time before asking for a time proof
//!
//! [storage]
//! backend = "sqlite"
//! path = "data/mediator.db"
//!
//! [replication]                                # optional: active/passive replicas
//! replica_id = "mediator-a"                    # this replica; unique among the replicas
//! advertised_endpoint = "http://10.0.0.5:4201" # default: http://<admin_address>
//! lease_timeout_ms = 700                       # an active not renewing this long is deposed
//! poll_interval_ms = 50                        # how often a passive tries to take over
//! ```
//!
//! Replicas of one mediator share `member_id`, the key file's contents and the database; the
//! lease row is keyed by `member_id`. The member keys (`key_file` to `topology_endpoints`) are
//! checked as on every member, by [`MemberConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_core::crypto::PublicKey;
use meridian_core::MemberId;
use meridian_node::config::{Endpoints, InvalidSetting, MemberConfig, MemberEndpoints};
use meridian_node::replica::ReplicaSettings;
// The `[replication]` table is the same on every role; re-exported so it is still named here.
pub use meridian_node::replication::{ReplicationConfig, MAX_LEASE_TIMEOUT_MS};
use meridian_node::tls::TlsConfig;
use meridian_node::AdminHttpConfig;
use meridian_store::StorageConfig;
use serde::{Deserialize, Serialize};

/// Longest response timeout accepted: a day. Longer ones are almost certainly a unit mistake,
/// and every pending request holds contract locks on the participants until it is decided.
pub const MAX_RESPONSE_TIMEOUT_MS: u64 = 24 * 60 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MediatorConfig {
    #[serde(default = "default_member_id")]
    pub member_id: MemberId,
    pub key_file: PathBuf,
    /// Hex of the synchronizer owner's ed25519 public key; topology is verified against it.
    pub owner_public_key: String,
    /// The sequencer's instances (`sequencer_endpoint = "..."`, one, is accepted too).
    #[serde(alias = "sequencer_endpoint")]
    pub sequencer_endpoints: Endpoints,
    /// The topology manager's replicas (`topology_endpoint = "..."`, one, is accepted too).
    #[serde(alias = "topology_endpoint")]
    pub topology_endpoints: Endpoints,
    pub admin_address: SocketAddr,
    /// A file holding the admin token (mode 0600; refused if group or others can read it).
    /// When set, mutating admin HTTP routes (`POST /admin/step-down`) need
    /// `authorization: Bearer <token>`. See docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Whether `/status` and `/metrics` also need the admin token (default: open).
    #[serde(default, skip_serializing_if = "AdminHttpConfig::is_default")]
    pub admin_http: AdminHttpConfig,
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    #[serde(default = "default_time_proof_interval_ms")]
    pub time_proof_interval_ms: u64,
    pub storage: StorageConfig,
    /// Absent: a single mediator, active from the start (no lease, no fencing).
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// TLS of the gRPC and admin HTTP listeners and of this node's clients: certificate
    /// files, or `plaintext = true` explicitly. Absent: refused at load (see docs/tls.md).
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_member_id() -> MemberId {
    MemberId::new("mediator").expect("a valid literal id")
}

fn default_response_timeout_ms() -> u64 {
    10_000
}

fn default_time_proof_interval_ms() -> u64 {
    500
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigCheckError {
    #[error(transparent)]
    Load(#[from] meridian_node::config::ConfigError),
    /// A member key (`key_file`, `owner_public_key`, `sequencer_endpoints`,
    /// `topology_endpoints`) or a `replication.<key>`.
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error(
        "{path}: response_timeout_ms must be between 1 and {MAX_RESPONSE_TIMEOUT_MS}, got {value}"
    )]
    ResponseTimeout { path: String, value: u64 },
    #[error("{path}: time_proof_interval_ms must be at least 1 and below response_timeout_ms ({timeout_ms}), got {value}; otherwise deadlines pass unnoticed")]
    TimeProofInterval {
        path: String,
        value: u64,
        timeout_ms: u64,
    },
}

impl MediatorConfig {
    /// Loads and checks a config file; every error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigCheckError> {
        meridian_node::config::load_checked(path, Self::check)
    }

    /// A single mediator (no `[replication]`) with the default member id and timings.
    pub fn new(
        key_file: PathBuf,
        owner: &PublicKey,
        endpoints: MemberEndpoints,
        admin_address: SocketAddr,
        storage: StorageConfig,
    ) -> Self {
        Self {
            admin_token_file: None,
            admin_http: Default::default(),
            member_id: default_member_id(),
            key_file,
            owner_public_key: owner.to_string(),
            sequencer_endpoints: endpoints.sequencer,
            topology_endpoints: endpoints.topology,
            admin_address,
            response_timeout_ms: default_response_timeout_ms(),
            time_proof_interval_ms: default_time_proof_interval_ms(),
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

    /// The keys the mediator shares with every member node.
    pub fn member_config(&self) -> MemberConfig<'_> {
        MemberConfig {
            key_file: &self.key_file,
            owner_public_key: Some(&self.owner_public_key),
            sequencer_endpoints: &self.sequencer_endpoints,
            topology_endpoints: Some(&self.topology_endpoints),
        }
    }

    /// Refuses values that cannot work, naming the key; `path` names the file in messages.
    pub fn check(&self, path: &str) -> Result<(), ConfigCheckError> {
        self.member_config().check(path)?;
        let path = path.to_owned();
        if self.response_timeout_ms == 0 || self.response_timeout_ms > MAX_RESPONSE_TIMEOUT_MS {
            return Err(ConfigCheckError::ResponseTimeout {
                path,
                value: self.response_timeout_ms,
            });
        }
        if self.time_proof_interval_ms == 0
            || self.time_proof_interval_ms >= self.response_timeout_ms
        {
            return Err(ConfigCheckError::TimeProofInterval {
                path,
                value: self.time_proof_interval_ms,
                timeout_ms: self.response_timeout_ms,
            });
        }
        if let Some(replication) = &self.replication {
            replication
                .check()
                .map_err(InvalidSetting::in_file(&path))?;
        }
        // Last, so a config from before `[tls]` existed still reports its other errors first.
        self.tls.check_in_file(
            &path,
            &[
                ("sequencer_endpoints", &self.sequencer_endpoints),
                ("topology_endpoints", &self.topology_endpoints),
            ],
        )?;
        Ok(())
    }

    /// The replica manager's settings, for a replicated mediator. The lease is keyed by the
    /// member id: all replicas of this mediator are the same sequencer member.
    pub fn replica_settings(&self) -> Option<ReplicaSettings> {
        let replication = self.replication.as_ref()?;
        Some(replication.settings(self.member_id.to_string(), || {
            self.tls.url(self.admin_address)
        }))
    }

    pub fn owner_key(&self) -> Result<PublicKey, meridian_core::crypto::CryptoError> {
        PublicKey::from_hex(&self.owner_public_key)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    pub fn time_proof_interval(&self) -> Duration {
        Duration::from_millis(self.time_proof_interval_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_core::crypto::SigningKey;

    fn text(extra: &str) -> String {
        format!(
            "key_file = \"m.key\"\n\
             owner_public_key = \"{}\"\n\
             sequencer_endpoint = \"http://127.0.0.1:4001\"\n\
             topology_endpoint = \"http://127.0.0.1:4301\"\n\
             admin_address = \"127.0.0.1:4201\"\n\
             {extra}\n\
             [tls]\nplaintext = true\n\
             [storage]\nbackend = \"sqlite\"\npath = \"m.db\"\n",
            SigningKey::from_seed([7; 32]).public_key()
        )
    }

    fn parse(extra: &str) -> Result<MediatorConfig, ConfigCheckError> {
        let config: MediatorConfig = meridian_node::config::parse_toml(&text(extra), "m.toml")?;
        config.check("m.toml")?;
        Ok(config)
    }

    #[test]
    fn a_built_config_round_trips_through_its_file() {
        let endpoints = MemberEndpoints {
            sequencer: Endpoints::new(vec!["http://s:1".to_owned(), "http://s:2".to_owned()]),
            topology: Endpoints::one("http://t:1"),
        };
        let single = MediatorConfig::new(
            PathBuf::from("data/mediator.key"),
            &SigningKey::from_seed([7; 32]).public_key(),
            endpoints,
            "127.0.0.1:4201".parse().unwrap(),
            StorageConfig::Sqlite {
                path: "data/mediator.db".into(),
            },
        );
        let replicated = MediatorConfig {
            response_timeout_ms: 3_000,
            storage: StorageConfig::Postgres {
                url: "postgres://m@db/mediator".into(),
                max_connections: 4,
            },
            replication: Some(ReplicationConfig {
                advertised_endpoint: Some("http://10.0.0.5:4201".into()),
                ..ReplicationConfig::new("mediator-b")
            }),
            ..single.clone()
        };
        meridian_node::config::assert_round_trips(
            "mediator.toml",
            [single, replicated],
            MediatorConfig::load,
        );
    }

    #[test]
    fn defaults_apply() {
        let config = parse("").expect("valid");
        assert_eq!(config.member_id.as_str(), "mediator");
        assert_eq!(config.response_timeout(), Duration::from_secs(10));
        assert_eq!(config.time_proof_interval(), Duration::from_millis(500));
        assert!(matches!(config.storage, StorageConfig::Sqlite { .. }));
        assert_eq!(config.replication, None);
        assert!(config.replica_settings().is_none());
    }

    #[test]
    fn replication_defaults_and_checks() {
        meridian_node::replication::assert_replication_table(
            &text(""),
            "mediator",
            "http://127.0.0.1:4201",
            |toml| {
                let config: MediatorConfig = meridian_node::config::parse_toml(toml, "m.toml")
                    .map_err(|error| error.to_string())?;
                config.check("m.toml").map_err(|error| error.to_string())?;
                Ok(config.replica_settings())
            },
        );
    }

    #[test]
    fn unknown_keys_and_impossible_values_are_refused_by_name() {
        let message = parse("response_timeout = 5").expect_err("typo").to_string();
        assert!(
            message.contains("unknown field `response_timeout`"),
            "{message}"
        );
        let message = parse("response_timeout_ms = 0")
            .expect_err("zero")
            .to_string();
        assert!(message.contains("response_timeout_ms"), "{message}");
        let message = parse("response_timeout_ms = 400")
            .expect_err("interval above timeout")
            .to_string();
        assert!(message.contains("time_proof_interval_ms"), "{message}");
        let message = parse("member_id = \"bad id\"").expect_err("id").to_string();
        assert!(message.contains("member_id"), "{message}");

        let bad_key = text("").replace("owner_public_key = \"", "owner_public_key = \"zz");
        let config: MediatorConfig =
            meridian_node::config::parse_toml(&bad_key, "m.toml").expect("parses");
        let message = config.check("m.toml").expect_err("bad key").to_string();
        assert!(message.contains("owner_public_key"), "{message}");

        let bad_endpoint = text("").replace("http://127.0.0.1:4001", "127.0.0.1:4001");
        let config: MediatorConfig =
            meridian_node::config::parse_toml(&bad_endpoint, "m.toml").expect("parses");
        let message = config.check("m.toml").expect_err("endpoint").to_string();
        assert!(message.contains("sequencer_endpoint"), "{message}");
    }
}
