//! The sequencer's TOML configuration. Unknown keys are errors (`deny_unknown_fields`), so a
//! typo never silently falls back to a default.
//!
//! ```toml
//! listen_address = "127.0.0.1:4001"   # gRPC: sequencer API, admin API, health, reflection
//! admin_address = "127.0.0.1:4101"    # HTTP: /livez /readyz /status /metrics
//!
//! owner_public_key = "…64 hex digits…"  # optional: admit only owner-signed topology members
//!
//! # Several instances share one database; each has its own index.
//! [instance]
//! index = 0          # this instance's index, below `count`
//! count = 32         # fixed for the deployment: timestamps t with t % count == index
//!
//! [timing]
//! max_clock_skew_ms = 250   # beyond this skew from the database's clock, issue nothing
//!
//! [storage]
//! backend = "sqlite"
//! path = "data/sequencer.db"
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use meridian_core::crypto::{CryptoError, PublicKey};
use meridian_core::InstanceIndex;
use meridian_node::tls::TlsConfig;
use meridian_store::StorageConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SequencerConfig {
    pub listen_address: SocketAddr,
    pub admin_address: SocketAddr,
    #[serde(default)]
    pub instance: InstanceConfig,
    pub storage: StorageConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub timing: TimingConfig,
    /// If set, SequencerAdminService calls must carry `authorization: Bearer <admin_token>`.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// The synchronizer owner's ed25519 public key (64 hex digits). If set, RegisterMember
    /// admits only members named by a topology transaction this key signed; if not,
    /// registration is open (guarded by `admin_token` only), as benchmarks use it.
    #[serde(default)]
    pub owner_public_key: Option<String>,
    /// TLS of the gRPC and admin HTTP listeners and of this node's clients: certificate
    /// files, or `plaintext = true` explicitly. Absent: refused at load (see docs/tls.md).
    #[serde(default)]
    pub tls: TlsConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub index: u32,
    pub count: u32,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        Self {
            index: 0,
            count: 32,
        }
    }
}

impl InstanceConfig {
    /// Instance `index` of `count`; [`InstanceConfig::default`] is 0 of 32.
    pub fn new(index: u32, count: u32) -> Self {
        Self { index, count }
    }

    pub fn index(&self) -> InstanceIndex {
        InstanceIndex(self.index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest submission accepted (payload and recipient bytes).
    pub max_request_bytes: usize,
    pub max_envelopes: usize,
    /// Events written per database transaction at most.
    pub max_batch_events: usize,
    /// Submissions waiting for the writer before sends are refused as overloaded.
    pub queue_capacity: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 4 * 1024 * 1024,
            max_envelopes: 1_000,
            max_batch_events: 1_000,
            queue_capacity: 20_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingConfig {
    /// How often an idle instance advances its watermark.
    pub watermark_interval_ms: u64,
    /// How often the safe point is re-read to see other instances' progress.
    pub safe_point_poll_ms: u64,
    /// A peer whose watermark this instance has not seen advance for this long (by its own
    /// monotonic clock) is marked offline.
    pub offline_after_ms: u64,
    pub token_ttl_s: u64,
    /// Deduplication entries are kept this long past their max sequencing time.
    pub dedup_retention_s: u64,
    /// How often a node that may not serve yet (standby, synchronous_commit off) re-checks.
    pub backend_check_ms: u64,
    /// The largest difference between this instance's wall clock and the database's clock
    /// (PostgreSQL's, or the kernel's for SQLite) at which it still issues timestamps.
    pub max_clock_skew_ms: u64,
    /// How often the clock is compared with the database's.
    pub clock_check_ms: u64,
}

impl Default for TimingConfig {
    fn default() -> Self {
        Self {
            watermark_interval_ms: 50,
            safe_point_poll_ms: 20,
            offline_after_ms: 500,
            token_ttl_s: 3_600,
            dedup_retention_s: 60,
            backend_check_ms: 1_000,
            max_clock_skew_ms: 250,
            clock_check_ms: 1_000,
        }
    }
}

impl TimingConfig {
    pub fn watermark_interval(&self) -> Duration {
        Duration::from_millis(self.watermark_interval_ms.max(1))
    }
    pub fn safe_point_poll(&self) -> Duration {
        Duration::from_millis(self.safe_point_poll_ms.max(1))
    }
    pub fn offline_after(&self) -> Duration {
        Duration::from_millis(self.offline_after_ms)
    }
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_s)
    }
    pub fn dedup_retention(&self) -> Duration {
        Duration::from_secs(self.dedup_retention_s)
    }
    pub fn backend_check(&self) -> Duration {
        Duration::from_millis(self.backend_check_ms.max(10))
    }
    pub fn max_clock_skew(&self) -> Duration {
        Duration::from_millis(self.max_clock_skew_ms)
    }
    pub fn clock_check(&self) -> Duration {
        Duration::from_millis(self.clock_check_ms.max(10))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigCheckError {
    #[error(transparent)]
    Load(#[from] meridian_node::config::ConfigError),
    #[error("{path}: [instance] index {index} must be below count {count}")]
    InstanceIndex {
        path: String,
        index: u32,
        count: u32,
    },
    #[error("{path}: owner_public_key: {reason}")]
    OwnerKey { path: String, reason: String },
    #[error("{path}: {field} must be at least 1")]
    Zero { path: String, field: &'static str },
    #[error(transparent)]
    Tls(#[from] meridian_node::config::InvalidSetting),
    #[error("{path}: timing.max_clock_skew_ms must be at least 1: an instance whose clock is off by any amount would never issue a timestamp")]
    NoClockSkew { path: String },
    #[error("{path}: timing.offline_after_ms ({offline_ms}) must exceed timing.watermark_interval_ms ({interval_ms}), or healthy idle instances get marked offline")]
    OfflineTooShort {
        path: String,
        offline_ms: u64,
        interval_ms: u64,
    },
}

impl SequencerConfig {
    /// Loads and checks a config file; every error names the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigCheckError> {
        meridian_node::config::load_checked(path, Self::check)
    }

    /// One instance (index 0 of the default count) with open registration, no admin token
    /// and the default limits and timings.
    pub fn new(
        listen_address: SocketAddr,
        admin_address: SocketAddr,
        storage: StorageConfig,
    ) -> Self {
        Self {
            listen_address,
            admin_address,
            instance: InstanceConfig::default(),
            storage,
            limits: LimitsConfig::default(),
            timing: TimingConfig::default(),
            admin_token: None,
            owner_public_key: None,
            // Built in code: plaintext, explicitly (written as `[tls] plaintext = true`), until
            // `with_tls`.
            tls: TlsConfig::plaintext(),
        }
    }

    /// Serves (and connects) with `tls`.
    pub fn with_tls(self, tls: TlsConfig) -> Self {
        Self { tls, ..self }
    }

    /// Registration admits only members the owner `owner` signed into the topology.
    pub fn with_owner(self, owner: &PublicKey) -> Self {
        Self {
            owner_public_key: Some(owner.to_string()),
            ..self
        }
    }

    /// The configured owner key, parsed; `None` when registration is open.
    pub fn owner_key(&self) -> Result<Option<PublicKey>, CryptoError> {
        self.owner_public_key
            .as_deref()
            .map(PublicKey::from_hex)
            .transpose()
    }

    pub fn check(&self, path: &str) -> Result<(), ConfigCheckError> {
        let path = path.to_owned();
        if self.instance.count == 0 || self.instance.index >= self.instance.count {
            return Err(ConfigCheckError::InstanceIndex {
                path,
                index: self.instance.index,
                count: self.instance.count,
            });
        }
        for (field, value) in [
            ("limits.max_request_bytes", self.limits.max_request_bytes),
            ("limits.max_envelopes", self.limits.max_envelopes),
            ("limits.max_batch_events", self.limits.max_batch_events),
            ("limits.queue_capacity", self.limits.queue_capacity),
        ] {
            if value == 0 {
                return Err(ConfigCheckError::Zero { path, field });
            }
        }
        if let Err(error) = self.owner_key() {
            return Err(ConfigCheckError::OwnerKey {
                path,
                reason: error.to_string(),
            });
        }
        if self.timing.max_clock_skew_ms == 0 {
            return Err(ConfigCheckError::NoClockSkew { path });
        }
        if self.timing.offline_after_ms <= self.timing.watermark_interval_ms {
            return Err(ConfigCheckError::OfflineTooShort {
                path,
                offline_ms: self.timing.offline_after_ms,
                interval_ms: self.timing.watermark_interval_ms,
            });
        }
        // Last, so a config from before `[tls]` existed still reports its other errors first.
        self.tls.check_in_file(&path, &[])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "listen_address = \"127.0.0.1:1\"\nadmin_address = \"127.0.0.1:2\"\n\
                        [storage]\nbackend = \"sqlite\"\npath = \"x.db\"\n";

    /// Explicit plaintext, which every config must now choose or replace with certificates.
    const PLAINTEXT: &str = "[tls]\nplaintext = true\n";

    fn parse(extra: &str) -> SequencerConfig {
        meridian_node::config::parse_toml(&format!("{extra}{BASE}{PLAINTEXT}"), "<test>")
            .expect("parses")
    }

    #[test]
    fn a_config_without_tls_or_explicit_plaintext_is_refused_naming_both() {
        let without: SequencerConfig =
            meridian_node::config::parse_toml(BASE, "<test>").expect("parses");
        let error = without.check("seq.toml").expect_err("no [tls] section");
        let message = error.to_string();
        assert!(
            message.starts_with("seq.toml: tls:")
                && message.contains("cert_file")
                && message.contains("plaintext = true"),
            "{message}"
        );
        parse("")
            .check("seq.toml")
            .expect("explicit plaintext loads");
    }

    #[test]
    fn a_built_config_round_trips_through_its_file() {
        let storage = StorageConfig::Sqlite {
            path: "data/sequencer.db".into(),
        };
        let single = SequencerConfig::new(
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4101".parse().unwrap(),
            storage,
        );
        let owner = meridian_core::crypto::SigningKey::from_seed([5; 32]).public_key();
        let instance = SequencerConfig {
            instance: InstanceConfig::new(3, 8),
            admin_token: Some("secret".into()),
            timing: TimingConfig {
                offline_after_ms: 750,
                ..TimingConfig::default()
            },
            storage: StorageConfig::Postgres {
                url: "postgres://s@db/sequencer".into(),
                max_connections: 16,
            },
            ..single.clone()
        }
        .with_owner(&owner);
        meridian_node::config::assert_round_trips(
            "sequencer.toml",
            [single, instance],
            SequencerConfig::load,
        );
    }

    #[test]
    fn the_example_file_loads() {
        let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/sequencer.toml");
        SequencerConfig::load(Path::new(example)).expect("examples/sequencer.toml is valid");
    }

    #[test]
    fn owner_public_key_is_optional_and_checked() {
        let open = parse("");
        assert_eq!(open.owner_key().expect("no key"), None);
        assert!(open.check("<test>").is_ok());

        let key = meridian_core::crypto::SigningKey::generate().public_key();
        let owned = parse(&format!("owner_public_key = \"{key}\"\n"));
        assert_eq!(owned.owner_key().expect("valid key"), Some(key));
        assert!(owned.check("<test>").is_ok());

        let bad = parse("owner_public_key = \"abcd\"\n");
        let err = bad.check("seq.toml").unwrap_err().to_string();
        assert!(err.starts_with("seq.toml: owner_public_key: "), "{err}");
    }
}
