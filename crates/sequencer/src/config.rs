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
use std::path::{Path, PathBuf};
use std::time::Duration;

use meridian_core::crypto::{CryptoError, PublicKey};
use meridian_core::InstanceIndex;
use meridian_node::tls::TlsConfig;
use meridian_node::AdminHttpConfig;
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
    /// Inline here; prefer `admin_token_file`, which keeps the token out of the
    /// config file (setting both is an error).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// A file holding the admin token (mode 0600; refused if group or others can read it).
    /// When set, mutating admin HTTP routes (`POST /admin/step-down`) and SequencerAdminService calls need
    /// `authorization: Bearer <token>`. See docs/security.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Whether `/status` and `/metrics` also need the admin token (default: open).
    #[serde(default, skip_serializing_if = "AdminHttpConfig::is_default")]
    pub admin_http: AdminHttpConfig,
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
    /// How often the safe point is re-read while an event waits above it (a peer's event
    /// waiting for this instance's watermark, or this instance's for a peer's): the delay a
    /// busy peer's watermark adds to each protocol hop, instead of a heartbeat interval.
    pub catch_up_poll_ms: u64,
    /// A peer whose watermark this instance has not seen advance for this long (by its own
    /// monotonic clock) is marked offline: the test for a stopped or stalled process. A dead
    /// one is found by its released presence lock within about 100 ms whatever this is, so it
    /// is long enough that a live instance slowed by a saturated machine is never taken for
    /// dead (at 500 ms, a 10-minute saturation run on two cores saw six such marks).
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
            catch_up_poll_ms: 2,
            offline_after_ms: 2_000,
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
    pub fn catch_up_poll(&self) -> Duration {
        Duration::from_millis(self.catch_up_poll_ms.max(1))
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
    /// A timing beyond [`MAX_TIMING_MS`]: no deployment wants it, and a clock instant that far
    /// ahead overflows (a token expiry, a claim's patience), which would panic at run time.
    #[error("{path}: {field} is {value} {unit}; the limit is {limit} {unit} (one week)")]
    TooLong {
        path: String,
        field: &'static str,
        value: u64,
        limit: u64,
        unit: &'static str,
    },
}

/// The longest timing setting accepted (one week), in milliseconds. Every `[timing]` value is
/// added to clock instants at run time; bounding them here keeps that arithmetic in range.
pub const MAX_TIMING_MS: u64 = 7 * 24 * 60 * 60 * 1_000;

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
            admin_token_file: None,
            admin_http: Default::default(),
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
        let timing = &self.timing;
        for (field, value, unit, limit) in [
            (
                "timing.watermark_interval_ms",
                timing.watermark_interval_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.safe_point_poll_ms",
                timing.safe_point_poll_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.catch_up_poll_ms",
                timing.catch_up_poll_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.offline_after_ms",
                timing.offline_after_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.backend_check_ms",
                timing.backend_check_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.max_clock_skew_ms",
                timing.max_clock_skew_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.clock_check_ms",
                timing.clock_check_ms,
                "ms",
                MAX_TIMING_MS,
            ),
            (
                "timing.token_ttl_s",
                timing.token_ttl_s,
                "s",
                MAX_TIMING_MS / 1_000,
            ),
            (
                "timing.dedup_retention_s",
                timing.dedup_retention_s,
                "s",
                MAX_TIMING_MS / 1_000,
            ),
        ] {
            if value > limit {
                return Err(ConfigCheckError::TooLong {
                    path,
                    field,
                    value,
                    limit,
                    unit,
                });
            }
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

    /// Found by the hostile config test: `token_ttl_s = 9223372036854775807` passed the check
    /// and the first Authenticate panicked adding it to `Instant::now()`; a huge
    /// `offline_after_ms` panicked at start (`claim_patience`).
    #[test]
    fn timings_beyond_a_week_are_refused_naming_the_key() {
        for (set, key) in [
            (
                (|t: &mut TimingConfig| t.token_ttl_s = i64::MAX as u64) as fn(&mut TimingConfig),
                "timing.token_ttl_s",
            ),
            (
                |t| t.offline_after_ms = i64::MAX as u64,
                "timing.offline_after_ms",
            ),
            (
                |t| t.dedup_retention_s = u64::MAX,
                "timing.dedup_retention_s",
            ),
            (
                |t| t.clock_check_ms = MAX_TIMING_MS + 1,
                "timing.clock_check_ms",
            ),
        ] {
            let mut config = parse("");
            set(&mut config.timing);
            let error = config.check("s.toml").expect_err(key).to_string();
            assert!(error.starts_with(&format!("s.toml: {key} is ")), "{error}");
            assert!(error.contains("one week"), "{error}");
        }
        // The longest accepted values stay in range where the node adds them to instants.
        let mut config = parse("");
        config.timing.token_ttl_s = MAX_TIMING_MS / 1_000;
        config.timing.offline_after_ms = MAX_TIMING_MS;
        config.check("s.toml").expect("a week is accepted");
        let _ = std::time::Instant::now() + config.timing.token_ttl();
        let _ = crate::node::claim_patience(config.timing.offline_after());
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
