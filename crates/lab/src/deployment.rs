//! A whole synchronizer on one machine, as child processes: one or more sequencer instances
//! (all active, one shared database), the topology manager, the mediator and N participants —
//! each of the last three optionally as active/passive replicas — with keys and configs in a
//! data directory.
//!
//! Used by `meridian demo`, `meridian up`, `meridian bench ledger` and the black-box tests.
//! Configs are rewritten with fresh ports on every start while keys and databases persist, so
//! a second start on the same directory resumes the same ledger.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_core::crypto::SigningKey;
use meridian_core::{MemberId, ParticipantId};
use meridian_node::keys::load_or_create_key;
use meridian_proto::v1;
use meridian_proto::v1::topology_admin_service_client::TopologyAdminServiceClient;
use meridian_pgserver::PostgresServer;

use crate::bench::sequencer::Backend;
use crate::launch::{free_addresses, NodeProcess, StorageSpec};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Limits of what one machine's deployment runs.
const MAX_SEQUENCERS: usize = 8;
const MAX_REPLICAS: usize = 8;
/// `[instance] count` of every sequencer: fixed for the life of the database, and above any
/// number of instances a deployment runs.
const SEQUENCER_INSTANCE_COUNT: usize = 32;
const MEDIATOR_ID: &str = "mediator";

/// Where the nodes keep their state.
#[derive(Debug, Clone)]
pub enum DeploymentBackend {
    /// One SQLite file per node under the data directory.
    Sqlite,
    /// One database per node on this PostgreSQL server (admin URL without a database name,
    /// e.g. `postgres://meridian@127.0.0.1:5432`); databases are created if missing.
    Postgres { server_url: String },
}

#[derive(Debug, Clone)]
pub struct DeploymentSpec {
    /// The `meridian` binary to run the nodes with.
    pub exe: PathBuf,
    pub data_dir: PathBuf,
    pub participants: usize,
    pub backend: DeploymentBackend,
    /// Extra TOML for the mediator (e.g. `response_timeout_ms = 3000`).
    pub mediator_toml: String,
    /// Extra TOML for every participant (e.g. `max_sequencing_delay_ms = 3000`).
    pub participant_toml: String,
    /// Replicas of each participant, of the mediator and of the topology manager
    /// (1 = unreplicated). Replicas share the node's key and database; the first is started
    /// first and becomes active.
    pub replicas: usize,
    /// Sequencer instances, all active on the sequencer's one database (1 = a single one).
    pub sequencers: usize,
    /// Lease timeout of replicated nodes: how long a stuck active keeps its lease.
    pub lease_timeout_ms: u64,
    /// Fixed ports by process name (`sequencer-a`, `participant1-b`, ...); every other
    /// process gets free ports.
    pub ports: BTreeMap<String, NodePorts>,
}

/// The ports one process listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodePorts {
    /// gRPC (the mediator has none and ignores it).
    pub grpc: u16,
    /// Admin HTTP: /livez /readyz /status /metrics.
    pub admin: u16,
}

pub struct Deployment {
    exe: PathBuf,
    pub data_dir: PathBuf,
    /// Every sequencer instance, by instance index.
    pub sequencers: Vec<NodeProcess>,
    /// The topology manager's first replica (active after start).
    pub topology: NodeProcess,
    /// Further topology manager replicas (passive after start).
    pub topology_standbys: Vec<NodeProcess>,
    /// The mediator's first replica (active after start).
    pub mediator: NodeProcess,
    /// Further mediator replicas (passive after start).
    pub mediator_standbys: Vec<NodeProcess>,
    /// Each participant's first replica (active after start).
    pub participants: Vec<NodeProcess>,
    /// Each participant's further replicas (passive after start), by participant index.
    pub participant_standbys: Vec<Vec<NodeProcess>>,
    pub participant_ids: Vec<ParticipantId>,
}

/// A node process whose config is ready but which is not started yet.
struct PendingProcess {
    role: &'static str,
    dir: PathBuf,
    name: String,
    config: String,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl PendingProcess {
    fn spawn(self, exe: &Path) -> anyhow::Result<NodeProcess> {
        NodeProcess::spawn_role(
            exe,
            self.role,
            &self.dir,
            &self.name,
            &self.config,
            self.grpc,
            self.admin,
        )
    }
}

/// Process names of a node's replicas: `node` alone, or `node-a`, `node-b`, ...
fn replica_names(node: &str, replicas: usize) -> Vec<String> {
    if replicas <= 1 {
        return vec![node.to_owned()];
    }
    (0..replicas)
        .map(|i| format!("{node}-{}", char::from(b'a' + (i % 26) as u8)))
        .collect()
}

/// The `[replication]` table of one replica, empty when unreplicated.
fn replication_toml(spec: &DeploymentSpec, replica: &str, endpoint: &str) -> String {
    if spec.replicas <= 1 {
        return String::new();
    }
    format!(
        "\n[replication]\nreplica_id = \"{replica}\"\nadvertised_endpoint = \"{endpoint}\"\nlease_timeout_ms = {}\npoll_interval_ms = 50\n",
        spec.lease_timeout_ms
    )
}

fn participant_name(index: usize) -> String {
    format!("participant{}", index + 1)
}

fn toml_str(value: &str) -> String {
    toml::Value::String(value.to_owned()).to_string()
}

/// A TOML array of `endpoints`, rotated left by `start` so that members spread their
/// subscriptions and sends over the sequencer instances.
fn toml_endpoints(endpoints: &[String], start: usize) -> String {
    let mut rotated = endpoints.to_vec();
    if !rotated.is_empty() {
        rotated.rotate_left(start % endpoints.len());
    }
    toml::Value::Array(rotated.into_iter().map(toml::Value::String).collect()).to_string()
}

impl DeploymentSpec {
    /// A deployment of this very binary with `participants` participants on SQLite.
    pub fn local(data_dir: PathBuf, participants: usize) -> anyhow::Result<Self> {
        Ok(Self {
            exe: std::env::current_exe().context("locating the meridian binary")?,
            data_dir,
            participants,
            backend: DeploymentBackend::Sqlite,
            mediator_toml: String::new(),
            participant_toml: String::new(),
            replicas: 1,
            sequencers: 1,
            lease_timeout_ms: 1_000,
            ports: BTreeMap::new(),
        })
    }

    /// The (gRPC, admin) addresses of process `name`: its fixed ports, or free ones.
    fn addresses(&self, name: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        match self.ports.get(name) {
            Some(ports) => Ok((
                SocketAddr::from(([127, 0, 0, 1], ports.grpc)),
                SocketAddr::from(([127, 0, 0, 1], ports.admin)),
            )),
            None => free_addresses(),
        }
    }
}

/// Every process a deployment of `sequencers` instances and `replicas` of each other node
/// with `participants` participants runs, by name, in start order.
pub fn process_names(sequencers: usize, replicas: usize, participants: usize) -> Vec<String> {
    let mut names = replica_names("sequencer", sequencers);
    names.extend(replica_names("topology-manager", replicas));
    names.extend(replica_names(MEDIATOR_ID, replicas));
    for index in 0..participants {
        names.extend(replica_names(&participant_name(index), replicas));
    }
    names
}

impl DeploymentBackend {
    /// The backend `backend` names: SQLite files, or databases on a throwaway PostgreSQL server
    /// started now and returned with it (the server stops when it is dropped, so keep it for
    /// as long as the deployment runs).
    pub fn start(backend: Backend) -> anyhow::Result<(Self, Option<PostgresServer>)> {
        Ok(match backend {
            Backend::Sqlite => (DeploymentBackend::Sqlite, None),
            Backend::Postgres => {
                let server = PostgresServer::start().context("starting a throwaway PostgreSQL")?;
                (Self::on_server(&server), Some(server))
            }
        })
    }

    /// Databases on `server`.
    pub fn on_server(server: &PostgresServer) -> Self {
        DeploymentBackend::Postgres {
            server_url: format!("postgres://meridian@127.0.0.1:{}", server.port()),
        }
    }

    async fn storage(&self, data_dir: &Path, node: &str) -> anyhow::Result<StorageSpec> {
        Ok(match self {
            DeploymentBackend::Sqlite => {
                StorageSpec::Sqlite(data_dir.join(node).join(format!("{node}.db")))
            }
            DeploymentBackend::Postgres { server_url } => {
                let database = node.replace('-', "_");
                create_database_if_missing(server_url, &database).await?;
                StorageSpec::Postgres(format!("{server_url}/{database}"))
            }
        })
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

impl Deployment {
    /// Starts every node, registers the mediator and participants in the topology, and waits
    /// until all are ready. `progress` receives one line per step.
    pub async fn start(
        spec: &DeploymentSpec,
        progress: &mut dyn FnMut(String),
    ) -> anyhow::Result<Deployment> {
        let exe = spec.exe.clone();
        let data_dir = &spec.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let keys = data_dir.join("keys");
        let owner = load_or_create_key(&keys.join("owner.key"))?;
        let owner_hex = owner.public_key().to_string();
        let mediator_key = load_or_create_key(&keys.join("mediator.key"))?;
        let participant_ids: Vec<ParticipantId> = (0..spec.participants)
            .map(|i| ParticipantId::new(participant_name(i)))
            .collect::<Result<_, _>>()?;
        let participant_keys: Vec<SigningKey> = participant_ids
            .iter()
            .map(|id| load_or_create_key(&keys.join(format!("{id}.key"))))
            .collect::<Result<_, _>>()?;

        let started = Instant::now();
        if spec.sequencers == 0 || spec.sequencers > MAX_SEQUENCERS {
            bail!(
                "a deployment runs 1 to {MAX_SEQUENCERS} sequencer instances, not {}",
                spec.sequencers
            );
        }
        if spec.replicas == 0 || spec.replicas > MAX_REPLICAS {
            bail!(
                "a deployment runs 1 to {MAX_REPLICAS} replicas per node, not {}",
                spec.replicas
            );
        }
        // Instances share the sequencer's database (the same SQLite file, or one PostgreSQL
        // database) and differ in their instance index.
        let storage = spec.backend.storage(data_dir, "sequencer").await?;
        let mut sequencers = Vec::new();
        for (index, name) in replica_names("sequencer", spec.sequencers)
            .into_iter()
            .enumerate()
        {
            let (grpc, admin) = spec.addresses(&name)?;
            let config = format!(
                "listen_address = \"{grpc}\"\nadmin_address = \"{admin}\"\nowner_public_key = \"{owner_hex}\"\n\n[instance]\nindex = {index}\ncount = {SEQUENCER_INSTANCE_COUNT}\n\n{}",
                storage.to_toml()
            );
            let mut sequencer = NodeProcess::spawn_role(
                &exe,
                "sequencer",
                &data_dir.join("sequencer"),
                &name,
                &config,
                grpc,
                admin,
            )?;
            sequencer.wait_ready(READY_TIMEOUT).await?;
            progress(format!("{name} ready at {}", sequencer.grpc_endpoint()));
            sequencers.push(sequencer);
        }
        let sequencer_endpoints: Vec<String> =
            sequencers.iter().map(NodeProcess::grpc_endpoint).collect();

        let storage = spec.backend.storage(data_dir, "topology-manager").await?;
        let mut topology_replicas = Vec::new();
        for replica in replica_names("topology-manager", spec.replicas) {
            let (grpc, admin) = spec.addresses(&replica)?;
            let config = format!(
                "listen_address = \"{grpc}\"\nadmin_address = \"{admin}\"\nowner_key_file = {}\nkey_file = {}\nsequencer_endpoints = {}\n{}{}",
                toml_str(&keys.join("owner.key").display().to_string()),
                toml_str(&keys.join("topology-manager.key").display().to_string()),
                toml_endpoints(&sequencer_endpoints, topology_replicas.len()),
                storage.to_toml(),
                replication_toml(spec, &replica, &format!("http://{grpc}")),
            );
            topology_replicas.push(PendingProcess {
                role: "topology",
                dir: data_dir.join("topology-manager"),
                name: replica,
                config,
                grpc,
                admin,
            });
        }
        let mut topology_replicas = topology_replicas.into_iter();
        let mut topology = topology_replicas
            .next()
            .context("at least one topology manager replica")?
            .spawn(&exe)?;
        topology.wait_ready(READY_TIMEOUT).await?;
        progress(format!(
            "{} ready at {}",
            topology.name(),
            topology.grpc_endpoint()
        ));
        let mut topology_standbys = Vec::new();
        for pending in topology_replicas {
            let mut standby = pending.spawn(&exe)?;
            standby.wait_alive(READY_TIMEOUT).await?;
            progress(format!("{} standing by", standby.name()));
            topology_standbys.push(standby);
        }
        let topology_endpoints: Vec<String> = std::iter::once(&topology)
            .chain(&topology_standbys)
            .map(NodeProcess::grpc_endpoint)
            .collect();

        let mut admin_client = TopologyAdminServiceClient::connect(topology.grpc_endpoint())
            .await
            .context("connecting to the topology manager")?;
        admin_client
            .add_mediator(v1::AddMediatorRequest {
                mediator: MEDIATOR_ID.into(),
                public_key: mediator_key.public_key().to_bytes().to_vec(),
            })
            .await
            .context("adding the mediator to the topology")?;
        for (id, key) in participant_ids.iter().zip(&participant_keys) {
            admin_client
                .add_participant(v1::AddParticipantRequest {
                    participant: id.to_string(),
                    public_key: key.public_key().to_bytes().to_vec(),
                })
                .await
                .with_context(|| format!("adding {id} to the topology"))?;
        }

        // Each member lists every sequencer instance, starting at a different one.
        let mut member_index = 0;
        let mut common = || {
            member_index += 1;
            format!(
                "owner_public_key = \"{owner_hex}\"\nsequencer_endpoints = {}\ntopology_endpoints = {}\n",
                toml_endpoints(&sequencer_endpoints, member_index),
                toml_endpoints(&topology_endpoints, 0),
            )
        };
        let storage = spec.backend.storage(data_dir, MEDIATOR_ID).await?;
        let mut mediators = Vec::new();
        for replica in replica_names(MEDIATOR_ID, spec.replicas) {
            let (_, admin) = spec.addresses(&replica)?;
            let config = format!(
                "member_id = \"{MEDIATOR_ID}\"\nkey_file = {}\nadmin_address = \"{admin}\"\n{}{}\n{}{}",
                toml_str(&keys.join("mediator.key").display().to_string()),
                common(),
                spec.mediator_toml,
                storage.to_toml(),
                replication_toml(spec, &replica, &format!("http://{admin}")),
            );
            mediators.push(PendingProcess {
                role: "mediator",
                dir: data_dir.join(MEDIATOR_ID),
                name: replica,
                config,
                grpc: admin,
                admin,
            });
        }

        let mut participants = Vec::new();
        for id in &participant_ids {
            let storage = spec.backend.storage(data_dir, id.as_str()).await?;
            let mut replicas = Vec::new();
            for replica in replica_names(id.as_str(), spec.replicas) {
                let (grpc, admin) = spec.addresses(&replica)?;
                let config = format!(
                    "participant_id = \"{id}\"\nkey_file = {}\nlisten_address = \"{grpc}\"\nadmin_address = \"{admin}\"\nmediator_id = \"{MEDIATOR_ID}\"\n{}{}\n{}{}",
                    toml_str(&keys.join(format!("{id}.key")).display().to_string()),
                    common(),
                    spec.participant_toml,
                    storage.to_toml(),
                    replication_toml(spec, &replica, &format!("http://{grpc}")),
                );
                replicas.push(PendingProcess {
                    role: "participant",
                    dir: data_dir.join(id.as_str()),
                    name: replica,
                    config,
                    grpc,
                    admin,
                });
            }
            participants.push(replicas);
        }
        // Only the first replica of each node starts now, so that it is the one that becomes
        // active; the others join once it is, as passive standbys.
        let mut mediators = mediators.into_iter();
        let mut mediator = mediators
            .next()
            .context("at least one mediator replica")?
            .spawn(&exe)?;
        let mut participant_pending = Vec::new();
        let mut participants_started = Vec::new();
        for mut replicas in participants {
            let first = replicas.remove(0);
            participants_started.push(first.spawn(&exe)?);
            participant_pending.push(replicas);
        }
        mediator.wait_ready(READY_TIMEOUT).await?;
        progress("mediator ready".into());
        let mut mediator_standbys = Vec::new();
        for pending in mediators {
            let mut standby = pending.spawn(&exe)?;
            standby.wait_alive(READY_TIMEOUT).await?;
            progress(format!("{} standing by", standby.name()));
            mediator_standbys.push(standby);
        }
        let mut participants = participants_started;
        for participant in &mut participants {
            participant.wait_ready(READY_TIMEOUT).await?;
            progress(format!(
                "{} ready, Ledger API at {}",
                participant.name(),
                participant.grpc_endpoint()
            ));
        }
        let mut participant_standbys = Vec::new();
        for pending in participant_pending {
            let mut standbys = Vec::new();
            for process in pending {
                let mut standby = process.spawn(&exe)?;
                standby.wait_alive(READY_TIMEOUT).await?;
                progress(format!(
                    "{} standing by at {}",
                    standby.name(),
                    standby.grpc_endpoint()
                ));
                standbys.push(standby);
            }
            participant_standbys.push(standbys);
        }
        progress(format!(
            "synchronizer up in {:.1} s",
            started.elapsed().as_secs_f64()
        ));
        Ok(Deployment {
            exe,
            data_dir: data_dir.clone(),
            sequencers,
            topology,
            topology_standbys,
            mediator,
            mediator_standbys,
            participants,
            participant_standbys,
            participant_ids,
        })
    }

    pub fn exe(&self) -> &Path {
        &self.exe
    }

    pub fn mediator_id() -> MemberId {
        MemberId::new(MEDIATOR_ID).expect("static member id is valid")
    }

    pub fn ledger_endpoint(&self, index: usize) -> String {
        self.participants[index].grpc_endpoint()
    }

    /// Every replica's Ledger API endpoint of participant `index`, first replica first.
    pub fn ledger_endpoints(&self, index: usize) -> Vec<String> {
        std::iter::once(&self.participants[index])
            .chain(&self.participant_standbys[index])
            .map(NodeProcess::grpc_endpoint)
            .collect()
    }

    /// All replicas of participant `index`, mutable (for kill -9 and restarts).
    pub fn participant_replicas_mut(&mut self, index: usize) -> Vec<&mut NodeProcess> {
        std::iter::once(&mut self.participants[index])
            .chain(self.participant_standbys[index].iter_mut())
            .collect()
    }

    /// All topology manager replicas, mutable.
    pub fn topology_replicas_mut(&mut self) -> Vec<&mut NodeProcess> {
        std::iter::once(&mut self.topology)
            .chain(self.topology_standbys.iter_mut())
            .collect()
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

    /// All mediator replicas, mutable.
    pub fn mediator_replicas_mut(&mut self) -> Vec<&mut NodeProcess> {
        std::iter::once(&mut self.mediator)
            .chain(self.mediator_standbys.iter_mut())
            .collect()
    }

    /// One line per process: name, endpoints, log file.
    pub fn endpoints(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for sequencer in &self.sequencers {
            lines.push(format!(
                "{:<19} gRPC {}  admin http://{}  log {}",
                sequencer.name(),
                sequencer.grpc_endpoint(),
                sequencer.admin_address,
                sequencer.log_path.display()
            ));
        }
        for topology in std::iter::once(&self.topology).chain(&self.topology_standbys) {
            lines.push(format!(
                "{:<19} gRPC {}  admin http://{}  log {}",
                topology.name(),
                topology.grpc_endpoint(),
                topology.admin_address,
                topology.log_path.display()
            ));
        }
        for mediator in std::iter::once(&self.mediator).chain(&self.mediator_standbys) {
            lines.push(format!(
                "{:<19} admin http://{}  log {}",
                mediator.name(),
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
                "{:<19} Ledger API {}  admin http://{}  log {}",
                participant.name(),
                participant.grpc_endpoint(),
                participant.admin_address,
                participant.log_path.display()
            ));
        }
        lines
    }

    /// Stops every node with SIGTERM: participants first, the sequencer instances last, so
    /// that no node loses its sequencer while it shuts down.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
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
