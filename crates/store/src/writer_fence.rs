//! The fence against a second writer: which of the writable servers of a multi-host URL a
//! store may write on. After a failover the old primary can come back *as a primary* — restarted
//! on its old data directory instead of being rewound into a standby of the new one. It then
//! accepts writes again, on a history the rest of the cluster has left; a write there is lost
//! to everyone who follows the promoted server, or worse, seen by some members and not others.
//!
//! Every promotion starts a new timeline (PostgreSQL numbers them 1, 2, 3, ... within one
//! cluster, i.e. one system identifier), so of two servers of a cluster that both accept writes
//! the one on the lower timeline is the one left behind. The search for the writer
//! ([`crate::follow`]) probes every host of the URL and hands what each said to [`choose`]:
//! - a writable server whose timeline is lower than another server's of the same cluster —
//!   a writable one, or a standby, whose timeline shows a promotion happened — is passed over;
//! - so is one lower than the highest timeline this *process* has seen on that cluster, even if
//!   the server that showed it is unreachable now ([`remember`]/[`highest_seen`], process-wide,
//!   so every store of the process, the replica lease included, shares what any one saw);
//! - two servers of one cluster writable on the same timeline (two standbys promoted from one
//!   history, both reaching the same number) cannot be told apart: both are refused.
//!
//! What it cannot cover: a process that never saw the higher timeline and can reach only the
//! old primary (a fresh start during a partition) writes there. In production the database's
//! own failover manager closes that hole (Patroni rewinds or stops a returning old primary,
//! `pg_rewind`); see `docs/high-availability.md`. Servers of different clusters (different
//! system identifiers) have unrelated timelines and are not compared.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use crate::postgres_url::HostAddr;

/// A PostgreSQL cluster: the system identifier `initdb` gave it, which its base backups
/// (standbys) and their promotions keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SystemId(pub i64);

/// A PostgreSQL timeline; every promotion starts the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timeline(pub u32);

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What one server said about itself when probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerFacts {
    pub system_id: SystemId,
    /// On a server that is not in recovery, its current timeline (from its current WAL file
    /// name; `pg_control_checkpoint()` lags until the first checkpoint after a promotion). On a
    /// standby, a lower bound: the last restartpoint's timeline, or the one it receives.
    pub timeline: Timeline,
    /// When its postmaster started: with the system identifier, tells two addresses of one
    /// server from two servers.
    pub started: String,
    /// Whether it takes writes: not in recovery and not read-only.
    pub writable: bool,
}

impl ServerFacts {
    fn same_server(&self, other: &ServerFacts) -> bool {
        self.system_id == other.system_id && self.started == other.started
    }
}

/// Why [`choose`] refused a writable server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Its timeline is behind one seen on another server of the cluster (now or earlier by
    /// this process): an old primary that was not rewound.
    Behind {
        timeline: Timeline,
        newer: Timeline,
        seen_on: HostAddr,
    },
    /// Another server of the cluster is writable on the same, highest, timeline.
    SameTimeline { timeline: Timeline, other: HostAddr },
}

impl Fenced {
    /// The reason, as a sentence about `host`.
    pub fn about<'a>(&'a self, host: &'a HostAddr) -> impl fmt::Display + 'a {
        About(self, host)
    }
}

struct About<'a>(&'a Fenced, &'a HostAddr);

impl fmt::Display for About<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let About(fenced, host) = self;
        match fenced {
            Fenced::Behind {
                timeline,
                newer,
                seen_on,
            } => write!(
                f,
                "{host} accepts writes but is on timeline {timeline}, behind timeline {newer} \
                 seen on {seen_on}: an old primary that was not rewound; refusing to write to it"
            ),
            Fenced::SameTimeline { timeline, other } => write!(
                f,
                "{host} and {other} both accept writes on timeline {timeline} of one cluster \
                 (two promotions of one history?); refusing to write to either"
            ),
        }
    }
}

/// The highest timeline seen per cluster by this process, and where.
fn seen() -> &'static Mutex<HashMap<SystemId, (Timeline, HostAddr)>> {
    static SEEN: OnceLock<Mutex<HashMap<SystemId, (Timeline, HostAddr)>>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

/// The highest timeline this process has seen on cluster `system_id`, and on which server.
pub(crate) fn highest_seen(system_id: SystemId) -> Option<(Timeline, HostAddr)> {
    seen()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&system_id)
        .cloned()
}

/// Records that `host` showed `timeline` on cluster `system_id`, if it is the highest yet.
pub(crate) fn remember(system_id: SystemId, timeline: Timeline, host: &HostAddr) {
    let mut seen = seen().lock().unwrap_or_else(|p| p.into_inner());
    let entry = seen
        .entry(system_id)
        .or_insert_with(|| (timeline, host.clone()));
    if timeline > entry.0 {
        *entry = (timeline, host.clone());
    }
}

/// What [`choose`] decided for the servers that answered a probe.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Index (into the slice given) of the writable server to write on, the first in the
    /// URL's order that is not fenced.
    pub writer: Option<usize>,
    /// The writable servers refused, with why.
    pub fenced: Vec<(usize, Fenced)>,
}

/// Decides which writable server, if any, may be written on; `servers` are the ones that
/// answered, in the URL's order, and `remembered` gives what this process saw before (see
/// [`highest_seen`]). Pure, so every rule is tested without servers.
pub(crate) fn choose(
    servers: &[(HostAddr, ServerFacts)],
    remembered: impl Fn(SystemId) -> Option<(Timeline, HostAddr)>,
) -> Choice {
    // The highest timeline per cluster: what this process saw before, then every server now
    // (a standby's lower bound is still proof that a promotion reached it).
    let mut highest: HashMap<SystemId, (Timeline, HostAddr)> = HashMap::new();
    for (host, facts) in servers {
        let entry = highest.entry(facts.system_id).or_insert_with(|| {
            remembered(facts.system_id).unwrap_or((facts.timeline, host.clone()))
        });
        if facts.timeline > entry.0 {
            *entry = (facts.timeline, host.clone());
        }
    }
    let mut fenced = Vec::new();
    for (index, (_, facts)) in servers.iter().enumerate() {
        if !facts.writable {
            continue;
        }
        let Some((newer, seen_on)) = highest.get(&facts.system_id) else {
            continue;
        };
        if facts.timeline < *newer {
            fenced.push((
                index,
                Fenced::Behind {
                    timeline: facts.timeline,
                    newer: *newer,
                    seen_on: seen_on.clone(),
                },
            ));
            continue;
        }
        // Another writable server of the cluster on the same timeline, not this one under
        // another address: refuse this one (the other is refused in its own turn).
        let twin = servers.iter().find(|(_, other)| {
            other.writable
                && other.system_id == facts.system_id
                && other.timeline == facts.timeline
                && !other.same_server(facts)
        });
        if let Some((other, _)) = twin {
            fenced.push((
                index,
                Fenced::SameTimeline {
                    timeline: facts.timeline,
                    other: other.clone(),
                },
            ));
        }
    }
    let writer = servers.iter().enumerate().position(|(index, (_, facts))| {
        facts.writable && !fenced.iter().any(|(refused, _)| *refused == index)
    });
    Choice { writer, fenced }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(port: u16) -> HostAddr {
        HostAddr {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn server(port: u16, system: i64, timeline: u32, writable: bool) -> (HostAddr, ServerFacts) {
        (
            host(port),
            ServerFacts {
                system_id: SystemId(system),
                timeline: Timeline(timeline),
                started: format!("started {port}"),
                writable,
            },
        )
    }

    fn nothing_remembered(_: SystemId) -> Option<(Timeline, HostAddr)> {
        None
    }

    #[test]
    fn the_old_primary_on_a_lower_timeline_is_passed_over_wherever_it_is_listed() {
        let servers = [server(5433, 7, 1, true), server(5434, 7, 2, true)];
        let choice = choose(&servers, nothing_remembered);
        assert_eq!(choice.writer, Some(1));
        assert_eq!(
            choice.fenced,
            [(
                0,
                Fenced::Behind {
                    timeline: Timeline(1),
                    newer: Timeline(2),
                    seen_on: host(5434)
                }
            )]
        );
        let reversed = [server(5434, 7, 2, true), server(5433, 7, 1, true)];
        assert_eq!(choose(&reversed, nothing_remembered).writer, Some(0));
    }

    #[test]
    fn a_standby_on_a_higher_timeline_fences_a_lone_writable_server() {
        let servers = [server(5433, 7, 1, true), server(5435, 7, 2, false)];
        let choice = choose(&servers, nothing_remembered);
        assert_eq!(choice.writer, None);
        assert_eq!(choice.fenced.len(), 1);
    }

    #[test]
    fn a_timeline_seen_earlier_fences_the_old_primary_when_the_new_one_is_unreachable() {
        let servers = [server(5433, 7, 1, true)];
        assert_eq!(choose(&servers, nothing_remembered).writer, Some(0));
        let remembered =
            |system: SystemId| (system == SystemId(7)).then(|| (Timeline(2), host(5434)));
        let choice = choose(&servers, remembered);
        assert_eq!(choice.writer, None);
        assert_eq!(
            choice.fenced[0].1.about(&host(5433)).to_string(),
            "127.0.0.1:5433 accepts writes but is on timeline 1, behind timeline 2 seen on \
             127.0.0.1:5434: an old primary that was not rewound; refusing to write to it"
        );
        // Another cluster's memory says nothing about this one.
        let other = |system: SystemId| (system == SystemId(8)).then(|| (Timeline(5), host(1)));
        assert_eq!(choose(&servers, other).writer, Some(0));
    }

    #[test]
    fn two_writers_on_the_same_timeline_are_both_refused() {
        let servers = [server(5433, 7, 2, true), server(5434, 7, 2, true)];
        let choice = choose(&servers, nothing_remembered);
        assert_eq!(choice.writer, None);
        assert_eq!(choice.fenced.len(), 2);
        assert!(matches!(
            &choice.fenced[0].1,
            Fenced::SameTimeline { other, .. } if *other == host(5434)
        ));
        // One server under two addresses is one writer.
        let mut alias = server(5434, 7, 2, true);
        alias.1.started = servers[0].1.started.clone();
        let choice = choose(&[servers[0].clone(), alias], nothing_remembered);
        assert_eq!(choice.writer, Some(0));
        assert!(choice.fenced.is_empty());
    }

    #[test]
    fn servers_of_different_clusters_are_not_compared() {
        // A failover by copying a database to an unrelated server (as some tests play it).
        let servers = [server(5433, 7, 1, false), server(5434, 8, 1, true)];
        assert_eq!(choose(&servers, nothing_remembered).writer, Some(1));
        let servers = [server(5433, 7, 3, true), server(5434, 8, 1, true)];
        let choice = choose(&servers, nothing_remembered);
        assert_eq!(choice.writer, Some(0), "the first in the URL's order");
        assert!(choice.fenced.is_empty());
    }
}
