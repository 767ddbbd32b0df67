//! `meridian-patroni`: a real Patroni cluster with its etcd, started from the Debian packages
//! (`patroni`, `etcd-server`) for the lab and the tests. Production deployments run Patroni for
//! in-region PostgreSQL failover; Meridian does not re-implement it, so the lab runs the same
//! thing: a single-member etcd ([`EtcdServer`]) and one Patroni process per member
//! ([`PatroniCluster`]), each bootstrapping and supervising its own PostgreSQL server, with
//! `synchronous_mode` on and tuned timing ([`Timing`]). Like `meridian-pgserver`, everything
//! lives in a temporary directory, runs as the `postgres` user when we are root, and is removed
//! when the handle drops or, through a watchdog process, when the owning process dies.

mod cluster;
mod config;
mod etcd;
mod probe;
mod process;
mod rest;
mod timing;

use std::fmt;

pub use cluster::{ClusterOptions, Member, PatroniCluster};
pub use etcd::EtcdServer;
pub use rest::{MemberRole, MemberView};
pub use timing::{Timing, TimingError};

/// What to install when a binary is missing.
pub const INSTALL_HINT: &str = "install with apt-get install -y patroni etcd-server postgresql";

/// Errors callers tell apart: a missing package, bad settings, or a cluster without a writer.
/// Everything else (a process that would not start, a failed request) is `Failed`, with its
/// causes.
#[derive(Debug, thiserror::Error)]
pub enum PatroniError {
    #[error("{program} not found on PATH ({INSTALL_HINT})")]
    NotInstalled { program: &'static str },
    #[error("invalid Patroni timing: {0}")]
    Timing(#[from] TimingError),
    #[error("invalid member or scope name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("no member named {0} in this cluster")]
    UnknownMember(MemberName),
    #[error("no member accepted writes within {waited_ms} ms: {last}")]
    NoWriter { waited_ms: u128, last: NoWriter },
    #[error("switchover refused by {member} (HTTP {status}): {body}")]
    SwitchoverRefused {
        member: MemberName,
        status: u16,
        body: String,
    },
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Why the cluster has no writer right now. Holding Patroni's leader key is not enough: the
/// key holder's `/primary` and `/leader` answer 200 even while its PostgreSQL is down or cannot
/// commit, so a writer is the key holder whose server also commits a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoWriter {
    /// No live member says it holds the leader key (an election is pending or under way).
    NoLeaderKey,
    /// The key holder's server refused or failed the write probe.
    NotWritable { member: MemberName, reason: String },
}

impl fmt::Display for NoWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoWriter::NoLeaderKey => write!(f, "no member holds the leader key"),
            NoWriter::NotWritable { member, reason } => {
                write!(
                    f,
                    "{member} holds the leader key but does not commit: {reason}"
                )
            }
        }
    }
}

/// A Patroni member's name. It becomes the member's replication slot and its
/// `application_name` in `synchronous_standby_names`, so it is restricted to what PostgreSQL
/// takes there unquoted: a lowercase letter, then lowercase letters, digits and `_`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberName(String);

impl MemberName {
    pub fn new(name: impl Into<String>) -> Result<Self, PatroniError> {
        let name = name.into();
        check_identifier(&name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One member to start. `nofailover` and `nosync` become Patroni tags: a member in another
/// region should carry both, so it is neither promoted nor made the synchronous standby.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSpec {
    pub name: MemberName,
    pub nofailover: bool,
    pub nosync: bool,
}

impl MemberSpec {
    /// A member that may become the leader or the synchronous standby.
    pub fn new(name: &str) -> Result<Self, PatroniError> {
        Ok(Self {
            name: MemberName::new(name)?,
            nofailover: false,
            nosync: false,
        })
    }
}

/// Scope names become etcd key paths; member names also slot names. Both use this alphabet.
pub(crate) fn check_identifier(name: &str) -> Result<(), PatroniError> {
    let invalid = |why| {
        Err(PatroniError::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if name.is_empty() || name.len() > 48 {
        return invalid("must be 1 to 48 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("must start with a lowercase letter");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return invalid("may hold only lowercase letters, digits and _");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_names_are_slot_names() {
        assert!(MemberName::new("db1").is_ok());
        assert!(MemberName::new("zone_a_db2").is_ok());
        for bad in ["", "1db", "Db1", "db-1", "db 1", &"d".repeat(49)] {
            assert!(
                matches!(MemberName::new(bad), Err(PatroniError::InvalidName { .. })),
                "{bad:?} must be refused"
            );
        }
    }
}
