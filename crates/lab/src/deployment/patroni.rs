//! The description's clusters run by Patroni with etcd (`[storage] promoter = "patroni"`):
//! one etcd for the deployment, one Patroni scope per cluster, one Patroni per server. Patroni
//! picks the leader, names the synchronous standby, notices a lost leader and promotes; the
//! lab only starts, kills, restarts and asks, as a monitoring system would.
//!
//! Servers of the described primary's region may lead or be the synchronous standby. A server
//! in another region is a member tagged `nofailover` and `nosync`: Patroni never moves the
//! writer across regions by itself, because a region loss may lose acknowledged commits and
//! that is an operator's decision (the lab's region moves, with `promoter = "lab"`). Unlike the
//! lab's own clusters, such a member streams straight from the leader, without the delaying
//! link: Patroni builds every standby's `primary_conninfo` from the leader's one address, so a
//! delay cannot sit in one standby's path only.

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use meridian_patroni::{
    ClusterOptions, EtcdServer, MemberName, MemberRole, MemberSpec, PatroniCluster, PatroniError,
};

use super::description::{
    ClusterName, Description, PostgresCluster, RegionName, ServerName, ServerRole, ZoneName,
};
use super::server_view::ServerView;

/// A killed member that comes back rewinds its divergent WAL and streams again; on a busy
/// 2-core machine that took 10–15 s (docs/operations.md), so this leaves room.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Bounds each host's connect in the nodes' URLs, as for the lab's own clusters.
const NODE_CONNECT_TIMEOUT_S: u64 = 2;

/// A server's Patroni member name: its name with `-` as `_` (`pg-1b` → `pg_1b`), since a
/// member's name is also its replication slot's.
pub fn member_name(server: &ServerName) -> Result<MemberName, PatroniError> {
    MemberName::new(server.as_str().replace('-', "_"))
}

/// Every cluster of a description under Patroni, and the etcd they share.
#[derive(Debug)]
pub(super) struct PatroniClusters {
    // Before `_etcd`: fields drop in order, and every Patroni must be gone before its store.
    clusters: Vec<ManagedCluster>,
    /// Only held: it runs for as long as the clusters do.
    _etcd: EtcdServer,
}

#[derive(Debug)]
struct ManagedCluster {
    name: ClusterName,
    patroni: PatroniCluster,
    /// The servers with the roles Patroni last reported.
    servers: Mutex<Vec<ManagedServer>>,
}

impl ManagedCluster {
    fn servers(&self) -> MutexGuard<'_, Vec<ManagedServer>> {
        // Plain data; a panic while holding the lock leaves it usable.
        self.servers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_running(&self, server: &ManagedServer) -> bool {
        self.patroni
            .member(&server.member)
            .is_ok_and(|member| member.is_running())
    }

    /// The user and password part of every URL to this cluster.
    fn credentials(&self) -> String {
        format!("meridian:{}", self.patroni.password())
    }
}

#[derive(Debug, Clone)]
struct ManagedServer {
    name: ServerName,
    member: MemberName,
    zone: ZoneName,
    region: RegionName,
    role: ServerRole,
    /// The member's PostgreSQL port: Patroni restarts a member on the same one.
    address: SocketAddr,
}

impl PatroniClusters {
    /// Starts etcd and every cluster, and waits until each has a leader that commits, every
    /// member streaming, and a synchronous standby.
    pub(super) async fn start(description: &Description) -> anyhow::Result<Self> {
        let etcd = EtcdServer::start().await.context("starting etcd")?;
        let mut clusters = Vec::new();
        for cluster in &description.postgres_clusters {
            clusters.push(
                start_cluster(&etcd, description, cluster)
                    .await
                    .with_context(|| format!("starting Patroni cluster {}", cluster.name))?,
            );
        }
        tracing::info!(etcd = %etcd.endpoint(), clusters = clusters.len(), "Patroni runs the PostgreSQL clusters");
        Ok(Self {
            clusters,
            _etcd: etcd,
        })
    }

    /// `cluster`, or the only cluster.
    fn pick(&self, cluster: Option<&ClusterName>) -> anyhow::Result<&ManagedCluster> {
        match cluster {
            Some(name) => self
                .clusters
                .iter()
                .find(|c| &c.name == name)
                .with_context(|| format!("no PostgreSQL cluster {name}")),
            None if self.clusters.len() == 1 => Ok(&self.clusters[0]),
            None => bail!("several PostgreSQL clusters; name one"),
        }
    }

    /// The current leader's server without a database, where the nodes' databases are created.
    pub(super) fn admin_url(&self, cluster: Option<&ClusterName>) -> anyhow::Result<String> {
        let cluster = self.pick(cluster)?;
        let servers = cluster.servers();
        let leader = servers
            .iter()
            .find(|s| s.role == ServerRole::Primary && cluster.is_running(s))
            .with_context(|| format!("cluster {} has no running leader", cluster.name))?;
        Ok(format!(
            "postgres://{}@{}",
            cluster.credentials(),
            leader.address
        ))
    }

    /// Every member of `region` (the leader first), `target_session_attrs=read-write`: the
    /// node follows Patroni's leader by itself.
    pub(super) fn node_url(
        &self,
        cluster: Option<&ClusterName>,
        region: Option<&RegionName>,
        database: &str,
    ) -> anyhow::Result<String> {
        let cluster = self.pick(cluster)?;
        let mut servers: Vec<ManagedServer> = cluster
            .servers()
            .iter()
            .filter(|s| region.is_none_or(|r| &s.region == r))
            .cloned()
            .collect();
        if servers.is_empty() {
            bail!(
                "cluster {} has no server in region {region:?}",
                cluster.name
            );
        }
        servers.sort_by_key(|s| s.role != ServerRole::Primary);
        let hosts: Vec<String> = servers.iter().map(|s| s.address.to_string()).collect();
        Ok(format!(
            "postgres://{}@{}/{database}?target_session_attrs=read-write&connect_timeout={NODE_CONNECT_TIMEOUT_S}",
            cluster.credentials(),
            hosts.join(",")
        ))
    }

    pub(super) fn servers(&self) -> Vec<ServerView> {
        self.clusters
            .iter()
            .flat_map(|cluster| {
                cluster
                    .servers()
                    .iter()
                    .map(|s| {
                        let running = cluster.is_running(s);
                        ServerView {
                            cluster: cluster.name.clone(),
                            name: s.name.clone(),
                            zone: s.zone.clone(),
                            region: s.region.clone(),
                            role: s.role,
                            running,
                            address: running.then_some(s.address),
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Kills (like a lost machine: Patroni and PostgreSQL, SIGKILL) every running server that
    /// `matches`; returns their names.
    pub(super) fn kill9_where(
        &self,
        mut matches: impl FnMut(&ServerView) -> bool,
    ) -> anyhow::Result<Vec<ServerName>> {
        let mut killed = Vec::new();
        for view in self.servers() {
            if !view.running || !matches(&view) {
                continue;
            }
            let cluster = self.pick(Some(&view.cluster))?;
            let member = member_name(&view.name)?;
            cluster
                .patroni
                .kill_member(&member)
                .with_context(|| format!("killing {}", view.name))?;
            killed.push(view.name);
        }
        Ok(killed)
    }

    /// Waits until every cluster whose leader was killed has a new leader that commits (that is
    /// Patroni's whole failover: the leader key expiring, the election, the promotion), then
    /// records the roles Patroni reports. Returns the new leaders.
    pub(super) async fn wait_for_new_leaders(
        &self,
        timeout: Duration,
    ) -> anyhow::Result<Vec<ServerName>> {
        let mut promoted = Vec::new();
        for cluster in &self.clusters {
            let leader_lost = cluster
                .servers()
                .iter()
                .any(|s| s.role == ServerRole::Primary && !cluster.is_running(s));
            if !leader_lost {
                continue;
            }
            let writer = cluster
                .patroni
                .wait_for_writer(timeout)
                .await
                .with_context(|| format!("cluster {}: no new leader", cluster.name))?;
            let mut servers = cluster.servers();
            for server in servers.iter_mut() {
                if server.member == writer {
                    server.role = ServerRole::Primary;
                    promoted.push(server.name.clone());
                } else if server.role == ServerRole::Primary {
                    // Never two leaders listed: the killed one comes back as a standby.
                    server.role = ServerRole::SyncStandby;
                }
            }
        }
        Ok(promoted)
    }

    /// Starts the killed server's Patroni again, on its old directory and ports; Patroni
    /// rewinds what it wrote after the others moved on and makes it a standby. Returns once
    /// the cluster is healthy again (every member streaming, a synchronous standby).
    pub(super) async fn rejoin(&self, name: &ServerName) -> anyhow::Result<()> {
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.servers().iter().any(|s| &s.name == name))
            .with_context(|| format!("no database server {name}"))?;
        let member = member_name(name)?;
        cluster.patroni.restart_member(&member)?;
        cluster
            .patroni
            .wait_healthy(REJOIN_TIMEOUT)
            .await
            .with_context(|| format!("{name} rejoining cluster {}", cluster.name))?;
        refresh_roles(cluster).await
    }
}

/// Starts one cluster's members at once: the servers of the primary's region as candidates,
/// the others tagged `nofailover` and `nosync`.
async fn start_cluster(
    etcd: &EtcdServer,
    description: &Description,
    cluster: &PostgresCluster,
) -> anyhow::Result<ManagedCluster> {
    let region_of = |zone: &ZoneName| {
        description
            .region_of(zone)
            .cloned()
            .with_context(|| format!("zone {zone} is in no region"))
    };
    let primary = cluster
        .servers
        .iter()
        .find(|s| s.role == ServerRole::Primary)
        .context("the cluster has no primary")?;
    let primary_region = region_of(&primary.zone)?;
    let mut specs = Vec::new();
    let mut entries = Vec::new();
    for server in &cluster.servers {
        let region = region_of(&server.zone)?;
        let member = member_name(&server.name)?;
        let elsewhere = region != primary_region;
        specs.push(MemberSpec {
            name: member.clone(),
            nofailover: elsewhere,
            nosync: elsewhere,
        });
        entries.push((server, member, region));
    }
    let scope = cluster.name.as_str().replace('-', "_");
    let patroni = PatroniCluster::start_with(etcd, &scope, &specs, ClusterOptions::default())
        .await
        .context("starting Patroni")?;
    let mut servers = Vec::new();
    for (server, member, region) in entries {
        let pg_port = patroni.member(&member)?.pg_port();
        servers.push(ManagedServer {
            name: server.name.clone(),
            member,
            zone: server.zone.clone(),
            region,
            // Until Patroni says otherwise; it picks the first leader by itself.
            role: server.role,
            address: SocketAddr::from(([127, 0, 0, 1], pg_port)),
        });
    }
    let managed = ManagedCluster {
        name: cluster.name.clone(),
        patroni,
        servers: Mutex::new(servers),
    };
    refresh_roles(&managed).await?;
    tracing::info!(cluster = %cluster.name, timing = %managed.patroni.timing(), "Patroni cluster started");
    Ok(managed)
}

/// Takes the roles from Patroni's view of the cluster; a member missing from it (killed)
/// keeps the role it had.
async fn refresh_roles(cluster: &ManagedCluster) -> anyhow::Result<()> {
    let view = cluster.patroni.cluster_view().await?;
    let mut servers = cluster.servers();
    for server in servers.iter_mut() {
        let Some(member) = view.iter().find(|v| v.name == server.member.as_str()) else {
            continue;
        };
        server.role = match member.role {
            MemberRole::Leader => ServerRole::Primary,
            MemberRole::SyncStandby => ServerRole::SyncStandby,
            MemberRole::Replica | MemberRole::Other(_) => ServerRole::AsyncStandby,
        };
    }
    Ok(())
}
