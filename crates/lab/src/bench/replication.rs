//! The PostgreSQL a replication benchmark measures against: a throwaway primary alone
//! (`none`), or with one standby streaming from it (`async`, or `sync` where every commit
//! waits for the standby), the standby's link either direct or through a delaying TCP proxy
//! that holds each chunk RTT/2 per direction. Also the sweep both `bench ledger` and
//! `bench pgbench` run over such clusters: one fresh cluster per run, the standby's state read
//! from `pg_stat_replication` before and after each measurement, so that a figure labelled
//! `sync` is one where the primary really counted its standby as synchronous throughout.

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meridian_netdelay::DelayProxy;
use meridian_pgserver::{
    ApplicationName, PostgresServer, SyncState, SynchronousStandbys, WalSenderState,
};
use serde::Serialize;

/// The largest standby round trip a run accepts: beyond it PostgreSQL's own timeouts
/// (`wal_sender_timeout`, keep-alives) start to matter more than the link.
pub const MAX_STANDBY_RTT_MS: u32 = 1_000;
/// The name the standby streams under (and its replication slot's).
const STANDBY_NAME: &str = "bench_standby";
/// How long the standby may take to stream once started (its first connection goes through
/// the proxy and retries every 200 ms).
const STREAMING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the primary may take to count the standby as synchronous after the reload.
const SYNC_STATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether and how the measured database replicates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// A primary alone.
    None,
    /// One standby; commits do not wait for it.
    Async,
    /// One standby in `synchronous_standby_names`; every commit waits until it has flushed.
    Sync,
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "none",
            Self::Async => "async",
            Self::Sync => "sync",
        })
    }
}

/// The link between the standby and its primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StandbyLink {
    /// The standby connects to the primary itself: what the proxy's own cost compares with.
    Direct,
    /// Through the delaying proxy, each direction held half of this round trip (0 = the proxy
    /// in the path with no delay).
    Proxied { rtt_ms: u32 },
}

impl FromStr for StandbyLink {
    type Err = anyhow::Error;

    /// `direct`, or a round trip in whole milliseconds from 0 to [`MAX_STANDBY_RTT_MS`].
    fn from_str(text: &str) -> anyhow::Result<Self> {
        if text == "direct" {
            return Ok(Self::Direct);
        }
        let rtt_ms: u32 = text.parse().map_err(|_| {
            anyhow::anyhow!("{text:?} is neither `direct` nor a round trip in whole milliseconds")
        })?;
        if rtt_ms > MAX_STANDBY_RTT_MS {
            anyhow::bail!("a standby round trip of {rtt_ms} ms is above the {MAX_STANDBY_RTT_MS} ms this bench accepts");
        }
        Ok(Self::Proxied { rtt_ms })
    }
}

impl fmt::Display for StandbyLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Direct => f.write_str("direct"),
            Self::Proxied { rtt_ms } => write!(f, "+{rtt_ms} ms"),
        }
    }
}

/// The flags every replication benchmark shares.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// Replication modes to measure, comma-separated (none, async, sync); one table at the end.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub replication: Option<Vec<Replication>>,
    /// The standby link's round trips in ms, comma-separated, one run per value (`direct`: no
    /// proxy at all, `0`: the proxy with no delay); `none` ignores them.
    #[arg(
        long = "standby-rtt-ms",
        value_delimiter = ',',
        default_value = "0",
        requires = "replication"
    )]
    pub standby_rtt_ms: Vec<StandbyLink>,
    /// Runs of every cell (a fresh cluster each time), taken in rounds over all cells so that
    /// the machine's drift spreads over every cell alike; the table shows the median.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20), requires = "replication")]
    pub runs: u64,
}

/// One configuration of a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Cell {
    pub replication: Replication,
    /// `None` for [`Replication::None`], which has no standby.
    #[serde(skip)]
    pub link: Option<StandbyLink>,
}

impl Cell {
    /// Every cell `replications` × `links` name, `none` once whatever the links.
    pub fn all(replications: &[Replication], links: &[StandbyLink]) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &replication in replications {
            let links: Vec<Option<StandbyLink>> = match replication {
                Replication::None => vec![None],
                _ => links.iter().copied().map(Some).collect(),
            };
            for link in links {
                let cell = Cell { replication, link };
                if !cells.contains(&cell) {
                    cells.push(cell);
                }
            }
        }
        cells
    }

    /// Whether the standby link goes through the proxy.
    pub fn proxied(&self) -> bool {
        matches!(self.link, Some(StandbyLink::Proxied { .. }))
    }

    /// The proxied link's round trip.
    pub fn standby_rtt_ms(&self) -> Option<u32> {
        match self.link {
            Some(StandbyLink::Proxied { rtt_ms }) => Some(rtt_ms),
            _ => None,
        }
    }

    /// The link column of a table.
    pub fn link_label(&self) -> String {
        self.link.map_or_else(|| "-".to_owned(), |l| l.to_string())
    }
}

/// A running primary, with its standby (and the proxy between them) if the cell has one.
/// Dropping it stops the standby, then the proxy, then the primary.
#[derive(Debug)]
pub struct ReplicatedPostgres {
    cell: Cell,
    standby: Option<PostgresServer>,
    proxy: Option<DelayProxy>,
    primary: Arc<PostgresServer>,
}

impl ReplicatedPostgres {
    /// Starts the cluster `cell` describes; for `sync`, returns only once the primary counts
    /// the standby as synchronous.
    pub async fn start(cell: Cell) -> anyhow::Result<ReplicatedPostgres> {
        let primary = Arc::new(blocking(PostgresServer::start).await?);
        let (standby, proxy) = match cell.link.filter(|_| cell.replication != Replication::None) {
            None => (None, None),
            Some(link) => {
                let (standby, proxy) = start_standby(&primary, link).await?;
                (Some(standby), proxy)
            }
        };
        let cluster = ReplicatedPostgres {
            cell,
            standby,
            proxy,
            primary,
        };
        if cell.replication == Replication::Sync {
            let primary = cluster.primary.clone();
            blocking(move || {
                let name = standby_name()?;
                primary.set_synchronous_standbys(&SynchronousStandbys::one(name.clone()))?;
                primary.wait_for_sync_state(&name, SyncState::Sync, SYNC_STATE_TIMEOUT)?;
                Ok(())
            })
            .await
            .context("making the standby synchronous")?;
        }
        Ok(cluster)
    }

    pub fn cell(&self) -> Cell {
        self.cell
    }

    /// The server the deployment (or pgbench) writes to.
    pub fn primary(&self) -> &PostgresServer {
        &self.primary
    }

    pub fn standby(&self) -> Option<&PostgresServer> {
        self.standby.as_ref()
    }

    pub fn proxy(&self) -> Option<&DelayProxy> {
        self.proxy.as_ref()
    }

    /// Reads `pg_stat_replication` on the primary and checks that the standby streams in the
    /// state the cell promises (`sync` counted as synchronous, `async` as asynchronous);
    /// returns that state (`None` without a standby). A `sync` cell whose standby is not
    /// synchronous is an error: its figures would be asynchronous ones.
    pub async fn check_replicating(&self) -> anyhow::Result<Option<SyncState>> {
        let expected = match self.cell.replication {
            Replication::None => return Ok(None),
            Replication::Async => SyncState::Async,
            Replication::Sync => SyncState::Sync,
        };
        let primary = self.primary.clone();
        let status = blocking(move || primary.standby_status(&standby_name()?)).await?;
        let status = status.with_context(|| {
            format!(
                "the {} standby is not connected to the primary",
                self.cell.replication
            )
        })?;
        if status.state != WalSenderState::Streaming || status.sync_state != expected {
            anyhow::bail!(
                "the primary sees the standby as {:?}/{:?}, not streaming/{expected:?}: this \
                 run would not measure {} replication",
                status.state,
                status.sync_state,
                self.cell.replication
            );
        }
        Ok(Some(status.sync_state))
    }
}

/// A standby of `primary` streaming over `link`, and the proxy of that link if any.
async fn start_standby(
    primary: &Arc<PostgresServer>,
    link: StandbyLink,
) -> anyhow::Result<(PostgresServer, Option<DelayProxy>)> {
    let (upstream, proxy) = match link {
        StandbyLink::Direct => (primary.address(), None),
        StandbyLink::Proxied { rtt_ms } => {
            // Each direction holds half the round trip, in µs so that 1 ms is 500 µs each way.
            let one_way = Duration::from_micros(u64::from(rtt_ms) * 500);
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let proxy = DelayProxy::start(listen, primary.address(), one_way)
                .await
                .context("starting the standby link's delaying proxy")?;
            (proxy.local_addr(), Some(proxy))
        }
    };
    let from = primary.clone();
    let standby = blocking(move || {
        let name = standby_name()?;
        let standby = from.start_standby(upstream, &name)?;
        from.wait_for_streaming(&name, STREAMING_TIMEOUT)?;
        Ok(standby)
    })
    .await
    .with_context(|| format!("starting a standby over the {link} link"))?;
    Ok((standby, proxy))
}

fn standby_name() -> anyhow::Result<ApplicationName> {
    Ok(ApplicationName::new(STANDBY_NAME)?)
}

/// Runs a blocking PostgreSQL helper (they wait with `std::thread::sleep` and child
/// processes) off the runtime, so the proxy's tasks keep forwarding meanwhile, even on a
/// single-threaded runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("a PostgreSQL helper thread panicked")?
}

/// One measurement of one cell, with the standby's state as the primary saw it around it.
#[derive(Debug, Serialize)]
pub struct Measured<R> {
    pub sync_state_before: Option<String>,
    pub sync_state_after: Option<String>,
    #[serde(flatten)]
    pub result: R,
}

/// Every run of one cell.
#[derive(Debug, Serialize)]
pub struct CellRuns<R> {
    #[serde(flatten)]
    pub cell: Cell,
    /// Whether the standby link went through the proxy.
    pub proxy: bool,
    pub standby_rtt_ms: Option<u32>,
    pub runs: Vec<Measured<R>>,
}

/// Measures every cell `runs` times, in rounds (every cell once, then again), each run on a
/// fresh cluster, the standby's state checked before and after `measure`.
pub async fn sweep<R, F, Fut>(
    cells: &[Cell],
    runs: u64,
    say: &mut dyn FnMut(String),
    mut measure: F,
) -> anyhow::Result<Vec<CellRuns<R>>>
where
    F: FnMut(Arc<ReplicatedPostgres>) -> Fut,
    Fut: Future<Output = anyhow::Result<R>>,
{
    let mut results: Vec<CellRuns<R>> = cells
        .iter()
        .map(|&cell| CellRuns {
            cell,
            proxy: cell.proxied(),
            standby_rtt_ms: cell.standby_rtt_ms(),
            runs: Vec::new(),
        })
        .collect();
    for round in 1..=runs {
        for results in &mut results {
            let cell = results.cell;
            say(format!(
                "run {round}/{runs}: replication {}, standby link {}",
                cell.replication,
                cell.link_label()
            ));
            let cluster = Arc::new(ReplicatedPostgres::start(cell).await?);
            let before = cluster.check_replicating().await?;
            let result = measure(cluster.clone()).await?;
            let after = cluster
                .check_replicating()
                .await
                .context("after the measurement")?;
            results.runs.push(Measured {
                sync_state_before: before.map(sync_state_name),
                sync_state_after: after.map(sync_state_name),
                result,
            });
        }
    }
    Ok(results)
}

fn sync_state_name(state: SyncState) -> String {
    format!("{state:?}").to_lowercase()
}

/// The median of `values` (the lower middle one for an even count); 0 when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n => values[(n - 1) / 2],
    }
}

/// `min–max` of `values`, for a table cell beside the median.
pub fn range(values: impl IntoIterator<Item = f64>) -> String {
    let values: Vec<f64> = values.into_iter().collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 {
        String::new()
    } else {
        format!("{min:.0}–{max:.0}")
    }
}

/// For a `sync` row, its median throughput over the `async` row's on the same link, if that
/// was measured too: the target is ≥ 0.8 at 1 ms.
pub fn sync_over_async<R>(
    all: &[CellRuns<R>],
    row: &CellRuns<R>,
    throughput: impl Fn(&R) -> f64,
) -> Option<f64> {
    if row.cell.replication != Replication::Sync {
        return None;
    }
    let async_row = all.iter().find(|other| {
        other.cell.replication == Replication::Async && other.cell.link == row.cell.link
    })?;
    let of = |cell: &CellRuns<R>| median(cell.runs.iter().map(|m| throughput(&m.result)));
    let base = of(async_row);
    (base > 0.0).then(|| of(row) / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_parse_and_refuse_out_of_range() {
        assert_eq!(
            "direct".parse::<StandbyLink>().unwrap(),
            StandbyLink::Direct
        );
        assert_eq!(
            "30".parse::<StandbyLink>().unwrap(),
            StandbyLink::Proxied { rtt_ms: 30 }
        );
        let error = "1001".parse::<StandbyLink>().unwrap_err().to_string();
        assert!(error.contains("above the 1000 ms"), "{error}");
        assert!("-1".parse::<StandbyLink>().is_err());
        assert!("1.5".parse::<StandbyLink>().is_err());
    }

    #[test]
    fn none_is_one_cell_whatever_the_links() {
        let links = [StandbyLink::Direct, StandbyLink::Proxied { rtt_ms: 1 }];
        let cells = Cell::all(
            &[Replication::None, Replication::Sync, Replication::None],
            &links,
        );
        let labels: Vec<String> = cells
            .iter()
            .map(|c| format!("{} {}", c.replication, c.link_label()))
            .collect();
        assert_eq!(labels, ["none -", "sync direct", "sync +1 ms"]);
    }

    #[test]
    fn median_and_ratio() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0]), 1.0);
        let row = |replication, tx: f64| CellRuns {
            cell: Cell {
                replication,
                link: Some(StandbyLink::Proxied { rtt_ms: 1 }),
            },
            proxy: true,
            standby_rtt_ms: Some(1),
            runs: vec![Measured {
                sync_state_before: None,
                sync_state_after: None,
                result: tx,
            }],
        };
        let all = vec![row(Replication::Async, 100.0), row(Replication::Sync, 85.0)];
        assert_eq!(sync_over_async(&all, &all[1], |tx| *tx), Some(0.85));
        assert_eq!(sync_over_async(&all, &all[0], |tx| *tx), None);
    }
}
