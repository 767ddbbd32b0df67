//! Streaming replication between throwaway servers, driven the way an operator would: a
//! standby is a base backup of its primary (`pg_basebackup`, through a replication slot named
//! after it) that streams from an address the caller chooses — the primary itself, or a
//! delaying proxy in front of it; the primary is made synchronous at run time (`ALTER SYSTEM`
//! plus a reload); a standby is promoted with `pg_ctl promote -w`; the primary's
//! `pg_stat_replication` is read into [`StandbyStatus`]. Every wait here is bounded and names
//! what it waited for.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::{describe, run, PostgresServer, REPLICATION_ROLE};

/// How often the waits below poll the server.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a reloaded setting may take to be visible to new sessions.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// `pg_ctl promote -w` gives up after this many seconds.
const PROMOTE_TIMEOUT_SECS: u32 = 60;

/// What a caller of the replication calls may need to tell apart.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("invalid application name {name:?}: {reason}")]
    InvalidApplicationName { name: String, reason: &'static str },
    #[error("invalid synchronous standby setting: {reason}")]
    InvalidSynchronousStandbys { reason: &'static str },
    /// `promote` on a server that is not in recovery: someone promoted it already, or it was
    /// never a standby.
    #[error("{server} is not a standby, so it cannot be promoted")]
    NotAStandby { server: String },
    #[error("{server}: gave up after {waited_ms} ms waiting for {what}")]
    Timeout {
        server: String,
        what: String,
        waited_ms: u128,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// A standby's `application_name`, which is also the name of its replication slot on the
/// primary and what `synchronous_standby_names` lists. Restricted to what a slot name allows
/// (lowercase ASCII letters, digits, `_`; at most 63 bytes) and starting with a letter, so it
/// needs no quoting in a connection string, a setting or SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplicationName(String);

impl ApplicationName {
    pub fn new(name: &str) -> Result<Self, ReplicationError> {
        let invalid = |reason| ReplicationError::InvalidApplicationName {
            name: name.to_owned(),
            reason,
        };
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(invalid("must start with a lowercase ASCII letter"));
        }
        if name.len() > 63 {
            return Err(invalid("longer than 63 bytes"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(invalid(
                "only lowercase ASCII letters, digits and '_' allowed",
            ));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ApplicationName {
    type Err = ReplicationError;
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl fmt::Display for ApplicationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which standbys a commit on the primary waits for (`synchronous_standby_names`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynchronousStandbys {
    /// Commits wait for no standby: every standby is asynchronous.
    None,
    /// `FIRST count (names)`: commits wait for the first `count` connected standbys in list
    /// order (priority); the others are `potential` and step in when one goes away.
    First {
        count: usize,
        names: Vec<ApplicationName>,
    },
    /// `ANY count (names)`: commits wait for any `count` of them (quorum).
    Any {
        count: usize,
        names: Vec<ApplicationName>,
    },
}

impl SynchronousStandbys {
    /// `FIRST 1 (name)`: one synchronous standby.
    pub fn one(name: ApplicationName) -> Self {
        Self::First {
            count: 1,
            names: vec![name],
        }
    }

    /// The value of `synchronous_standby_names`.
    pub fn to_setting(&self) -> Result<String, ReplicationError> {
        let (method, count, names) = match self {
            Self::None => return Ok(String::new()),
            Self::First { count, names } => ("FIRST", count, names),
            Self::Any { count, names } => ("ANY", count, names),
        };
        if *count == 0 || *count > names.len() {
            return Err(ReplicationError::InvalidSynchronousStandbys {
                reason: "the count must be between 1 and the number of names",
            });
        }
        let list: Vec<&str> = names.iter().map(ApplicationName::as_str).collect();
        Ok(format!("{method} {count} ({})", list.join(", ")))
    }
}

/// `pg_stat_replication.state`: what the primary's WAL sender for a standby is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSenderState {
    Startup,
    /// The standby is behind and catching up.
    Catchup,
    /// The standby has caught up and receives WAL as it is written.
    Streaming,
    Backup,
    Stopping,
}

impl FromStr for WalSenderState {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "startup" => Self::Startup,
            "catchup" => Self::Catchup,
            "streaming" => Self::Streaming,
            "backup" => Self::Backup,
            "stopping" => Self::Stopping,
            other => anyhow::bail!("unknown WAL sender state {other:?}"),
        })
    }
}

/// `pg_stat_replication.sync_state`: whether commits wait for a standby.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    /// Commits do not wait for it.
    Async,
    /// Listed in `FIRST n (...)` but not among the first `n` connected: it becomes `Sync`
    /// when one of them goes away.
    Potential,
    /// Commits wait for it.
    Sync,
    /// One of an `ANY n (...)` quorum.
    Quorum,
}

impl FromStr for SyncState {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        Ok(match text {
            "async" => Self::Async,
            "potential" => Self::Potential,
            "sync" => Self::Sync,
            "quorum" => Self::Quorum,
            other => anyhow::bail!("unknown sync state {other:?}"),
        })
    }
}

/// One standby connected to a primary, as the primary sees it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyStatus {
    /// As the standby sent it; kept as text because any client may connect under any name.
    pub application_name: String,
    pub state: WalSenderState,
    pub sync_state: SyncState,
    /// How much WAL the primary has written that the standby has not replayed yet; `None`
    /// until the standby reported a replay position.
    pub lag_bytes: Option<u64>,
}

impl StandbyStatus {
    /// Parses one row of [`STATUS_QUERY`] (fields separated by [`FIELD_SEPARATOR`]).
    fn parse(row: &str) -> anyhow::Result<Self> {
        let fields: Vec<&str> = row.split(FIELD_SEPARATOR).collect();
        let [name, state, sync_state, lag] = fields[..] else {
            anyhow::bail!("expected 4 fields in pg_stat_replication row {row:?}");
        };
        let lag_bytes = match lag {
            "" => None,
            // The primary's position can lag what a standby reported for an instant; no lag.
            text if text.starts_with('-') => Some(0),
            text => Some(
                text.parse()
                    .with_context(|| format!("replay lag {text:?} is not a byte count"))?,
            ),
        };
        Ok(Self {
            application_name: name.to_owned(),
            state: state.parse()?,
            sync_state: sync_state.parse()?,
            lag_bytes,
        })
    }
}

/// Separates the fields of a status row; an `application_name` cannot hold it in practice
/// (libpq names are printable), unlike `|`.
const FIELD_SEPARATOR: char = '\u{1f}';

/// One row per WAL sender (base backups included), lag in whole bytes.
const STATUS_QUERY: &str = "SELECT application_name, state, sync_state, \
     COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint::text, '') \
     FROM pg_stat_replication ORDER BY application_name";

impl PostgresServer {
    /// Starts a streaming standby of this server in a fresh directory and returns it, owned by
    /// the caller (stopped and removed on drop, watched like [`PostgresServer::start`]).
    ///
    /// The base backup is taken from this server directly and creates a replication slot named
    /// `application_name` here; the standby then streams from `upstream`, which must lead to
    /// this server — its own [`address`](Self::address), or a proxy in front of it (the
    /// standby retries every 200 ms until `upstream` lets it through). The standby inherits
    /// the primary's settings except `synchronous_standby_names`, which it starts without, so
    /// that once promoted it does not wait for standbys it does not have.
    pub fn start_standby(
        &self,
        upstream: SocketAddr,
        application_name: &ApplicationName,
    ) -> anyhow::Result<PostgresServer> {
        let mut standby = PostgresServer::unstarted(true)?;
        standby.application_name = Some(application_name.clone());
        let standby = standby
            .launch(
                |standby| {
                    self.base_backup_into(standby, application_name)?;
                    standby.configure_as_standby(upstream, application_name)
                },
                |_| Ok(()),
            )
            .with_context(|| format!("starting standby {application_name} of {self}"))?;
        tracing::info!(primary = %self, standby = %standby, %upstream, "PostgreSQL standby started");
        Ok(standby)
    }

    /// `pg_basebackup` of this server into `standby`'s (empty) data directory, creating the
    /// slot the standby will stream through and streaming the WAL written meanwhile.
    fn base_backup_into(
        &self,
        standby: &PostgresServer,
        slot: &ApplicationName,
    ) -> anyhow::Result<()> {
        run(standby
            .server_command("pg_basebackup")
            .arg("-D")
            .arg(standby.data_dir())
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(["-U", REPLICATION_ROLE, "-X", "stream", "-C", "-S"])
            .arg(slot.as_str())
            // An immediate checkpoint instead of a spread one: seconds saved per standby.
            .arg("--checkpoint=fast")
            // Like initdb's --no-sync: only the throwaway copy is at risk, the server fsyncs.
            .arg("--no-sync")
            .env("PGCONNECT_TIMEOUT", "10"))
        .with_context(|| format!("pg_basebackup of {self}"))?;
        Ok(())
    }

    /// What `pg_basebackup -R` would write, with the upstream we choose instead of the address
    /// the backup came from.
    fn configure_as_standby(
        &self,
        upstream: SocketAddr,
        application_name: &ApplicationName,
    ) -> anyhow::Result<()> {
        let settings = format!(
            "\n# Written by meridian-pgserver: a standby streaming from {upstream}.\n\
             primary_conninfo = 'host={host} port={port} user={REPLICATION_ROLE} \
             application_name={application_name} connect_timeout=5'\n\
             primary_slot_name = '{application_name}'\n\
             synchronous_standby_names = ''\n\
             # A base backup starts with crash recovery, which first makes the data directory\n\
             # durable: one syncfs instead of an fsync per file (seconds on a busy disk).\n\
             recovery_init_sync_method = syncfs\n",
            host = upstream.ip(),
            port = upstream.port(),
        );
        // Later lines of the file win over what the primary had set there by ALTER SYSTEM.
        self.append_to_data_file("postgresql.auto.conf", &settings)?;
        self.write_data_file("standby.signal", "")
    }

    /// Makes commits on this server wait for `standbys` (`synchronous_standby_names`, with
    /// `synchronous_commit = on`) from now on, through `ALTER SYSTEM` and a reload as an
    /// operator would; returns once new sessions see the setting.
    pub fn set_synchronous_standbys(
        &self,
        standbys: &SynchronousStandbys,
    ) -> Result<(), ReplicationError> {
        let setting = standbys.to_setting()?;
        // ALTER SYSTEM refuses to run in a transaction block, so one statement per call.
        for statement in [
            format!("ALTER SYSTEM SET synchronous_standby_names = '{setting}'"),
            "ALTER SYSTEM SET synchronous_commit = 'on'".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            self.psql("postgres", &statement)
                .with_context(|| format!("setting synchronous standbys on {self}"))?;
        }
        // The postmaster rereads the files when it handles the signal, a moment later.
        self.wait_until(
            &format!("synchronous_standby_names = '{setting}' after the reload"),
            RELOAD_TIMEOUT,
            || Ok(self.psql("postgres", "SHOW synchronous_standby_names")? == setting),
        )?;
        Ok(())
    }

    /// Every standby connected to this server, from `pg_stat_replication` (empty on a server
    /// nobody streams from).
    pub fn replication_status(&self) -> anyhow::Result<Vec<StandbyStatus>> {
        let output = self
            .client_command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", "meridian", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg("-F")
            .arg(FIELD_SEPARATOR.to_string())
            .arg("-c")
            .arg(STATUS_QUERY)
            .output()
            .with_context(|| format!("running psql against {self}"))?;
        if !output.status.success() {
            anyhow::bail!(
                "reading pg_stat_replication on {self}: {}",
                describe(&output)
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| !line.is_empty())
            .map(StandbyStatus::parse)
            .collect::<anyhow::Result<_>>()
            .with_context(|| format!("reading pg_stat_replication on {self}"))
    }

    /// The status of standby `name` as this server sees it, if it is connected.
    pub fn standby_status(&self, name: &ApplicationName) -> anyhow::Result<Option<StandbyStatus>> {
        Ok(self
            .replication_status()?
            .into_iter()
            .find(|status| status.application_name == name.as_str()))
    }

    /// Waits until standby `name` streams from this server (caught up once).
    pub fn wait_for_streaming(
        &self,
        name: &ApplicationName,
        timeout: Duration,
    ) -> Result<StandbyStatus, ReplicationError> {
        self.wait_for_standby(name, &format!("standby {name} to stream"), timeout, |s| {
            s.state == WalSenderState::Streaming
        })
    }

    /// Waits until standby `name` streams and has replayed everything this server wrote.
    pub fn wait_for_catch_up(
        &self,
        name: &ApplicationName,
        timeout: Duration,
    ) -> Result<StandbyStatus, ReplicationError> {
        let what = format!("standby {name} to replay everything (lag 0)");
        self.wait_for_standby(name, &what, timeout, |s| {
            s.state == WalSenderState::Streaming && s.lag_bytes == Some(0)
        })
    }

    /// Waits until this server counts standby `name` as `sync_state` (e.g. `Sync` after
    /// [`Self::set_synchronous_standbys`]).
    pub fn wait_for_sync_state(
        &self,
        name: &ApplicationName,
        sync_state: SyncState,
        timeout: Duration,
    ) -> Result<StandbyStatus, ReplicationError> {
        let what = format!("standby {name} to be {sync_state:?}");
        self.wait_for_standby(name, &what, timeout, |s| s.sync_state == sync_state)
    }

    fn wait_for_standby(
        &self,
        name: &ApplicationName,
        what: &str,
        timeout: Duration,
        done: impl Fn(&StandbyStatus) -> bool,
    ) -> Result<StandbyStatus, ReplicationError> {
        let mut found = None;
        self.wait_until(what, timeout, || {
            found = self.standby_status(name)?.filter(|status| done(status));
            Ok(found.is_some())
        })?;
        found.ok_or_else(|| anyhow::anyhow!("{what}: the status vanished").into())
    }

    /// Whether this server is a standby (`pg_is_in_recovery()`).
    pub fn is_in_recovery(&self) -> anyhow::Result<bool> {
        match self
            .psql("postgres", "SELECT pg_is_in_recovery()")?
            .as_str()
        {
            "t" => Ok(true),
            "f" => Ok(false),
            other => anyhow::bail!("pg_is_in_recovery() on {self} answered {other:?}"),
        }
    }

    /// Promotes this standby to a primary with `pg_ctl promote -w`, returning once it accepts
    /// writes. A server that is not a standby answers [`ReplicationError::NotAStandby`].
    pub fn promote(&self) -> Result<(), ReplicationError> {
        let output = self
            .pg_ctl()
            .args(["promote", "-w", "-t"])
            .arg(PROMOTE_TIMEOUT_SECS.to_string())
            .output()
            .with_context(|| format!("running pg_ctl promote on {self}"))?;
        if output.status.success() {
            tracing::info!(server = %self, "PostgreSQL standby promoted");
            return Ok(());
        }
        // pg_ctl's own words for a server that is not a standby (a primary, or promoted).
        if String::from_utf8_lossy(&output.stderr).contains("not in standby mode") {
            return Err(ReplicationError::NotAStandby {
                server: self.to_string(),
            });
        }
        Err(anyhow::anyhow!("pg_ctl promote of {self} failed: {}", describe(&output)).into())
    }

    /// Polls `done` every [`POLL_INTERVAL`] until it holds, for at most `timeout`. An error
    /// from `done` ends the wait only at the timeout (a server may refuse connections for a
    /// moment), and is then named in the timeout's `what`.
    fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> anyhow::Result<bool>,
    ) -> Result<(), ReplicationError> {
        let started = Instant::now();
        loop {
            let last_error = match done() {
                Ok(true) => return Ok(()),
                Ok(false) => None,
                Err(error) => Some(error),
            };
            if started.elapsed() >= timeout {
                let what = match last_error {
                    Some(error) => format!("{what} (last error: {error:#})"),
                    None => what.to_owned(),
                };
                return Err(ReplicationError::Timeout {
                    server: self.to_string(),
                    what,
                    waited_ms: started.elapsed().as_millis(),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ApplicationName {
        ApplicationName::new(text).expect("valid name")
    }

    #[test]
    fn application_names_are_slot_names() {
        assert!(ApplicationName::new("zone_b_1").is_ok());
        for bad in ["", "1abc", "Upper", "with-dash", "space d", &"a".repeat(64)] {
            let error = ApplicationName::new(bad).expect_err(bad);
            assert!(
                matches!(error, ReplicationError::InvalidApplicationName { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn synchronous_standbys_render_as_the_setting() {
        assert_eq!(SynchronousStandbys::None.to_setting().expect("none"), "");
        assert_eq!(
            SynchronousStandbys::one(name("b"))
                .to_setting()
                .expect("one"),
            "FIRST 1 (b)"
        );
        let any = SynchronousStandbys::Any {
            count: 2,
            names: vec![name("b"), name("c"), name("d")],
        };
        assert_eq!(any.to_setting().expect("any"), "ANY 2 (b, c, d)");
        let too_many = SynchronousStandbys::First {
            count: 2,
            names: vec![name("b")],
        };
        assert!(too_many.to_setting().is_err());
    }

    #[test]
    fn status_rows_parse_into_types() {
        let sep = FIELD_SEPARATOR;
        let row = format!("b{sep}streaming{sep}sync{sep}128");
        let status = StandbyStatus::parse(&row).expect("row");
        assert_eq!(status.application_name, "b");
        assert_eq!(status.state, WalSenderState::Streaming);
        assert_eq!(status.sync_state, SyncState::Sync);
        assert_eq!(status.lag_bytes, Some(128));
        let no_replay = format!("c{sep}catchup{sep}async{sep}");
        assert_eq!(
            StandbyStatus::parse(&no_replay).expect("row").lag_bytes,
            None
        );
        assert!(StandbyStatus::parse("b|streaming").is_err());
        assert!(StandbyStatus::parse(&format!("b{sep}weird{sep}sync{sep}0")).is_err());
    }
}
