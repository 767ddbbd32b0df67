//! A whole synchronizer on one machine, as child processes, started from a deployment
//! [`Description`]: the sequencer's instances (all active, one shared database), the topology
//! manager, the mediator and the participants — each of the last three as active/passive
//! replicas when it has several — with keys and configs in a data directory. Cold replicas
//! get their configs (under `<node>/cold/`) but are not started; the description itself is
//! written to `<data-dir>/deployment.toml`, where `meridian admin status` finds the placement.
//! Every replica's ports are fixed before anything starts and every endpoint list (members'
//! sequencer and topology endpoints, the workload's Ledger API endpoints) names the cold
//! replicas too, after the warm ones: a cold endpoint refuses until
//! [`Deployment::start_cold`] starts its region, and then it is already known to everyone.
//! [`Deployment::kill9_region`] and [`Deployment::stop_region`] take a whole region away.
//!
//! Used by `meridian demo`, `meridian up`, `meridian drill`, the benchmarks and the black-box
//! tests. Configs are rewritten with fresh ports on every start while keys and databases
//! persist, so a second start on the same directory resumes the same ledger.

pub mod args;
pub mod check;
pub mod clusters;
pub mod configs;
pub mod description;
pub mod kubernetes;
pub mod network;
mod patroni;
mod server_view;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_core::crypto::SigningKey;
use meridian_core::{MemberId, ParticipantId};
use meridian_node::keys::load_or_create_key;
use meridian_pgserver::PostgresServer;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_store::StorageConfig;
use serde::Serialize;

pub use args::{DeploymentArgs, DeploymentCommand};
pub use clusters::{Databases, StandbyReport};
pub use configs::{MediatorSettings, ParticipantSettings};
pub use description::{
    Backend, Description, NodePorts, NodeView, Preset, Promoter, Replica, ReplicaName, Role, Shape,
    Standby, ZoneName,
};
pub use server_view::ServerView;

use crate::clockshift::ClockShift;
use crate::launch::{free_addresses, NodeProcess};
use configs::{Addresses, MemberContext};
use description::{RegionName, MEDIATOR_NODE, SEQUENCER_NODE, TOPOLOGY_NODE};
use network::{LinkKind, Network, NetworkProcess, Target};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Where in the data directory the description of the running deployment is kept.
pub const DESCRIPTION_FILE: &str = "deployment.toml";
/// The subdirectory of a node's directory that holds its cold replicas' configs, apart from
/// the running replicas' configs that `meridian admin` reads.
pub const COLD_DIR: &str = "cold";
/// Where the clock-shift shim and the sequencer instances' offset files live, under the data
/// directory.
const CLOCKSHIFT_DIR: &str = "clockshift";

#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    /// The `meridian` binary to run the nodes with.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    /// What to run and where.
    pub description: Description,
    /// The PostgreSQL the nodes keep their state on when the description's backend is
    /// PostgreSQL: the description's clusters run as real replicated servers
    /// ([`Self::start_postgres`]), or one server the caller runs ([`Self::use_postgres`]).
    /// Each node's database is created on the primary if missing.
    pub databases: Option<Databases>,
    pub mediator: MediatorSettings,
    pub participant: ParticipantSettings,
    /// Start every sequencer instance under the clock-shift shim (`crate::clockshift`) at
    /// offset 0, so that a drill can skew one instance's clock while it runs without
    /// restarting it.
    pub shiftable_sequencer_clocks: bool,
    /// Generate a Ledger API signing key in `<data>/secrets/` and configure every
    /// participant's `[ledger_auth]` with it (`up`, `demo`, the benches and drills do); the
    /// lab's clients then mint their tokens with [`Deployment::ledger_auth`].
    pub ledger_auth: bool,
    /// Start every process in its own process group and leave it running when the
    /// [`Deployment`] is dropped: the controller starts a deployment that outlives it
    /// (`crate::controller`). Off, the processes die with their handles, as tests expect.
    pub detached: bool,
}

pub struct Deployment {
    exe: PathBuf,
    pub data_dir: PathBuf,
    pub description: Description,
    /// Every warm sequencer instance, in the description's order.
    pub sequencers: Vec<NodeProcess>,
    /// The topology manager's first warm replica (active after start).
    pub topology: NodeProcess,
    /// Further warm topology manager replicas (passive after start).
    pub topology_standbys: Vec<NodeProcess>,
    /// The mediator's first warm replica (active after start).
    pub mediator: NodeProcess,
    /// Further warm mediator replicas (passive after start).
    pub mediator_standbys: Vec<NodeProcess>,
    /// Each participant's first warm replica (active after start).
    pub participants: Vec<NodeProcess>,
    /// Each participant's further warm replicas (passive after start), by participant index.
    pub participant_standbys: Vec<Vec<NodeProcess>>,
    pub participant_ids: Vec<ParticipantId>,
    /// Replicas configured but not started.
    pub cold: Vec<ColdReplica>,
    /// Each warm sequencer instance's clock shift, in `sequencers`' order, when the spec asked
    /// for shiftable clocks; empty otherwise.
    pub sequencer_clocks: Vec<ClockShift>,
    /// The PostgreSQL the nodes keep their state on, if they do (the database drills act on
    /// it).
    pub databases: Option<Databases>,
    /// The Ledger API signing key, when the participants verify tokens.
    pub ledger_auth: Option<crate::secrets::LedgerAuth>,
    /// HAProxy in front of the participants and the sequencer, when the description has a
    /// `[load_balancer]`: clients then use its addresses only.
    pub load_balancer: Option<crate::lb::LabLoadBalancer>,
    /// The delaying proxies on the links that cross zones and regions (`[network]`), when
    /// any: the process stops with this value unless the deployment is detached.
    pub network: Option<NetworkProcess>,
}

/// A replica whose config is written but which does not run.
#[derive(Debug, Clone)]
pub struct ColdReplica {
    pub node: String,
    pub name: ReplicaName,
    pub zone: ZoneName,
    pub config_path: PathBuf,
    /// Where it will listen once started: fixed now, so that every endpoint list names it.
    pub grpc_address: SocketAddr,
    pub admin_address: SocketAddr,
    role: Role,
    /// The node's directory, where a started replica's config and log go.
    dir: PathBuf,
}

impl ColdReplica {
    /// Its gRPC endpoint (refused until it is started).
    pub fn grpc_endpoint(&self) -> String {
        crate::tls::url(self.grpc_address)
    }
}

/// A node process whose config is ready but which is not started yet.
struct PendingProcess {
    role: Role,
    dir: PathBuf,
    name: String,
    config: String,
    at: Addresses,
    /// Started in its own process group and left running when its handle is dropped.
    detached: bool,
}

impl PendingProcess {
    fn spawn(self, exe: &Path) -> anyhow::Result<NodeProcess> {
        self.spawn_shifted(exe, None)
    }

    /// Starts it, reading its wall clock through `clock` if given.
    fn spawn_shifted(self, exe: &Path, clock: Option<&ClockShift>) -> anyhow::Result<NodeProcess> {
        let mut process = NodeProcess::configure(
            self.role.command(),
            &self.dir,
            &self.name,
            &self.config,
            self.at.grpc,
            self.at.admin,
        )?;
        if let Some(clock) = clock {
            clock.apply(&mut process);
        }
        if self.detached {
            process.set_detached();
        }
        process.started(exe)
    }

    /// Writes the config under the node's cold directory instead of starting it.
    fn write_cold(self, node: &str, zone: &ZoneName) -> anyhow::Result<ColdReplica> {
        let dir = self.dir.join(COLD_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join(format!("{}.toml", self.name));
        std::fs::write(&config_path, &self.config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(ColdReplica {
            node: node.to_owned(),
            name: ReplicaName(self.name),
            zone: zone.clone(),
            config_path,
            grpc_address: self.at.grpc,
            admin_address: self.at.admin,
            role: self.role,
            dir: self.dir,
        })
    }
}

/// A node's replicas with their configs: the warm ones in start order (the first becomes
/// active), the cold ones to write only.
struct NodePlan {
    warm: Vec<PendingProcess>,
    cold: Vec<(PendingProcess, ZoneName)>,
}

impl NodePlan {
    /// Writes the cold replicas' configs and returns the warm ones, first one first.
    fn into_warm(
        self,
        node: &str,
        cold: &mut Vec<ColdReplica>,
    ) -> anyhow::Result<(PendingProcess, Vec<PendingProcess>)> {
        for (pending, zone) in self.cold {
            cold.push(pending.write_cold(node, &zone)?);
        }
        let mut warm = self.warm.into_iter();
        let first = warm
            .next()
            .with_context(|| format!("{node} has no warm replica"))?;
        Ok((first, warm.collect()))
    }
}

impl DeploymentSpec {
    /// A deployment of `description` run by this very binary.
    pub fn new(data_dir: PathBuf, description: Description) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("locating the meridian binary")?,
            data_dir,
            description,
            databases: None,
            mediator: MediatorSettings::default(),
            participant: ParticipantSettings::default(),
            shiftable_sequencer_clocks: false,
            ledger_auth: false,
            detached: false,
        })
    }

    /// A deployment of this very binary with `participants` unreplicated participants on
    /// SQLite.
    pub fn local(data_dir: PathBuf, participants: usize) -> anyhow::Result<Self> {
        Self::new(
            data_dir,
            Description::shaped(Shape {
                sequencers: 1,
                replicas: 1,
                participants,
            }),
        )
    }

    /// Starts the PostgreSQL clusters a PostgreSQL description needs (unless databases are
    /// set already) as throwaway servers with streaming replication, and returns them: they
    /// stop when the last clone is dropped, so keep it for as long as the deployment runs.
    pub fn start_postgres(&mut self) -> anyhow::Result<Option<Databases>> {
        if self.description.storage.backend != Backend::Postgres || self.databases.is_some() {
            return Ok(None);
        }
        let databases = Databases::start(&self.description)
            .context("starting throwaway PostgreSQL clusters")?;
        self.databases = Some(databases.clone());
        Ok(Some(databases))
    }

    /// Every node's database on `server` (the description switches to PostgreSQL); the
    /// caller keeps the server running.
    pub fn use_postgres(&mut self, server: &PostgresServer) {
        self.description = self.description.clone().with_backend(Backend::Postgres);
        self.databases = Some(Databases::external(server));
    }

    /// The (gRPC, admin) addresses of `replica`: its fixed ports, or free ones.
    fn addresses(&self, replica: &Replica) -> anyhow::Result<Addresses> {
        let (grpc, admin) = match replica.ports {
            Some(ports) => (
                SocketAddr::from(([127, 0, 0, 1], ports.grpc)),
                SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            ),
            None => free_addresses()?,
        };
        Ok(Addresses { grpc, admin })
    }

    /// Where each replica of `node` keeps its state, by position; on PostgreSQL the node's
    /// database is created on the primary if missing, and each replica lists the servers of
    /// its own region (see [`clusters`]).
    async fn storage(
        &self,
        node: &NodeView<'_>,
        network: &Network,
    ) -> anyhow::Result<Vec<StorageConfig>> {
        let name = node.name;
        match self.description.storage.backend {
            Backend::Sqlite => Ok(node
                .replicas
                .iter()
                .map(|_| StorageConfig::Sqlite {
                    path: self.data_dir.join(name).join(format!("{name}.db")),
                })
                .collect()),
            Backend::Postgres => {
                let databases = self.databases.as_ref().context(
                    "the deployment keeps its state on PostgreSQL but no server is given",
                )?;
                let cluster = self.description.cluster_of(node).map(|c| &c.name);
                let database = name.replace('-', "_");
                create_database_if_missing(&databases.admin_url(cluster)?, &database).await?;
                node.replicas
                    .iter()
                    .map(|replica| {
                        let region = self.description.region_of(&replica.zone);
                        let url = databases.node_url(cluster, region, &database)?;
                        Ok(StorageConfig::Postgres {
                            // Each host through the link from the replica's zone to its own.
                            url: network.dial_url(&replica.zone, &url),
                            max_connections: configs::POSTGRES_POOL_CONNECTIONS,
                        })
                    })
                    .collect()
            }
        }
    }

    /// The `[tls]` of `replica`: its certificate from [`crate::tls::deployment_certs`].
    fn tls(&self, replica: &Replica) -> meridian_node::tls::TlsConfig {
        crate::tls::node_config(&self.data_dir, &replica.name.to_string())
    }

    /// The `[replication]` table of `replica` of `node`, when the node is replicated.
    fn replication(
        &self,
        node: &NodeView<'_>,
        replica: &Replica,
        advertised: SocketAddr,
    ) -> Option<meridian_node::replication::ReplicationConfig> {
        node.is_replicated().then(|| {
            configs::replication(&replica.name, advertised, self.description.lease_timeout_ms)
        })
    }

    /// Configs for every replica of `node`, built by `config(position, replica, addresses)`.
    fn plan_node<C: Serialize>(
        &self,
        node: &NodeView<'_>,
        addresses: &HashMap<String, Addresses>,
        mut config: impl FnMut(usize, &Replica, Addresses) -> C,
    ) -> anyhow::Result<NodePlan> {
        let dir = self.data_dir.join(node.name);
        let mut plan = NodePlan {
            warm: Vec::new(),
            cold: Vec::new(),
        };
        for (position, replica) in node.replicas.iter().enumerate() {
            let at = *addresses
                .get(replica.name.as_str())
                .with_context(|| format!("no addresses planned for {}", replica.name))?;
            let config = toml::to_string(&config(position, replica, at))
                .with_context(|| format!("writing the config of {}", replica.name))?;
            let pending = PendingProcess {
                role: node.role,
                dir: dir.clone(),
                name: replica.name.to_string(),
                config,
                at,
                detached: self.detached,
            };
            match replica.standby {
                Standby::Warm => plan.warm.push(pending),
                Standby::Cold => plan.cold.push((pending, replica.zone.clone())),
            }
        }
        Ok(plan)
    }
}

impl DeploymentSpec {
    /// Plans the delayed links of `[network]` (none without it) to every replica's gRPC
    /// address in `addresses` and every database server, and starts their proxy process.
    fn start_network(
        &self,
        nodes: &[NodeView<'_>],
        addresses: &HashMap<String, Addresses>,
    ) -> anyhow::Result<Option<NetworkProcess>> {
        if !self.description.network.is_on() {
            return Ok(None);
        }
        let mut targets = Vec::new();
        for node in nodes {
            let kind = match node.role {
                Role::Sequencer | Role::TopologyManager => LinkKind::Node,
                Role::Participant => LinkKind::Client,
                // Nobody dials the mediator: it only dials out.
                Role::Mediator => continue,
            };
            for replica in node.replicas {
                let at = addresses
                    .get(replica.name.as_str())
                    .with_context(|| format!("no addresses planned for {}", replica.name))?;
                targets.push(Target {
                    kind,
                    zone: replica.zone.clone(),
                    address: at.grpc,
                });
                // A load balancer in the client zone health-checks each participant replica
                // on its admin port.
                if kind == LinkKind::Client {
                    targets.push(Target {
                        kind,
                        zone: replica.zone.clone(),
                        address: at.admin,
                    });
                }
            }
        }
        if let Some(databases) = &self.databases {
            for server in databases.servers() {
                if let Some(address) = server.address {
                    targets.push(Target {
                        kind: LinkKind::Database,
                        zone: server.zone.clone(),
                        address,
                    });
                }
            }
        }
        let network = Network::plan(&self.description, &targets, || {
            Ok(SocketAddr::from((
                [127, 0, 0, 1],
                meridian_node::ports::free_loopback_port()?,
            )))
        })?;
        NetworkProcess::start(&self.exe, &self.data_dir, network, self.detached)
            .context("starting the delaying proxies between zones and regions")
            .map(Some)
    }
}

async fn create_database_if_missing(server_url: &str, database: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(&format!("{server_url}/postgres"))
        .await
        .with_context(|| format!("connecting to {server_url}"))?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(database)
        .fetch_optional(&mut connection)
        .await?;
    if exists.is_none() {
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&mut connection)
            .await
            .with_context(|| format!("creating database {database}"))?;
    }
    Ok(())
}

/// The keys of a deployment, created on its first start and kept in `<data-dir>/keys`, and
/// its admin token (`<data-dir>/secrets/admin-token`, [`crate::secrets::admin_token`]).
struct Keys {
    dir: PathBuf,
    /// Every node's `admin_token_file`; the lab's admin calls send it.
    admin_token_file: PathBuf,
    owner_public_key: String,
    mediator: SigningKey,
    participants: Vec<(ParticipantId, SigningKey)>,
}

impl Keys {
    fn load_or_create(data_dir: &Path, description: &Description) -> anyhow::Result<Self> {
        let dir = data_dir.join("keys");
        let owner = load_or_create_key(&dir.join("owner.key"))?;
        // Created here rather than by the manager: its replicas never create their key.
        load_or_create_key(&dir.join(format!("{TOPOLOGY_NODE}.key")))?;
        let mediator = load_or_create_key(&dir.join(format!("{MEDIATOR_NODE}.key")))?;
        let participants = description
            .participants
            .iter()
            .map(|p| {
                let id = ParticipantId::new(p.name.as_str())?;
                let key = load_or_create_key(&dir.join(format!("{id}.key")))?;
                Ok((id, key))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            dir,
            admin_token_file: crate::secrets::admin_token(data_dir)?,
            owner_public_key: owner.public_key().to_string(),
            mediator,
            participants,
        })
    }
}

/// The running mediator and participants, before they become a [`Deployment`].
struct Members {
    mediator: NodeProcess,
    mediator_standbys: Vec<NodeProcess>,
    participants: Vec<NodeProcess>,
    participant_standbys: Vec<Vec<NodeProcess>>,
}

/// One start in progress: the spec, the progress sink and the cold replicas written so far.
struct Starter<'a> {
    spec: &'a DeploymentSpec,
    progress: &'a mut dyn FnMut(String),
    cold: Vec<ColdReplica>,
    /// Every replica's addresses, fixed before anything starts (the links need them all).
    addresses: HashMap<String, Addresses>,
    /// The delayed links; configs name their proxies instead of the targets across zones.
    network: Network,
}

impl Starter<'_> {
    /// Starts the warm instances one after the other (each ready before the next); they
    /// share the sequencer's database and differ in their instance index, which is their
    /// position in the description, so that a cold instance keeps its own. With shiftable
    /// clocks, each starts under a clock shift of its own (returned in the same order).
    async fn start_sequencers(
        &mut self,
        node: &NodeView<'_>,
        keys: &Keys,
    ) -> anyhow::Result<(Vec<NodeProcess>, Vec<ClockShift>)> {
        let storage = self.spec.storage(node, &self.network).await?;
        let plan = self
            .spec
            .plan_node(node, &self.addresses, |position, replica, at| {
                let index = u32::try_from(position).expect("replicas are bounded by the check");
                let mut config = configs::sequencer(
                    at,
                    index,
                    storage[position].clone(),
                    &keys.owner_public_key,
                )
                .with_tls(self.spec.tls(replica));
                config.admin_token_file = Some(keys.admin_token_file.clone());
                config
            })?;
        let (first, others) = plan.into_warm(node.name, &mut self.cold)?;
        let mut sequencers = Vec::new();
        let mut clocks = Vec::new();
        for pending in std::iter::once(first).chain(others) {
            let clock = if self.spec.shiftable_sequencer_clocks {
                let dir = self.spec.data_dir.join(CLOCKSHIFT_DIR);
                clocks.push(ClockShift::new(&dir, &pending.name)?);
                clocks.last()
            } else {
                None
            };
            let process = pending.spawn_shifted(&self.spec.exe, clock)?;
            sequencers.push(self.await_ready(process).await?);
        }
        Ok((sequencers, clocks))
    }

    /// Starts the first warm replica and waits until it is active, then the others.
    async fn start_topology(
        &mut self,
        node: &NodeView<'_>,
        keys: &Keys,
        sequencer_endpoints: &[String],
    ) -> anyhow::Result<(NodeProcess, Vec<NodeProcess>)> {
        let storage = self.spec.storage(node, &self.network).await?;
        let cold_sequencers = self.cold_endpoints(SEQUENCER_NODE);
        let network = &self.network;
        let plan = self
            .spec
            .plan_node(node, &self.addresses, |position, replica, at| {
                let endpoints = configs::warm_then_cold(sequencer_endpoints, &cold_sequencers);
                let mut config = configs::topology_manager(
                    at,
                    &keys.dir,
                    meridian_node::config::Endpoints::new(
                        endpoints
                            .iter()
                            .map(|e| network.dial_url(&replica.zone, e))
                            .collect(),
                    ),
                    storage[position].clone(),
                    self.spec.replication(node, replica, at.grpc),
                )
                .with_tls(self.spec.tls(replica));
                config.admin_token_file = Some(keys.admin_token_file.clone());
                config
            })?;
        let (first, others) = plan.into_warm(node.name, &mut self.cold)?;
        let topology = self.start_ready(first).await?;
        let standbys = self.start_standbys(others).await?;
        Ok((topology, standbys))
    }

    /// The gRPC endpoints of `node`'s cold replicas written so far.
    fn cold_endpoints(&self, node: &str) -> Vec<String> {
        self.cold
            .iter()
            .filter(|c| c.node == node)
            .map(ColdReplica::grpc_endpoint)
            .collect()
    }

    /// Starts a replica that serves gRPC and waits until it is ready.
    async fn start_ready(&mut self, pending: PendingProcess) -> anyhow::Result<NodeProcess> {
        let process = pending.spawn(&self.spec.exe)?;
        self.await_ready(process).await
    }

    /// Waits until a started replica is ready, and says so.
    async fn await_ready(&mut self, mut process: NodeProcess) -> anyhow::Result<NodeProcess> {
        process.wait_ready(READY_TIMEOUT).await?;
        (self.progress)(format!(
            "{} ready at {}",
            process.name(),
            process.grpc_endpoint()
        ));
        Ok(process)
    }

    /// Starts the passive `replicas` of one node and waits until each is alive.
    async fn start_standbys(
        &mut self,
        replicas: Vec<PendingProcess>,
    ) -> anyhow::Result<Vec<NodeProcess>> {
        let mut standbys = Vec::new();
        for pending in replicas {
            let serves_grpc = pending.role != Role::Mediator;
            let mut standby = pending.spawn(&self.spec.exe)?;
            standby.wait_alive(READY_TIMEOUT).await?;
            (self.progress)(if serves_grpc {
                format!(
                    "{} standing by at {}",
                    standby.name(),
                    standby.grpc_endpoint()
                )
            } else {
                format!("{} standing by", standby.name())
            });
            standbys.push(standby);
        }
        Ok(standbys)
    }

    /// The mediator and the participants: every node's first warm replica starts before any
    /// standby, so that it is the one that becomes active; the others join once it is.
    async fn start_members(
        &mut self,
        nodes: &[NodeView<'_>],
        keys: &Keys,
        context: &MemberContext,
    ) -> anyhow::Result<Members> {
        let spec = self.spec;
        let (addresses, network) = (&self.addresses, &self.network);
        // Every member and replica lists the sequencer instances in the same order, so all of
        // them send to and subscribe at one instance: with two instances writing, each one's
        // events would wait for the other's watermark (see `meridian_client::sequencer`).
        let mut plans = Vec::new();
        for node in nodes {
            let storage = spec.storage(node, network).await?;
            let plan = match node.role {
                Role::Participant => {
                    let (id, _) = keys
                        .participants
                        .iter()
                        .find(|(id, _)| id.as_str() == node.name)
                        .context("every participant has a key")?;
                    spec.plan_node(node, addresses, |position, replica, at| {
                        let mut config = configs::participant(
                            &context.dialed_from(network, &replica.zone),
                            id,
                            at,
                            spec.participant,
                            storage[position].clone(),
                            spec.replication(node, replica, at.grpc),
                        )
                        .with_tls(spec.tls(replica));
                        config.admin_token_file = Some(keys.admin_token_file.clone());
                        config
                    })?
                }
                _ => spec.plan_node(node, addresses, |position, replica, at| {
                    let mut config = configs::mediator(
                        &context.dialed_from(network, &replica.zone),
                        at.admin,
                        spec.mediator,
                        storage[position].clone(),
                        spec.replication(node, replica, at.admin),
                    )
                    .with_tls(spec.tls(replica));
                    config.admin_token_file = Some(keys.admin_token_file.clone());
                    config
                })?,
            };
            plans.push(plan.into_warm(node.name, &mut self.cold)?);
        }
        let mut plans = plans.into_iter();
        let (mediator_first, mediator_others) =
            plans.next().context("the mediator is planned first")?;
        let mut mediator = mediator_first.spawn(&spec.exe)?;
        let mut participants = Vec::new();
        let mut participant_pending = Vec::new();
        for (first, others) in plans {
            participants.push(first.spawn(&spec.exe)?);
            participant_pending.push(others);
        }
        mediator.wait_ready(READY_TIMEOUT).await?;
        (self.progress)("mediator ready".into());
        let mediator_standbys = self.start_standbys(mediator_others).await?;
        for participant in &mut participants {
            participant.wait_ready(READY_TIMEOUT).await?;
            (self.progress)(format!(
                "{} ready, Ledger API at {}",
                participant.name(),
                participant.grpc_endpoint()
            ));
        }
        let mut participant_standbys = Vec::new();
        for pending in participant_pending {
            participant_standbys.push(self.start_standbys(pending).await?);
        }
        Ok(Members {
            mediator,
            mediator_standbys,
            participants,
            participant_standbys,
        })
    }
}

/// Adds the mediator and every participant to the topology through its active manager.
/// The calls carry the admin token, which the manager requires for them.
async fn register_members(topology: &NodeProcess, keys: &Keys) -> anyhow::Result<()> {
    let channel = meridian_client::tls::endpoint(
        &topology.grpc_endpoint(),
        None,
        "topology manager endpoint",
    )?
    .connect()
    .await
    .context("connecting to the topology manager")?;
    let mut admin_client = TopologyAdminServiceClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        crate::secrets::bearer(&keys.admin_token_file)?
            .parse()
            .context("the admin token is not printable ASCII")?;
    fn with_token<T>(
        message: T,
        bearer: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        request
    }
    admin_client
        .add_mediator(with_token(
            v1::AddMediatorRequest {
                mediator: MEDIATOR_NODE.into(),
                public_key: keys.mediator.public_key().to_bytes().to_vec(),
            },
            &bearer,
        ))
        .await
        .context("adding the mediator to the topology")?;
    for (id, key) in &keys.participants {
        admin_client
            .add_participant(with_token(
                v1::AddParticipantRequest {
                    participant: id.to_string(),
                    public_key: key.public_key().to_bytes().to_vec(),
                },
                &bearer,
            ))
            .await
            .with_context(|| format!("adding {id} to the topology"))?;
    }
    Ok(())
}

impl Deployment {
    /// Starts every warm replica, writes the cold ones' configs, registers the mediator and
    /// participants in the topology, and waits until all are ready. `progress` receives one
    /// line per step.
    pub async fn start(
        spec: &DeploymentSpec,
        progress: &mut dyn FnMut(String),
    ) -> anyhow::Result<Deployment> {
        check::check(&spec.description).context("the deployment cannot run")?;
        if spec.description.load_balancer.is_some() {
            // Before any node starts: a missing HAProxy must not leave a half-started
            // deployment behind.
            meridian_lb::haproxy::binary().context("the deployment has a [load_balancer]")?;
        }
        let data_dir = &spec.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let description_path = data_dir.join(DESCRIPTION_FILE);
        std::fs::write(&description_path, spec.description.to_toml()?)
            .with_context(|| format!("writing {}", description_path.display()))?;
        let keys = Keys::load_or_create(data_dir, &spec.description)?;
        (progress)(format!(
            "admin token in {} (mode 0600): admin calls send it as `Authorization: Bearer <token>`; `meridian admin` reads it from there",
            keys.admin_token_file.display()
        ));
        let ledger_auth = if spec.ledger_auth {
            Some(crate::secrets::ledger_auth(data_dir)?)
        } else {
            None
        };
        let started = Instant::now();
        let node_keys = spec.description.node_keys();
        let nodes = spec.description.nodes(&node_keys);
        // Every replica (cold ones too) gets its certificate now; nodes then run TLS with
        // mutual authentication, and the lab's clients present the `lab` certificate.
        let mut names: Vec<String> = nodes
            .iter()
            .flat_map(|node| node.replicas.iter().map(|r| r.name.to_string()))
            .collect();
        if spec.description.load_balancer.is_some() {
            names.push(crate::lb::LB_CERT_NAME.to_owned());
        }
        crate::tls::deployment_certs(data_dir, &names)?;
        let mut addresses = HashMap::new();
        for replica in nodes.iter().flat_map(|node| node.replicas) {
            addresses.insert(replica.name.to_string(), spec.addresses(replica)?);
        }
        let network = spec.start_network(&nodes, &addresses)?;
        if let Some(process) = &network {
            (progress)(format!(
                "{} delayed links between zones and regions (cross-zone RTT {} ms, \
                 cross-region RTT {} ms), in {}",
                process.network.links.len(),
                spec.description.network.cross_zone_rtt_ms,
                spec.description.network.cross_region_rtt_ms,
                data_dir.join(network::NETDELAY_DIR).display()
            ));
        }
        let mut starter = Starter {
            spec,
            progress,
            cold: Vec::new(),
            addresses,
            network: network
                .as_ref()
                .map(|process| process.network.clone())
                .unwrap_or_default(),
        };
        let (sequencers, sequencer_clocks) = starter.start_sequencers(&nodes[0], &keys).await?;
        let sequencer_endpoints: Vec<String> =
            sequencers.iter().map(NodeProcess::grpc_endpoint).collect();
        let (topology, topology_standbys) = starter
            .start_topology(&nodes[1], &keys, &sequencer_endpoints)
            .await?;
        register_members(&topology, &keys).await?;
        let context = MemberContext {
            owner_public_key: keys.owner_public_key.clone(),
            keys_dir: keys.dir.clone(),
            sequencer_endpoints,
            cold_sequencer_endpoints: starter.cold_endpoints(SEQUENCER_NODE),
            topology_endpoints: std::iter::once(&topology)
                .chain(&topology_standbys)
                .map(NodeProcess::grpc_endpoint)
                .chain(starter.cold_endpoints(TOPOLOGY_NODE))
                .collect(),
            ledger_auth_jwks: ledger_auth.as_ref().map(|auth| auth.files.jwks.clone()),
        };
        let members = starter.start_members(&nodes[2..], &keys, &context).await?;
        for cold in &starter.cold {
            (starter.progress)(format!(
                "{} cold in zone {}, not started (config {})",
                cold.name,
                cold.zone,
                cold.config_path.display()
            ));
        }
        let mut deployment = Deployment {
            exe: spec.exe.clone(),
            data_dir: data_dir.clone(),
            description: spec.description.clone(),
            sequencers,
            topology,
            topology_standbys,
            mediator: members.mediator,
            mediator_standbys: members.mediator_standbys,
            participants: members.participants,
            participant_standbys: members.participant_standbys,
            participant_ids: keys.participants.into_iter().map(|(id, _)| id).collect(),
            cold: starter.cold,
            sequencer_clocks,
            databases: spec.databases.clone(),
            ledger_auth,
            network,
            load_balancer: None,
        };
        if let Some(load_balancer) = &spec.description.load_balancer {
            deployment.load_balancer = Some(
                deployment
                    .start_load_balancer(load_balancer, spec.detached)
                    .await?,
            );
            (starter.progress)("HAProxy routes every participant to its active replica".to_owned());
        }
        (starter.progress)(format!(
            "synchronizer up in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(deployment)
    }

    /// Starts HAProxy in front of every replica of the participants and the sequencer (cold
    /// ones included: they come up later), the first region first.
    async fn start_load_balancer(
        &self,
        load_balancer: &description::LoadBalancer,
        detached: bool,
    ) -> anyhow::Result<crate::lb::LabLoadBalancer> {
        crate::lb::write_identity_pem(&self.data_dir)?;
        // HAProxy sits in the clients' zone: it reaches (and checks) each replica through the
        // delayed link from there when `[network]` sets one.
        let at = |grpc, admin| crate::lb::ReplicaAddresses {
            grpc: self.client_address(grpc),
            admin: self.client_address(admin),
        };
        let mut addresses: HashMap<String, crate::lb::ReplicaAddresses> = self
            .processes()
            .into_iter()
            .map(|p| (p.name().to_owned(), at(p.grpc_address, p.admin_address)))
            .collect();
        for cold in &self.cold {
            addresses.insert(
                cold.name.to_string(),
                at(cold.grpc_address, cold.admin_address),
            );
        }
        let ports = crate::lb::frontend_ports(&self.description, load_balancer)?;
        let region = crate::lb::initial_region(&self.description)?;
        let plan = crate::lb::plan(
            &self.description,
            load_balancer,
            &ports,
            &addresses,
            &self.data_dir,
            &region,
        )?;
        crate::lb::LabLoadBalancer::start(&self.data_dir, plan, detached)
            .await
            .context("starting the load balancer")
    }

    /// A Ledger API token for participant `index` granting `grant` (its audience is set
    /// here); `None` when the deployment's Ledger API is open.
    pub fn ledger_token(
        &self,
        index: usize,
        grant: meridian_auth::mint::TokenGrant,
    ) -> anyhow::Result<Option<String>> {
        let Some(auth) = &self.ledger_auth else {
            return Ok(None);
        };
        let participant = self
            .participant_ids
            .get(index)
            .with_context(|| format!("no participant {index}"))?;
        auth.token(&meridian_auth::mint::TokenGrant {
            participant: participant.to_string(),
            ..grant
        })
        .map(Some)
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    pub fn mediator_id() -> MemberId {
        configs::mediator_id()
    }

    /// The running process called `name` (a replica or a sequencer instance).
    pub fn process_mut(&mut self, name: &str) -> Option<&mut NodeProcess> {
        self.processes_mut().into_iter().find(|p| p.name() == name)
    }

    pub fn ledger_endpoint(&self, index: usize) -> String {
        self.client_url(&self.participants[index].grpc_endpoint())
    }

    /// The Ledger API endpoints a client of participant `index` uses: the load balancer's one
    /// address when the deployment has one, else [`Self::replica_endpoints`].
    pub fn ledger_endpoints(&self, index: usize) -> Vec<String> {
        let node = self
            .description
            .participants
            .get(index)
            .map(|p| p.name.as_str());
        if let Some(url) = node.and_then(|node| self.load_balancer.as_ref()?.url(node)) {
            // Through the load balancer, a client knows one address per participant.
            return vec![url];
        }
        self.replica_endpoints(index)
    }

    /// Every replica's Ledger API endpoint of participant `index`, bypassing any load
    /// balancer: the first replica, its warm standbys, then its cold replicas (refused until
    /// their region is started).
    pub fn replica_endpoints(&self, index: usize) -> Vec<String> {
        let node = self
            .description
            .participants
            .get(index)
            .map(|p| p.name.as_str());
        std::iter::once(&self.participants[index])
            .chain(&self.participant_standbys[index])
            .map(NodeProcess::grpc_endpoint)
            .chain(
                self.cold
                    .iter()
                    .filter(|c| Some(c.node.as_str()) == node)
                    .map(ColdReplica::grpc_endpoint),
            )
            .map(|endpoint| self.client_url(&endpoint))
            .collect()
    }

    /// What a client of the lab (the workload, the drills, the benches; all in
    /// [`network::client_zone`]) dials for `address`: through the link from its zone.
    pub fn client_address(&self, address: SocketAddr) -> SocketAddr {
        match (&self.network, network::client_zone(&self.description)) {
            (Some(process), Some(zone)) => process.network.dial(zone, address),
            _ => address,
        }
    }

    /// What a process in `zone` dials for `address` (the load balancer, in the client zone).
    pub fn dial_from(&self, zone: &ZoneName, address: SocketAddr) -> SocketAddr {
        self.network
            .as_ref()
            .map_or(address, |process| process.network.dial(zone, address))
    }

    /// [`Self::client_address`] for an endpoint URL.
    fn client_url(&self, endpoint: &str) -> String {
        match (&self.network, network::client_zone(&self.description)) {
            (Some(process), Some(zone)) => process.network.dial_url(zone, endpoint),
            _ => endpoint.to_owned(),
        }
    }

    /// All replicas of participant `index`, mutable (for kill -9 and restarts).
    pub fn participant_replicas_mut(&mut self, index: usize) -> Vec<&mut NodeProcess> {
        with_standbys(
            &mut self.participants[index],
            &mut self.participant_standbys[index],
        )
    }

    /// All topology manager replicas, mutable.
    pub fn topology_replicas_mut(&mut self) -> Vec<&mut NodeProcess> {
        with_standbys(&mut self.topology, &mut self.topology_standbys)
    }

    /// Every sequencer instance's gRPC endpoint, by instance index.
    pub fn sequencer_endpoints(&self) -> Vec<String> {
        self.sequencers
            .iter()
            .map(NodeProcess::grpc_endpoint)
            .collect()
    }

    /// Every node process of the deployment, mutable: sequencer instances, then every replica
    /// of the topology manager, the mediator and the participants.
    pub fn processes_mut(&mut self) -> Vec<&mut NodeProcess> {
        self.sequencers
            .iter_mut()
            .chain(std::iter::once(&mut self.topology))
            .chain(self.topology_standbys.iter_mut())
            .chain(std::iter::once(&mut self.mediator))
            .chain(self.mediator_standbys.iter_mut())
            .chain(self.participants.iter_mut())
            .chain(self.participant_standbys.iter_mut().flatten())
            .collect()
    }

    /// Every node process of the deployment, in [`Self::processes_mut`]'s order.
    pub fn processes(&self) -> Vec<&NodeProcess> {
        self.sequencers
            .iter()
            .chain(std::iter::once(&self.topology))
            .chain(&self.topology_standbys)
            .chain(std::iter::once(&self.mediator))
            .chain(&self.mediator_standbys)
            .chain(&self.participants)
            .chain(self.participant_standbys.iter().flatten())
            .collect()
    }

    /// All mediator replicas, mutable.
    pub fn mediator_replicas_mut(&mut self) -> Vec<&mut NodeProcess> {
        with_standbys(&mut self.mediator, &mut self.mediator_standbys)
    }

    /// How to reach the nodes by hand: the CA and the client certificate (mutual TLS is on),
    /// and a grpcurl line; nothing for a plaintext deployment.
    pub fn tls_lines(&self) -> Vec<String> {
        if crate::tls::is_plaintext() {
            return vec!["TLS is OFF (plaintext)".to_owned()];
        }
        let dir = crate::tls::tls_dir(&self.data_dir);
        let ca = dir.join(meridian_node::certs::CA_CERT_FILE);
        let cert = dir.join(format!("{}.crt", crate::tls::LAB_CLIENT));
        let key = dir.join(format!("{}.key", crate::tls::LAB_CLIENT));
        let participant = self
            .participants
            .first()
            .map(|p| p.grpc_address.to_string())
            .unwrap_or_default();
        vec![
            format!(
                "TLS with mutual authentication: CA {}, client certificate {} (key {})",
                ca.display(),
                cert.display(),
                key.display()
            ),
            format!(
                "  e.g. grpcurl -cacert {} -cert {} -key {} {participant} list",
                ca.display(),
                cert.display(),
                key.display()
            ),
            format!(
                "       curl --cacert {} --cert {} --key {} https://<admin>/status",
                ca.display(),
                cert.display(),
                key.display()
            ),
        ]
    }

    /// One line per process: name, endpoints, log file.
    pub fn endpoints(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let services = self
            .sequencers
            .iter()
            .chain(std::iter::once(&self.topology))
            .chain(&self.topology_standbys);
        for process in services {
            lines.push(format!(
                "{:<19} gRPC {}  admin {}://{}  log {}",
                process.name(),
                process.grpc_endpoint(),
                crate::tls::scheme(),
                process.admin_address,
                process.log_path.display()
            ));
        }
        for mediator in std::iter::once(&self.mediator).chain(&self.mediator_standbys) {
            lines.push(format!(
                "{:<19} admin {}://{}  log {}",
                mediator.name(),
                crate::tls::scheme(),
                mediator.admin_address,
                mediator.log_path.display()
            ));
        }
        for participant in self
            .participants
            .iter()
            .chain(self.participant_standbys.iter().flatten())
        {
            lines.push(format!(
                "{:<19} Ledger API {}  admin {}://{}  log {}",
                participant.name(),
                participant.grpc_endpoint(),
                crate::tls::scheme(),
                participant.admin_address,
                participant.log_path.display()
            ));
        }
        for cold in &self.cold {
            lines.push(format!(
                "{:<19} cold in {}, not started; config {}",
                cold.name,
                cold.zone,
                cold.config_path.display()
            ));
        }
        lines
    }

    /// The names of every replica (warm or cold) the description places in `region`.
    fn replicas_in(&self, region: &RegionName) -> HashSet<String> {
        let keys = self.description.node_keys();
        self.description
            .nodes(&keys)
            .iter()
            .flat_map(|node| node.replicas.iter())
            .filter(|r| self.description.region_of(&r.zone) == Some(region))
            .map(|r| r.name.to_string())
            .collect()
    }

    /// Starts every cold replica of `region` (without waiting for them: a replica on a
    /// database that is still a standby stays not ready until it is promoted) and moves each
    /// into the running processes as a standby of its node; returns their names.
    pub fn start_cold(&mut self, region: &RegionName) -> anyhow::Result<Vec<String>> {
        let (starting, staying): (Vec<ColdReplica>, Vec<ColdReplica>) =
            std::mem::take(&mut self.cold)
                .into_iter()
                .partition(|c| self.description.region_of(&c.zone) == Some(region));
        self.cold = staying;
        let mut started = Vec::new();
        for cold in starting {
            let config = std::fs::read_to_string(&cold.config_path)
                .with_context(|| format!("reading {}", cold.config_path.display()))?;
            let process = NodeProcess::configure(
                cold.role.command(),
                &cold.dir,
                &cold.name.to_string(),
                &config,
                cold.grpc_address,
                cold.admin_address,
            )?
            .started(&self.exe)?;
            started.push(process.name().to_owned());
            self.adopt(&cold.node, process)?;
        }
        Ok(started)
    }

    /// Files a started cold replica of `node` with that node's processes.
    fn adopt(&mut self, node: &str, process: NodeProcess) -> anyhow::Result<()> {
        if node == SEQUENCER_NODE {
            self.sequencers.push(process);
        } else if node == TOPOLOGY_NODE {
            self.topology_standbys.push(process);
        } else if node == MEDIATOR_NODE {
            self.mediator_standbys.push(process);
        } else {
            let index = self
                .description
                .participants
                .iter()
                .position(|p| p.name.as_str() == node)
                .with_context(|| format!("no node {node} to start a cold replica of"))?;
            self.participant_standbys[index].push(process);
        }
        Ok(())
    }

    /// The running processes placed in `region`.
    fn processes_in(&mut self, region: &RegionName) -> Vec<&mut NodeProcess> {
        let names = self.replicas_in(region);
        self.processes_mut()
            .into_iter()
            .filter(|p| names.contains(p.name()) && p.pid().is_some())
            .collect()
    }

    /// Kills (SIGKILL) every process of `region` and, on PostgreSQL clusters, every database
    /// server there, at once, as a lost region; returns what was killed. First the
    /// replication links out of the region are cut (the region leaves the network: WAL in
    /// flight is lost, as it would be), then the processes are killed (no node gets to see
    /// its database vanish and react), then the servers.
    pub fn kill9_region(&mut self, region: &RegionName) -> anyhow::Result<Vec<String>> {
        if let Some(databases) = &self.databases {
            if !databases.servers().is_empty() {
                databases.cut_links_into(region)?;
            }
        }
        let mut killed = Vec::new();
        for process in self.processes_in(region) {
            process.kill9()?;
            killed.push(process.name().to_owned());
        }
        if let Some(databases) = &self.databases {
            // An external server (tests) is no region's: it stays.
            if !databases.servers().is_empty() {
                killed.extend(
                    databases
                        .kill9_region(region)?
                        .into_iter()
                        .map(|s| s.to_string()),
                );
            }
        }
        Ok(killed)
    }

    /// Stops every process of `region` gracefully, in three waves — the participants, then
    /// the mediator and topology manager, then the sequencer instances — each wave SIGTERMed
    /// at once and given `grace` to exit; returns their names. Participants go first so that
    /// the mediator and sequencer are still there for their in-flight submissions, and they
    /// are quiesced first ([`crate::replicas::quiesce_participants`]): those submissions also
    /// need the other participants' confirmations, so none may exit while another still has
    /// calls running. Database servers keep running.
    pub async fn stop_region(
        &mut self,
        region: &RegionName,
        grace: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let wave_of = |command: &str| match command {
            "participant" => 0,
            "sequencer" => 2,
            _ => 1,
        };
        let bearer = crate::secrets::bearer(&crate::secrets::admin_token_path(&self.data_dir)).ok();
        let mut stopped = Vec::new();
        for wave in 0..3 {
            let mut processes: Vec<&mut NodeProcess> = self
                .processes_in(region)
                .into_iter()
                .filter(|p| wave_of(p.role_command()) == wave)
                .collect();
            if wave == 0 {
                let participants: Vec<(String, SocketAddr)> = processes
                    .iter_mut()
                    .filter_map(|p| p.is_running().then_some(&**p))
                    .map(|p| (p.name().to_owned(), p.admin_address))
                    .collect();
                if let Some(quiesced) =
                    crate::replicas::quiesce_participants(&participants, bearer.as_deref()).await
                {
                    tracing::info!(%region, %quiesced, "participants quiesced before the stop");
                }
            }
            for process in &processes {
                process.signal(nix::sys::signal::Signal::SIGTERM)?;
            }
            for process in &mut processes {
                process.wait_exit(grace).await?;
                stopped.push(process.name().to_owned());
            }
        }
        Ok(stopped)
    }

    /// Stops every node with SIGTERM: participants first, the sequencer instances last, so
    /// that no node loses its sequencer while it shuts down.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(load_balancer) = &mut self.load_balancer {
            load_balancer.stop();
        }
        let grace = Duration::from_secs(10);
        let mut first_error = None;
        let mut nodes = self.processes_mut();
        nodes.reverse();
        for node in nodes {
            if let Err(error) = node.terminate(grace).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A node's replicas, mutable: the first replica, then its standbys.
fn with_standbys<'a>(
    first: &'a mut NodeProcess,
    standbys: &'a mut [NodeProcess],
) -> Vec<&'a mut NodeProcess> {
    std::iter::once(first).chain(standbys.iter_mut()).collect()
}
