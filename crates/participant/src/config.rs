//! The participant's TOML configuration. Unknown keys are errors (`deny_unknown_fields`), so a
//! typo never silently falls back to a default.
//!
//! ```toml
//! participant_id = "participant1"
//! key_file = "data/participant1.key"          # created (mode 0600) if missing (not by a replica)
//! owner_public_key = "<64 hex digits>"        # the synchronizer owner's topology key
//! sequencer_endpoints = ["http://127.0.0.1:4001"] # every instance; one string also works
//! topology_endpoints = ["http://127.0.0.1:4201"] # the topology manager's replicas (admin gRPC)
//! mediator_id = "mediator"                    # default "mediator"
//! listen_address = "127.0.0.1:4501"           # gRPC: LedgerService, health, reflection
//! admin_address = "127.0.0.1:4601"            # HTTP: /livez /readyz /status /metrics
//! max_sequencing_delay_ms = 10000
//! dedup_period_s = 600                        # default deduplication period
//! max_dedup_period_s = 86400                  # longest period a command may ask for
//! dedup_memory_window_s = 60                  # committed changes deduplicated from memory; older from the database
//! submit_timeout_ms = 30000                   # SubmitAndWait gives up waiting after this
//!
//! [limits]
//! max_commands = 100                          # commands per submission
//! max_in_flight = 5000                        # submissions awaiting their outcome
//! max_payload_bytes = 65536                   # JSON text per payload / argument
//!
//! [storage]
//! backend = "sqlite"
//! path = "data/participant1.db"
//!
//! # Optional: active/passive replicas sharing this participant's database (DESIGN.md §5).
//! # Every replica has the same participant_id, key_file contents and [storage].
//! [replication]
//! replica_id = "participant1-a"               # this replica, unique among the replicas
//! advertised_endpoint = "http://10.0.0.5:4501" # default http://<listen_address>
//! lease_timeout_ms = 700                      # an active not renewed this long is deposed
//! poll_interval_ms = 50                       # how often a passive tries to take the lease
//!
//! # Optional, but without it the Ledger API is open to anyone who reaches it (a WARN at
//! # start-up says so): JWT authorization of every Ledger API call (docs/ledger-api.md).
//! [ledger_auth]
//! jwks_file = "secrets/ledger-auth.jwks.json" # a JWKS (tokens name their key by kid), or:
//! # public_key_file = "secrets/ledger-auth.pub.pem"  # one PEM public key, with
//! # algorithm = "EdDSA"                       # EdDSA, ES256 or RS256
//! audience = "participant1"                   # the aud tokens must carry; default participant_id
//! max_token_lifetime_s = 86400                # longest exp - iat (or exp - now) accepted
//! leeway_s = 5                                # clock skew tolerated on exp, nbf, iat
//! ```
//!
//! The member keys (`key_file` to `topology_endpoints`) are checked as on every member, by
//! [`MemberConfig`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_core::crypto::PublicKey;
use meridian_core::{MemberId, ParticipantId};
use meridian_node::config::{Endpoints, InvalidSetting, MemberConfig, MemberEndpoints};
use meridian_node::replica::ReplicaSettings;
pub use meridian_node::replication::ReplicationConfig;
use meridian_node::replication::MAX_LEASE_TIMEOUT_MS;
use meridian_node::tls::TlsConfig;
use meridian_node::AdminHttpConfig;
use meridian_store::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantConfig {
    pub participant_id: ParticipantId,
    pub key_file: PathBuf,
    /// Hex of the synchronizer owner's ed25519 public key; every topology transaction must be
    /// signed by it.
    pub owner_public_key: String,
    /// The sequencer's instances (`sequencer_endpoint = "..."`, one, is accepted too).
    #[serde(alias = "sequencer_endpoint")]
    pub sequencer_endpoints: Endpoints,
    /// The topology manager's replicas (`topology_endpoint = "..."`, one, is accepted too).
    #[serde(alias = "topology_endpoint")]
    pub topology_endpoints: Endpoints,
    #[serde(default = "default_mediator")]
    pub mediator_id: MemberId,
    pub listen_address: SocketAddr,
    pub admin_address: SocketAddr,
    /// A file holding the admin token (mode 0600; refused if group or others can read it).
    /// When set, mutating admin HTTP routes (`POST /admin/step-down`) need
    /// `authorization: Bearer <token>`. See docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Whether `/status` and `/metrics` also need the admin token (default: open).
    #[serde(default, skip_serializing_if = "AdminHttpConfig::is_default")]
    pub admin_http: AdminHttpConfig,
    pub storage: StorageConfig,
    #[serde(default = "default_max_sequencing_delay_ms")]
    pub max_sequencing_delay_ms: u64,
    #[serde(default = "default_dedup_period_s")]
    pub dedup_period_s: u64,
    #[serde(default = "default_max_dedup_period_s")]
    pub max_dedup_period_s: u64,
    /// How long after its commit a change is deduplicated from memory; after that, for the
    /// rest of its period, from the database, read when a submission of it arrives. Memory
    /// holds this window's commits instead of a whole period's.
    #[serde(default = "default_dedup_memory_window_s")]
    pub dedup_memory_window_s: u64,
    #[serde(default = "default_submit_timeout_ms")]
    pub submit_timeout_ms: u64,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Absent: a single, unreplicated node (writes are not fenced).
    #[serde(default)]
    pub replication: Option<ReplicationConfig>,
    /// Absent: the Ledger API is open (a WARN at start-up says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_auth: Option<LedgerAuthConfig>,
    /// TLS of the gRPC and admin HTTP listeners and of this node's clients: certificate
    /// files, or `plaintext = true` explicitly. Absent: refused at load (see docs/tls.md).
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[ledger_auth]`: how Ledger API bearer tokens are verified. Exactly one of `jwks_file` and
/// `public_key_file` (with `algorithm`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerAuthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// The algorithm of `public_key_file`: EdDSA, ES256 or RS256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    /// The `aud` a token must carry; default the participant id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default = "default_max_token_lifetime_s")]
    pub max_token_lifetime_s: u64,
    #[serde(default = "default_leeway_s")]
    pub leeway_s: u64,
}

impl LedgerAuthConfig {
    /// Verifies with the JWKS in `jwks_file`, audience the participant id.
    pub fn jwks(jwks_file: PathBuf) -> Self {
        Self {
            jwks_file: Some(jwks_file),
            public_key_file: None,
            algorithm: None,
            audience: None,
            max_token_lifetime_s: default_max_token_lifetime_s(),
            leeway_s: default_leeway_s(),
        }
    }

    fn check(&self, path: &str) -> Result<(), ConfigCheckError> {
        let invalid = |message: String| ConfigCheckError::LedgerAuth {
            path: path.to_owned(),
            message,
        };
        match (&self.jwks_file, &self.public_key_file, &self.algorithm) {
            (Some(_), None, None) => {}
            (Some(_), None, Some(_)) => {
                return Err(invalid(
                    "algorithm goes with public_key_file; a JWKS names each key's algorithm".into(),
                ))
            }
            (None, Some(_), Some(algorithm)) => {
                meridian_auth::verify::parse_algorithm(algorithm)
                    .map_err(|e| invalid(format!("algorithm: {e}")))?;
            }
            (None, Some(_), None) => {
                return Err(invalid(
                    "public_key_file needs algorithm (EdDSA, ES256 or RS256)".into(),
                ))
            }
            (Some(_), Some(_), _) => {
                return Err(invalid("set jwks_file or public_key_file, not both".into()))
            }
            (None, None, _) => {
                return Err(invalid(
                    "set jwks_file, or public_key_file with algorithm".into(),
                ))
            }
        }
        if self.max_token_lifetime_s == 0 {
            return Err(ConfigCheckError::Zero {
                path: path.to_owned(),
                field: "ledger_auth.max_token_lifetime_s",
            });
        }
        if self.audience.as_deref() == Some("") {
            return Err(invalid("audience must not be empty".into()));
        }
        Ok(())
    }

    /// Reads the key file and builds the verifier; errors name the file.
    pub fn verifier(&self, participant: &ParticipantId) -> anyhow::Result<meridian_auth::Verifier> {
        use anyhow::Context;
        let read = |file: &Path| {
            std::fs::read(file)
                .with_context(|| format!("reading [ledger_auth] key file {}", file.display()))
        };
        let (file, source) = match (&self.jwks_file, &self.public_key_file) {
            (Some(file), _) => {
                let json = String::from_utf8(read(file)?)
                    .with_context(|| format!("{} is not UTF-8", file.display()))?;
                (file, meridian_auth::KeySource::Jwks(json))
            }
            (None, Some(file)) => {
                let algorithm = meridian_auth::verify::parse_algorithm(
                    self.algorithm.as_deref().unwrap_or(""),
                )?;
                let pem = read(file)?;
                (file, meridian_auth::KeySource::Pem { pem, algorithm })
            }
            (None, None) => anyhow::bail!("[ledger_auth] names no key file"),
        };
        let settings = meridian_auth::VerifierSettings {
            audience: self
                .audience
                .clone()
                .unwrap_or_else(|| participant.to_string()),
            max_token_lifetime_s: self.max_token_lifetime_s,
            leeway_s: self.leeway_s,
        };
        meridian_auth::Verifier::new(&source, settings)
            .with_context(|| format!("[ledger_auth] key file {}", file.display()))
    }
}

fn default_max_token_lifetime_s() -> u64 {
    86_400
}
fn default_leeway_s() -> u64 {
    5
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_commands: usize,
    /// Submissions accepted but not yet completed; beyond it SubmitAndWait is
    /// RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Longest JSON text of a payload or choice argument.
    pub max_payload_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_commands: 100,
            max_in_flight: 5_000,
            max_payload_bytes: 64 * 1024,
        }
    }
}

fn default_mediator() -> MemberId {
    MemberId::new("mediator").expect("static member id is valid")
}
fn default_max_sequencing_delay_ms() -> u64 {
    10_000
}
fn default_dedup_period_s() -> u64 {
    600
}
fn default_max_dedup_period_s() -> u64 {
    86_400
}
fn default_dedup_memory_window_s() -> u64 {
    60
}
fn default_submit_timeout_ms() -> u64 {
    30_000
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigCheckError {
    #[error(transparent)]
    Load(#[from] meridian_node::config::ConfigError),
    /// A member key: `key_file`, `owner_public_key`, `sequencer_endpoints`,
    /// `topology_endpoints`.
    #[error(transparent)]
    Invalid(#[from] InvalidSetting),
    #[error("{path}: {field} must be at least 1")]
    Zero { path: String, field: &'static str },
    #[error("{path}: {field} {value:?} must start with https:// (or http://)")]
    Endpoint {
        path: String,
        field: &'static str,
        value: String,
    },
    #[error("{path}: dedup_period_s ({period}) must not exceed max_dedup_period_s ({max})")]
    DedupPeriod { path: String, period: u64, max: u64 },
    #[error("{path}: [ledger_auth]: {message}")]
    LedgerAuth { path: String, message: String },
    #[error("{path}: replication.replica_id {value:?} must be 1 to 128 characters of letters, digits, '-', '_' or '.'")]
    ReplicaId { path: String, value: String },
    #[error("{path}: replication.poll_interval_ms ({poll}) must be below replication.lease_timeout_ms ({timeout}), or a passive replica could not notice an expired lease in time")]
    PollInterval {
        path: String,
        poll: u64,
        timeout: u64,
    },
}

impl ParticipantConfig {
    /// Loads and checks a config file; every error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigCheckError> {
        meridian_node::config::load_checked(path, Self::check)
    }

    /// An unreplicated participant with the default mediator, periods and limits.
    pub fn new(
        participant_id: ParticipantId,
        key_file: PathBuf,
        owner: &PublicKey,
        endpoints: MemberEndpoints,
        listen_address: SocketAddr,
        admin_address: SocketAddr,
        storage: StorageConfig,
    ) -> Self {
        Self {
            admin_token_file: None,
            admin_http: Default::default(),
            participant_id,
            key_file,
            owner_public_key: owner.to_string(),
            sequencer_endpoints: endpoints.sequencer,
            topology_endpoints: endpoints.topology,
            mediator_id: default_mediator(),
            listen_address,
            admin_address,
            storage,
            max_sequencing_delay_ms: default_max_sequencing_delay_ms(),
            dedup_period_s: default_dedup_period_s(),
            max_dedup_period_s: default_max_dedup_period_s(),
            dedup_memory_window_s: default_dedup_memory_window_s(),
            submit_timeout_ms: default_submit_timeout_ms(),
            limits: LimitsConfig::default(),
            replication: None,
            ledger_auth: None,
            // Built in code: plaintext, explicitly (written as `[tls] plaintext = true`), until
            // `with_tls`.
            tls: TlsConfig::plaintext(),
        }
    }

    /// Serves (and connects) with `tls`.
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        Self { tls, ..self }
    }

    /// The keys the participant shares with every member node.
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
        if let Some(ledger_auth) = &self.ledger_auth {
            ledger_auth.check(path)?;
        }
        let path = path.to_owned();
        let advertised = self
            .replication
            .as_ref()
            .map(|_| self.advertised_endpoint());
        for (field, value) in [("replication.advertised_endpoint", advertised.as_ref())] {
            if let Some(value) =
                value.filter(|v| !v.starts_with("http://") && !v.starts_with("https://"))
            {
                return Err(ConfigCheckError::Endpoint {
                    path,
                    field,
                    value: value.clone(),
                });
            }
        }
        // Not the shared `ReplicationConfig::check`: the participant's checks are its own —
        // stricter replica ids, the advertised endpoint checked with the other endpoints, and
        // messages operators and tests already rely on — and sharing would change them.
        if let Some(replication) = &self.replication {
            let id = &replication.replica_id;
            let valid = !id.is_empty()
                && id.len() <= 128
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid {
                return Err(ConfigCheckError::ReplicaId {
                    path,
                    value: id.clone(),
                });
            }
            for (field, value) in [
                ("replication.lease_timeout_ms", replication.lease_timeout_ms),
                ("replication.poll_interval_ms", replication.poll_interval_ms),
            ] {
                if value == 0 {
                    return Err(ConfigCheckError::Zero { path, field });
                }
            }
            // Bounded like every role's shared replication settings: the lease timeout is
            // added to clock instants (a step-down's yield), which a huge value overflows.
            if replication.lease_timeout_ms > MAX_LEASE_TIMEOUT_MS {
                return Err(InvalidSetting::new(
                    &path,
                    "replication.lease_timeout_ms",
                    format!(
                        "must be at most {MAX_LEASE_TIMEOUT_MS}, got {}",
                        replication.lease_timeout_ms
                    ),
                )
                .into());
            }
            if replication.poll_interval_ms >= replication.lease_timeout_ms {
                return Err(ConfigCheckError::PollInterval {
                    path,
                    poll: replication.poll_interval_ms,
                    timeout: replication.lease_timeout_ms,
                });
            }
        }
        for (field, value) in [
            ("max_sequencing_delay_ms", self.max_sequencing_delay_ms),
            ("dedup_period_s", self.dedup_period_s),
            ("submit_timeout_ms", self.submit_timeout_ms),
            ("limits.max_commands", self.limits.max_commands as u64),
            ("limits.max_in_flight", self.limits.max_in_flight as u64),
            (
                "limits.max_payload_bytes",
                self.limits.max_payload_bytes as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigCheckError::Zero { path, field });
            }
        }
        if self.dedup_period_s > self.max_dedup_period_s {
            return Err(ConfigCheckError::DedupPeriod {
                path,
                period: self.dedup_period_s,
                max: self.max_dedup_period_s,
            });
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

    pub fn owner_key(&self) -> Result<PublicKey, String> {
        PublicKey::from_hex(&self.owner_public_key).map_err(|e| e.to_string())
    }

    pub fn max_sequencing_delay(&self) -> Duration {
        Duration::from_millis(self.max_sequencing_delay_ms)
    }

    pub fn dedup_memory_window(&self) -> Duration {
        Duration::from_secs(self.dedup_memory_window_s)
    }

    pub fn submit_timeout(&self) -> Duration {
        Duration::from_millis(self.submit_timeout_ms)
    }

    /// Where clients reach this replica: the configured endpoint or `http://<listen_address>`.
    pub fn advertised_endpoint(&self) -> String {
        self.replication
            .as_ref()
            .and_then(|r| r.advertised_endpoint.clone())
            .unwrap_or_else(|| self.tls.url(self.listen_address))
    }

    /// The replica manager's settings; `None` when the participant is not replicated. All
    /// replicas share the lease of `participant_id`.
    pub fn replica_settings(&self) -> Option<ReplicaSettings> {
        let replication = self.replication.as_ref()?;
        Some(replication.settings(self.participant_id.to_string(), || {
            self.tls.url(self.listen_address)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
participant_id = "p1"
key_file = "p1.key"
owner_public_key = "OWNER"
sequencer_endpoint = "http://127.0.0.1:4001"
topology_endpoint = "http://127.0.0.1:4201"
listen_address = "127.0.0.1:4501"
admin_address = "127.0.0.1:4601"
[tls]
plaintext = true
[storage]
backend = "sqlite"
path = "p1.db"
"#;

    fn with_owner(text: &str) -> String {
        let key = meridian_core::crypto::SigningKey::from_seed([1; 32]).public_key();
        text.replace("OWNER", &key.to_string())
    }

    #[test]
    fn a_built_config_round_trips_through_its_file() {
        let endpoints = MemberEndpoints {
            sequencer: Endpoints::new(vec!["http://s:2".to_owned(), "http://s:1".to_owned()]),
            topology: Endpoints::new(vec!["http://t:1".to_owned(), "http://t:2".to_owned()]),
        };
        let single = ParticipantConfig::new(
            ParticipantId::new("participant1").unwrap(),
            PathBuf::from("data/participant1.key"),
            &meridian_core::crypto::SigningKey::from_seed([1; 32]).public_key(),
            endpoints,
            "127.0.0.1:4501".parse().unwrap(),
            "127.0.0.1:4601".parse().unwrap(),
            StorageConfig::Sqlite {
                path: "data/participant1.db".into(),
            },
        );
        let replicated = ParticipantConfig {
            submit_timeout_ms: 15_000,
            limits: LimitsConfig {
                max_in_flight: 7,
                ..LimitsConfig::default()
            },
            replication: Some(ReplicationConfig::new("participant1-b")),
            admin_token_file: Some(PathBuf::from("secrets/admin-token")),
            admin_http: AdminHttpConfig {
                protect_status: true,
                protect_metrics: false,
            },
            ledger_auth: Some(LedgerAuthConfig::jwks(PathBuf::from(
                "secrets/ledger-auth.jwks.json",
            ))),
            ..single.clone()
        };
        meridian_node::config::assert_round_trips(
            "participant.toml",
            [single, replicated],
            ParticipantConfig::load,
        );
    }

    #[test]
    fn defaults_and_checks() {
        let config: ParticipantConfig =
            meridian_node::config::parse_toml(&with_owner(VALID), "p1.toml").unwrap();
        config.check("p1.toml").unwrap();
        assert_eq!(config.mediator_id.as_str(), "mediator");
        assert_eq!(config.dedup_period_s, 600);
        assert_eq!(config.max_sequencing_delay_ms, 10_000);

        let bad: ParticipantConfig = meridian_node::config::parse_toml(VALID, "p1.toml").unwrap();
        let err = bad.check("p1.toml").unwrap_err().to_string();
        assert!(err.contains("owner_public_key"), "{err}");

        let err = meridian_node::config::parse_toml::<ParticipantConfig>(
            &format!("{}\nbogus = 1\n", with_owner(VALID))
                .replace("[storage]", "bogus2 = 2\n[storage]"),
            "p1.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `bogus2`"), "{err}");
        assert!(config.replica_settings().is_none());
    }

    /// Found by the hostile config test: a huge `replication.lease_timeout_ms` passed the
    /// check and a replica that stepped down panicked adding it to `Instant::now()`.
    #[test]
    fn a_lease_timeout_beyond_the_shared_limit_is_refused() {
        let mut config: ParticipantConfig =
            meridian_node::config::parse_toml(&with_owner(VALID), "p1.toml").unwrap();
        config.replication = Some(ReplicationConfig {
            lease_timeout_ms: i64::MAX as u64,
            ..ReplicationConfig::new("a")
        });
        let error = config.check("p1.toml").unwrap_err().to_string();
        assert!(
            error.starts_with("p1.toml: replication.lease_timeout_ms: must be at most "),
            "{error}"
        );
        config.replication = Some(ReplicationConfig {
            lease_timeout_ms: MAX_LEASE_TIMEOUT_MS,
            ..ReplicationConfig::new("a")
        });
        config
            .check("p1.toml")
            .expect("the shared limit itself is accepted");
    }

    #[test]
    fn replication_table() {
        meridian_node::replication::assert_replication_table(
            &with_owner(VALID),
            "p1",
            "http://127.0.0.1:4501",
            |toml| {
                let config: ParticipantConfig = meridian_node::config::parse_toml(toml, "p1.toml")
                    .map_err(|error| error.to_string())?;
                config.check("p1.toml").map_err(|error| error.to_string())?;
                Ok(config.replica_settings())
            },
        );
    }

    #[test]
    fn ledger_auth_table() {
        let parse = |table: &str| {
            let text = format!("{}\n[ledger_auth]\n{table}\n", with_owner(VALID));
            let config: ParticipantConfig =
                meridian_node::config::parse_toml(&text, "p1.toml").map_err(|e| e.to_string())?;
            config.check("p1.toml").map_err(|e| e.to_string())?;
            Ok::<_, String>(config)
        };
        let config = parse("jwks_file = \"k.json\"").unwrap();
        let auth = config.ledger_auth.unwrap();
        assert_eq!(auth.max_token_lifetime_s, 86_400);
        assert_eq!(auth.leeway_s, 5);
        parse("public_key_file = \"k.pem\"\nalgorithm = \"ES256\"\naudience = \"ledger-a\"")
            .unwrap();
        for (table, needle) in [
            ("", "set jwks_file"),
            ("public_key_file = \"k.pem\"", "needs algorithm"),
            (
                "public_key_file = \"k.pem\"\nalgorithm = \"HS256\"",
                "HS256",
            ),
            (
                "jwks_file = \"k.json\"\npublic_key_file = \"k.pem\"",
                "not both",
            ),
            (
                "jwks_file = \"k.json\"\nmax_token_lifetime_s = 0",
                "max_token_lifetime_s",
            ),
            ("jwks_file = \"k.json\"\nbogus = 1", "bogus"),
        ] {
            let error = parse(table).unwrap_err();
            assert!(error.contains(needle), "{table:?}: {error}");
        }
        // Key files are read at start-up: a missing one is named.
        let error = LedgerAuthConfig::jwks(PathBuf::from("/nonexistent/k.json"))
            .verifier(&ParticipantId::new("p1").unwrap())
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("/nonexistent/k.json"),
            "{error:#}"
        );
    }
}
