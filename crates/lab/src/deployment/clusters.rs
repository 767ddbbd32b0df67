//! The PostgreSQL a running deployment keeps its state on, as one value the lab holds for as
//! long as the deployment runs: either a server the caller runs (tests hand in their shared
//! server), or the description's clusters started as real servers with streaming replication
//! — the primary, each synchronous standby streaming from it (listed in the primary's
//! `synchronous_standby_names`, `synchronous_commit = on`, checked `sync` before anything
//! starts), each asynchronous standby streaming through a delaying proxy when it sits in
//! another region. The drills act on it as an operator would: promote a standby
//! (`pg_ctl promote`), kill -9 every server of a zone, re-point a standby at a new primary
//! (`primary_conninfo` and a reload), read a standby's lag.
//!
//! Each node replica gets a multi-host URL listing the servers of *its own* region, the
//! current primary first: a region-one replica follows the writer from the primary to the
//! synchronous standby by itself, and a cold region-two replica lists only region two's
//! servers, so it waits (not ready, "standby") until its region's server is promoted and can
//! never write across regions to a primary that may still be alive.
//!
//! With `[storage] promoter = "patroni"` the clusters run under Patroni instead
//! ([`super::patroni`]): the lab kills and restarts members, Patroni promotes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_netdelay::DelayProxy;
use meridian_pgserver::{ApplicationName, PostgresServer, SyncState, SynchronousStandbys};

use super::description::{
    ClusterName, Description, Promoter, RegionName, ServerName, ServerRole, ZoneName,
};
use super::patroni::PatroniClusters;
use super::server_view::ServerView;

/// How long a standby may take to stream (and a sync one to count as `sync`) after its start.
const STANDBY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds each host's connect and writer check in the nodes' URLs: a killed server on
/// loopback refuses at once, a frozen one must not hold a writer search for libpq's 5 s.
const NODE_CONNECT_TIMEOUT_S: u64 = 2;
/// The database every server has, for the lab's own SQL.
const MAINTENANCE_DB: &str = "postgres";

/// The PostgreSQL of a deployment; cheap to clone (every clone is the same servers). The
/// servers stop when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Databases {
    inner: Arc<Target>,
}

#[derive(Debug)]
enum Target {
    /// One server run by the caller (tests): every node's database on it, no replication.
    External { address: SocketAddr },
    /// The description's clusters, run here; the lab promotes.
    Clusters(Mutex<Vec<RunningCluster>>),
    /// The description's clusters under Patroni, which promotes.
    Patroni(PatroniClusters),
}

#[derive(Debug)]
struct RunningCluster {
    name: ClusterName,
    delays: StandbyDelays,
    servers: Vec<RunningServer>,
}

/// The one-way delays of a cluster's standby-to-primary links.
#[derive(Debug, Clone, Copy)]
struct StandbyDelays {
    /// Between regions: the cluster's `cross_region_delay_ms` (see
    /// [`super::description::PostgresCluster::link_delay_ms`]).
    cross_region: Duration,
    /// Between two zones of one region: half the `[network]` cross-zone round trip.
    cross_zone: Duration,
}

impl StandbyDelays {
    fn of(description: &Description, cluster: &super::description::PostgresCluster) -> Self {
        Self {
            cross_region: Duration::from_millis(cluster.link_delay_ms(description)),
            cross_zone: Duration::from_micros(
                description.network.cross_zone_rtt_ms.saturating_mul(500),
            ),
        }
    }

    /// The delay of the link from `standby` to `primary`, if it needs one: always between
    /// regions (as before `[network]`), between zones of a region when `[network]` sets a
    /// cross-zone round trip — a synchronous standby in the next zone then acknowledges every
    /// commit one zone round trip later.
    fn between(&self, standby: &RunningServer, primary: &RunningServer) -> Option<Duration> {
        if standby.region != primary.region {
            Some(self.cross_region)
        } else if standby.zone != primary.zone && !self.cross_zone.is_zero() {
            Some(self.cross_zone)
        } else {
            None
        }
    }
}

impl RunningCluster {
    /// The server that is its primary now.
    fn primary(&self) -> anyhow::Result<&RunningServer> {
        self.servers
            .iter()
            .find(|s| s.role == ServerRole::Primary)
            .with_context(|| format!("cluster {} has no primary", self.name))
    }
}

/// The cluster that holds the server called `name`, and that server.
fn locate<'a>(
    clusters: &'a [RunningCluster],
    name: &ServerName,
) -> anyhow::Result<(&'a RunningCluster, &'a RunningServer)> {
    clusters
        .iter()
        .find_map(|cluster| {
            let server = cluster.servers.iter().find(|s| &s.name == name)?;
            Some((cluster, server))
        })
        .with_context(|| format!("no database server {name}"))
}

/// One server of a cluster as it is now; its role changes with promotions.
#[derive(Debug)]
struct RunningServer {
    name: ServerName,
    zone: ZoneName,
    region: RegionName,
    role: ServerRole,
    /// The slot and `application_name` a standby streams under.
    application_name: ApplicationName,
    /// `None` once killed: a killed primary must not come back as a second writer, so the
    /// lab never restarts it; [`Databases::rebuild`] makes a fresh standby in its place.
    server: Option<Arc<PostgresServer>>,
    /// Where the nodes reach it: the first server's own port, kept when the server is
    /// rebuilt (the rebuilt one sits behind `front` there), as a DNS name would be.
    address: SocketAddr,
    /// The delaying link a cross-region standby streams through (dropped with it).
    link: Option<DelayProxy>,
    /// A zero-delay proxy on `address` in front of a rebuilt server.
    front: Option<DelayProxy>,
}

/// What a standby's primary says about it (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyReport {
    pub server: ServerName,
    pub streaming: bool,
    pub sync: bool,
    pub lag_bytes: Option<u64>,
}

impl Databases {
    /// Every node's database on `server`, which the caller keeps running.
    pub fn external(server: &PostgresServer) -> Self {
        Self {
            inner: Arc::new(Target::External {
                address: server.address(),
            }),
        }
    }

    /// Starts every cluster of `description`; asynchronous standbys in another region than
    /// their primary stream through a proxy holding each chunk the cluster's cross-region
    /// delay (one way). Blocks (initdb, base backups); call it from a blocking context or
    /// `block_in_place`.
    pub fn start(description: &Description) -> anyhow::Result<Self> {
        if description.storage.promoter == Promoter::Patroni {
            let handle = tokio::runtime::Handle::try_current()
                .context("Patroni clusters need the tokio runtime")?;
            let patroni = tokio::task::block_in_place(|| {
                handle.block_on(PatroniClusters::start(description))
            })?;
            return Ok(Self {
                inner: Arc::new(Target::Patroni(patroni)),
            });
        }
        let mut clusters = Vec::new();
        for cluster in &description.postgres_clusters {
            clusters.push(
                start_cluster(description, cluster)
                    .with_context(|| format!("starting PostgreSQL cluster {}", cluster.name))?,
            );
        }
        Ok(Self {
            inner: Arc::new(Target::Clusters(Mutex::new(clusters))),
        })
    }

    /// Who promotes a standby when a primary is lost.
    pub fn promoter(&self) -> Promoter {
        match &*self.inner {
            Target::Patroni(_) => Promoter::Patroni,
            Target::External { .. } | Target::Clusters(_) => Promoter::Lab,
        }
    }

    /// The clusters the lab runs and promotes itself (`None` for an external server or
    /// Patroni's clusters).
    fn clusters(&self) -> Option<MutexGuard<'_, Vec<RunningCluster>>> {
        match &*self.inner {
            Target::External { .. } | Target::Patroni(_) => None,
            // A panic while holding the lock leaves plain data behind; it is still usable.
            Target::Clusters(clusters) => Some(clusters.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// [`Self::clusters`], or why the operator's action `what` is not the lab's to take here.
    fn lab_clusters(&self, what: &str) -> anyhow::Result<MutexGuard<'_, Vec<RunningCluster>>> {
        match &*self.inner {
            Target::External { .. } => bail!("{what}: no PostgreSQL cluster runs here"),
            Target::Patroni(_) => bail!(
                "{what}: Patroni runs these clusters (promoter = patroni) and fails over only \
                 inside a region; moving a region needs promoter = lab"
            ),
            Target::Clusters(_) => Ok(self.clusters().expect("checked: the lab's clusters")),
        }
    }

    /// The admin URL (no database) of the primary of `cluster` (or of the external server),
    /// where the nodes' databases are created.
    pub fn admin_url(&self, cluster: Option<&ClusterName>) -> anyhow::Result<String> {
        let address = match &*self.inner {
            Target::External { address } => *address,
            Target::Patroni(patroni) => return patroni.admin_url(cluster),
            Target::Clusters(_) => self
                .primary(cluster)
                .context("no running primary")?
                .address(),
        };
        Ok(format!("postgres://meridian@{address}"))
    }

    /// The URL a replica in `region` uses for `database`: every running server of its region
    /// (the primary first), `target_session_attrs=read-write`.
    pub fn node_url(
        &self,
        cluster: Option<&ClusterName>,
        region: Option<&RegionName>,
        database: &str,
    ) -> anyhow::Result<String> {
        let hosts: Vec<String> = match &*self.inner {
            // As before clusters ran: one plain URL, libpq's defaults.
            Target::External { address } => {
                return Ok(format!("postgres://meridian@{address}/{database}"));
            }
            Target::Patroni(patroni) => return patroni.node_url(cluster, region, database),
            Target::Clusters(_) => {
                let clusters = self.clusters().context("clusters")?;
                let cluster = pick(&clusters, cluster)?;
                let mut servers: Vec<&RunningServer> = cluster
                    .servers
                    .iter()
                    .filter(|s| region.is_none_or(|r| &s.region == r))
                    .collect();
                // Stable sort: the primary first, the others in the file's order.
                servers.sort_by_key(|s| s.role != ServerRole::Primary);
                // Killed servers stay listed: the lab may rebuild one at the same address.
                servers.iter().map(|s| s.address.to_string()).collect()
            }
        };
        if hosts.is_empty() {
            bail!("no running PostgreSQL server in region {region:?} for {database}");
        }
        Ok(format!(
            "postgres://meridian@{}/{database}?target_session_attrs=read-write&connect_timeout={NODE_CONNECT_TIMEOUT_S}",
            hosts.join(",")
        ))
    }

    /// The running primary of `cluster` (the only cluster when `None`); `None` for an
    /// external server or when the primary was killed and nobody was promoted yet.
    pub fn primary(&self, cluster: Option<&ClusterName>) -> Option<Arc<PostgresServer>> {
        let clusters = self.clusters()?;
        let cluster = pick(&clusters, cluster).ok()?;
        cluster
            .servers
            .iter()
            .find(|s| s.role == ServerRole::Primary)
            .and_then(|s| s.server.clone())
    }

    /// Every server of every cluster, as it is now.
    pub fn servers(&self) -> Vec<ServerView> {
        if let Target::Patroni(patroni) = &*self.inner {
            return patroni.servers();
        }
        let Some(clusters) = self.clusters() else {
            return Vec::new();
        };
        clusters
            .iter()
            .flat_map(|cluster| {
                cluster.servers.iter().map(|s| ServerView {
                    cluster: cluster.name.clone(),
                    name: s.name.clone(),
                    zone: s.zone.clone(),
                    region: s.region.clone(),
                    role: s.role,
                    running: s.server.is_some(),
                    address: s.server.as_ref().map(|_| s.address),
                })
            })
            .collect()
    }

    /// What each standby's current primary reports about it (standbys that do not stream are
    /// absent from the primary's view and reported not streaming).
    pub fn standby_reports(&self) -> anyhow::Result<Vec<StandbyReport>> {
        let clusters = match &*self.inner {
            Target::External { .. } => return Ok(Vec::new()),
            Target::Patroni(_) => {
                bail!("Patroni reports its standbys itself (`patronictl list`, GET /cluster)")
            }
            Target::Clusters(_) => self.clusters().expect("checked: the lab's clusters"),
        };
        let mut reports = Vec::new();
        for cluster in clusters.iter() {
            let primary = cluster
                .servers
                .iter()
                .find(|s| s.role == ServerRole::Primary)
                .and_then(|s| s.server.clone());
            let status = match &primary {
                Some(primary) => primary.replication_status()?,
                None => Vec::new(),
            };
            for standby in cluster
                .servers
                .iter()
                .filter(|s| s.role != ServerRole::Primary)
            {
                let seen = status
                    .iter()
                    .find(|st| st.application_name == standby.application_name.as_str());
                reports.push(StandbyReport {
                    server: standby.name.clone(),
                    streaming: seen
                        .is_some_and(|st| st.state == meridian_pgserver::WalSenderState::Streaming),
                    sync: seen.is_some_and(|st| st.sync_state == SyncState::Sync),
                    lag_bytes: seen.and_then(|st| st.lag_bytes),
                });
            }
        }
        Ok(reports)
    }

    /// Kills (SIGKILL, like a lost machine) every running server in `zone`; returns their
    /// names. They are never restarted (see [`RunningServer::server`]).
    pub fn kill9_zone(&self, zone: &ZoneName) -> anyhow::Result<Vec<ServerName>> {
        if let Target::Patroni(patroni) = &*self.inner {
            return patroni.kill9_where(|s| &s.zone == zone);
        }
        self.kill9_where(|s| &s.zone == zone)
    }

    /// Cuts the delaying links that standbys outside `region` stream through (from a primary
    /// in it): open connections are reset with the WAL they held in flight, new ones refused.
    /// A lost region leaves the network at once; without this, a killed primary's last WAL
    /// would still stream out while its processes are reaped (seconds on a busy machine).
    pub fn cut_links_into(&self, region: &RegionName) -> anyhow::Result<Vec<ServerName>> {
        let clusters = self.lab_clusters("cutting the links out of a region")?;
        let mut cut = Vec::new();
        for cluster in clusters.iter() {
            let primary_in_region = cluster
                .servers
                .iter()
                .any(|s| s.role == ServerRole::Primary && &s.region == region);
            if !primary_in_region {
                continue;
            }
            for server in cluster.servers.iter().filter(|s| &s.region != region) {
                if let Some(link) = &server.link {
                    link.partition();
                    cut.push(server.name.clone());
                }
            }
        }
        Ok(cut)
    }

    /// Kills every running server in `region`.
    pub fn kill9_region(&self, region: &RegionName) -> anyhow::Result<Vec<ServerName>> {
        drop(self.lab_clusters("killing a region's servers")?);
        self.kill9_where(|s| &s.region == region)
    }

    /// Stops every running server in `region` (`pg_ctl stop -m immediate`), as an operator
    /// fences a region after a planned switchover once its standby replayed everything;
    /// returns their names. Immediate, because a fast shutdown's checkpoint took 24 s on this
    /// busy machine and sits inside the switchover's RTO, while nothing is left to flush that
    /// the standby has not replayed. Like killed ones, they are never started again.
    pub fn stop_region(&self, region: &RegionName) -> anyhow::Result<Vec<ServerName>> {
        let mut clusters = self.lab_clusters("stopping a region's servers")?;
        let mut stopped = Vec::new();
        for server in clusters
            .iter_mut()
            .flat_map(|c| c.servers.iter_mut())
            .filter(|s| &s.region == region)
        {
            if let Some(running) = server.server.take() {
                running
                    .stop()
                    .with_context(|| format!("stopping {}", server.name))?;
                server.link = None;
                server.front = None;
                stopped.push(server.name.clone());
            }
        }
        Ok(stopped)
    }

    /// Kills the running primary of every cluster; returns their names.
    pub fn kill9_primaries(&self) -> anyhow::Result<Vec<ServerName>> {
        if let Target::Patroni(patroni) = &*self.inner {
            return patroni.kill9_where(|s| s.role == ServerRole::Primary);
        }
        self.kill9_where(|s| s.role == ServerRole::Primary)
    }

    /// Under Patroni: waits until every cluster whose leader was killed has a new leader that
    /// commits; returns the new leaders. The lab's own clusters are promoted by
    /// [`Self::promote`] instead.
    pub async fn wait_for_new_leaders(&self, timeout: Duration) -> anyhow::Result<Vec<ServerName>> {
        match &*self.inner {
            Target::Patroni(patroni) => patroni.wait_for_new_leaders(timeout).await,
            Target::External { .. } | Target::Clusters(_) => {
                bail!("no failover manager runs these databases; the lab promotes them")
            }
        }
    }

    fn kill9_where(
        &self,
        mut matches: impl FnMut(&RunningServer) -> bool,
    ) -> anyhow::Result<Vec<ServerName>> {
        let mut clusters = self.clusters().context("no clusters run here")?;
        let mut killed = Vec::new();
        for server in clusters.iter_mut().flat_map(|c| c.servers.iter_mut()) {
            if !matches(server) {
                continue;
            }
            if let Some(running) = server.server.take() {
                running.kill9()?;
                server.link = None;
                server.front = None;
                killed.push(server.name.clone());
            }
        }
        Ok(killed)
    }

    /// Promotes standby `name` with `pg_ctl promote -w` (returns once it accepts writes) and
    /// records it as its cluster's primary; the former primary, if still listed, becomes a
    /// dead server's entry. Returns how long the command took.
    pub fn promote(&self, name: &ServerName) -> anyhow::Result<Duration> {
        drop(self.lab_clusters("pg_ctl promote")?);
        let server = self
            .running(name)?
            .with_context(|| format!("{name} is not running, it cannot be promoted"))?;
        let started = Instant::now();
        server
            .promote()
            .with_context(|| format!("promoting {name}"))?;
        let took = started.elapsed();
        let mut clusters = self.clusters().context("no clusters run here")?;
        for cluster in clusters.iter_mut() {
            if !cluster.servers.iter().any(|s| &s.name == name) {
                continue;
            }
            for server in &mut cluster.servers {
                if &server.name == name {
                    server.role = ServerRole::Primary;
                    // It streamed from the old primary; it has no upstream any more.
                    server.link = None;
                } else if server.role == ServerRole::Primary {
                    // Two writers must never be listed: the old one counts as a standby
                    // that nobody restarts.
                    server.role = ServerRole::SyncStandby;
                }
            }
        }
        Ok(took)
    }

    /// The running server called `name` (`Ok(None)` when killed).
    fn running(&self, name: &ServerName) -> anyhow::Result<Option<Arc<PostgresServer>>> {
        let clusters = self.clusters().context("no clusters run here")?;
        let (_, server) = locate(&clusters, name)?;
        Ok(server.server.clone())
    }

    /// Re-points standby `name` at its cluster's current primary, as an operator does after a
    /// promotion: the slot is created on the new primary, `primary_conninfo` is changed with
    /// `ALTER SYSTEM` and the standby reloads; a cross-region standby gets a new delaying link.
    /// Async, because the link's proxy runs on this runtime.
    pub async fn repoint(&self, name: &ServerName) -> anyhow::Result<()> {
        let (standby, primary, app, link_delay) = {
            let clusters = self.lab_clusters("re-pointing a standby")?;
            let (cluster, entry) = locate(&clusters, name)?;
            let primary = cluster.primary()?;
            (
                entry
                    .server
                    .clone()
                    .with_context(|| format!("{name} is not running"))?,
                primary
                    .server
                    .clone()
                    .with_context(|| format!("the primary {} is not running", primary.name))?,
                entry.application_name.clone(),
                cluster.delays.between(entry, primary),
            )
        };
        let link = match link_delay {
            Some(delay) => Some(
                DelayProxy::start(local_any_port(), primary.address(), delay)
                    .await
                    .context("starting the standby's delaying link")?,
            ),
            None => None,
        };
        let upstream = link
            .as_ref()
            .map_or(primary.address(), DelayProxy::local_addr);
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let exists = primary.psql(
                MAINTENANCE_DB,
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{app}'"),
            )?;
            if exists == "0" {
                primary.psql(
                    MAINTENANCE_DB,
                    &format!("SELECT pg_create_physical_replication_slot('{app}')"),
                )?;
            }
            standby.psql(
                MAINTENANCE_DB,
                &format!(
                    "ALTER SYSTEM SET primary_conninfo = 'host={} port={} user=replicator \
                     application_name={app} connect_timeout=5'",
                    upstream.ip(),
                    upstream.port()
                ),
            )?;
            standby.psql(MAINTENANCE_DB, "SELECT pg_reload_conf()")?;
            Ok(())
        })
        .with_context(|| format!("re-pointing {name} at {primary}"))?;
        let mut clusters = self.clusters().context("no clusters run here")?;
        if let Some(entry) = clusters
            .iter_mut()
            .flat_map(|c| c.servers.iter_mut())
            .find(|s| &s.name == name)
        {
            entry.link = link;
        }
        Ok(())
    }

    /// Waits until standby `name` streams from its cluster's primary with nothing left to
    /// replay (lag 0), for at most `timeout`.
    pub fn wait_for_catch_up(&self, name: &ServerName, timeout: Duration) -> anyhow::Result<()> {
        let (primary, app) = {
            let clusters = self.lab_clusters("waiting for a standby to catch up")?;
            let (cluster, entry) = locate(&clusters, name)?;
            let primary = cluster.primary()?;
            let primary = primary
                .server
                .clone()
                .with_context(|| format!("the primary {} is not running", primary.name))?;
            (primary, entry.application_name.clone())
        };
        primary.wait_for_catch_up(&app, timeout)?;
        Ok(())
    }

    /// Replaces the killed server `name` by a fresh standby of its cluster's current primary
    /// (a base backup, as an operator rebuilds a lost machine), reachable at the old address
    /// through a zero-delay proxy so that the nodes' URLs stay right. A former primary or sync
    /// standby comes back as the primary's synchronous standby (checked `sync`), an async one
    /// as async (checked streaming). Restores the redundancy a drill took away. Under Patroni,
    /// starts the killed member's Patroni again instead: it rejoins as a standby.
    pub async fn rebuild(&self, name: &ServerName) -> anyhow::Result<()> {
        if let Target::Patroni(patroni) = &*self.inner {
            return patroni.rejoin(name).await;
        }
        let (primary, app, address, role, link_delay) = {
            let clusters = self.lab_clusters("rebuilding a server")?;
            let (cluster, entry) = locate(&clusters, name)?;
            if entry.server.is_some() {
                bail!("{name} is running; only a killed server is rebuilt");
            }
            let primary = cluster.primary()?;
            let role = match entry.role {
                ServerRole::AsyncStandby => ServerRole::AsyncStandby,
                ServerRole::Primary | ServerRole::SyncStandby => ServerRole::SyncStandby,
            };
            (
                primary
                    .server
                    .clone()
                    .with_context(|| format!("the primary {} is not running", primary.name))?,
                entry.application_name.clone(),
                entry.address,
                role,
                cluster.delays.between(entry, primary),
            )
        };
        let link = match link_delay {
            Some(delay) => {
                Some(DelayProxy::start(local_any_port(), primary.address(), delay).await?)
            }
            None => None,
        };
        let upstream = link
            .as_ref()
            .map_or(primary.address(), DelayProxy::local_addr);
        let standby = tokio::task::block_in_place(|| -> anyhow::Result<PostgresServer> {
            // A slot of that name (an earlier standby's) would make the base backup fail.
            primary.psql(
                MAINTENANCE_DB,
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = '{app}' AND NOT active"
                ),
            )?;
            primary.start_standby(upstream, &app)
        })
        .with_context(|| format!("rebuilding {name} as a standby of {primary}"))?;
        let front = DelayProxy::start(address, standby.address(), Duration::ZERO)
            .await
            .with_context(|| format!("serving the rebuilt {name} at its address {address}"))?;
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            primary.wait_for_streaming(&app, STANDBY_TIMEOUT)?;
            if role == ServerRole::SyncStandby {
                primary.set_synchronous_standbys(&SynchronousStandbys::one(app.clone()))?;
                primary.wait_for_sync_state(&app, SyncState::Sync, STANDBY_TIMEOUT)?;
            }
            Ok(())
        })?;
        let mut clusters = self.clusters().context("no clusters run here")?;
        if let Some(entry) = clusters
            .iter_mut()
            .flat_map(|c| c.servers.iter_mut())
            .find(|s| &s.name == name)
        {
            entry.server = Some(Arc::new(standby));
            entry.role = role;
            entry.link = link;
            entry.front = Some(front);
        }
        Ok(())
    }

    /// The servers of `role` in `cluster` (the only one when `None`), as now.
    pub fn with_role(&self, cluster: Option<&ClusterName>, role: ServerRole) -> Vec<ServerView> {
        let servers = self.servers();
        let mut names: Vec<&ClusterName> = servers.iter().map(|s| &s.cluster).collect();
        names.dedup();
        let only_one = names.len() == 1;
        servers
            .into_iter()
            .filter(|s| s.role == role)
            .filter(|s| cluster.map_or(only_one, |c| &s.cluster == c))
            .collect()
    }
}

/// `cluster`, or the only cluster.
fn pick<'a>(
    clusters: &'a [RunningCluster],
    cluster: Option<&ClusterName>,
) -> anyhow::Result<&'a RunningCluster> {
    match cluster {
        Some(name) => clusters
            .iter()
            .find(|c| &c.name == name)
            .with_context(|| format!("no PostgreSQL cluster {name}")),
        None if clusters.len() == 1 => Ok(&clusters[0]),
        None => bail!("several PostgreSQL clusters; name one"),
    }
}

fn local_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A server's slot and `application_name`: its name with `-` as `_` (`pg-1b` → `pg_1b`).
fn application_name(name: &ServerName) -> anyhow::Result<ApplicationName> {
    let text = name.as_str().to_ascii_lowercase().replace('-', "_");
    ApplicationName::new(&text)
        .with_context(|| format!("database server {name} cannot name a replication slot"))
}

/// The primary, then the sync standbys (checked `sync`), then the async standbys (checked
/// streaming), each cross-region one through a delaying link.
fn start_cluster(
    description: &Description,
    cluster: &super::description::PostgresCluster,
) -> anyhow::Result<RunningCluster> {
    let delays = StandbyDelays::of(description, cluster);
    let region_of = |zone: &ZoneName| {
        description
            .region_of(zone)
            .cloned()
            .with_context(|| format!("zone {zone} is in no region"))
    };
    let primary_entry = cluster
        .servers
        .iter()
        .find(|s| s.role == ServerRole::Primary)
        .context("the cluster has no primary")?;
    let primary = Arc::new(PostgresServer::start().context("starting the primary")?);
    let primary_region = region_of(&primary_entry.zone)?;
    let mut servers = vec![RunningServer {
        name: primary_entry.name.clone(),
        zone: primary_entry.zone.clone(),
        region: primary_region.clone(),
        role: ServerRole::Primary,
        application_name: application_name(&primary_entry.name)?,
        address: primary.address(),
        server: Some(primary.clone()),
        link: None,
        front: None,
    }];
    let mut sync_names = Vec::new();
    for entry in cluster
        .servers
        .iter()
        .filter(|s| s.role != ServerRole::Primary)
    {
        let app = application_name(&entry.name)?;
        let region = region_of(&entry.zone)?;
        let link_delay = if region != primary_region {
            Some(delays.cross_region)
        } else if entry.zone != primary_entry.zone && !delays.cross_zone.is_zero() {
            Some(delays.cross_zone)
        } else {
            None
        };
        let link = match link_delay {
            Some(delay) => {
                let handle = tokio::runtime::Handle::try_current()
                    .context("a delaying link needs the tokio runtime")?;
                Some(tokio::task::block_in_place(|| {
                    handle.block_on(DelayProxy::start(
                        local_any_port(),
                        primary.address(),
                        delay,
                    ))
                })?)
            }
            None => None,
        };
        let upstream = link
            .as_ref()
            .map_or(primary.address(), DelayProxy::local_addr);
        let standby = primary
            .start_standby(upstream, &app)
            .with_context(|| format!("starting standby {}", entry.name))?;
        primary.wait_for_streaming(&app, STANDBY_TIMEOUT)?;
        if entry.role == ServerRole::SyncStandby {
            sync_names.push(app.clone());
        }
        servers.push(RunningServer {
            name: entry.name.clone(),
            zone: entry.zone.clone(),
            region,
            role: entry.role,
            application_name: app,
            address: standby.address(),
            server: Some(Arc::new(standby)),
            link,
            front: None,
        });
    }
    if !sync_names.is_empty() {
        let count = sync_names.len().min(1);
        primary.set_synchronous_standbys(&SynchronousStandbys::First {
            count,
            names: sync_names.clone(),
        })?;
        // FIRST 1 (a, b): the first connected is `sync`, the others `potential`.
        primary.wait_for_sync_state(&sync_names[0], SyncState::Sync, STANDBY_TIMEOUT)?;
    }
    tracing::info!(cluster = %cluster.name, servers = servers.len(), "PostgreSQL cluster started");
    Ok(RunningCluster {
        name: cluster.name.clone(),
        delays,
        servers,
    })
}
