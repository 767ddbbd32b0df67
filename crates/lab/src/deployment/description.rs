//! The deployment file: what a whole deployment is, as data — regions and their zones, every
//! node with its replicas placed in zones (warm: running and passive; cold: configured, not
//! started), and where the nodes keep their state (SQLite per node, or PostgreSQL clusters
//! whose servers are placed in zones with a role). The built-in presets are values of the same
//! type, so `--preset NAME` and `--deployment FILE` run through one path. The format is
//! documented in `docs/deployment.md`; [`super::check`] says whether a description can run.

use std::path::Path;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

pub use meridian_controller::settings::ControllerSettings;
pub use meridian_core::placement::{
    ClusterName, NodeKind as Role, NodeName, RegionName, ReplicaName, ServerName, ZoneName,
};

/// Where the nodes keep their state: the one type for the storage choice, in files and on
/// the command line (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file per node under the data directory.
    Sqlite,
    /// One database per node on PostgreSQL (a throwaway server in the lab).
    Postgres,
}

/// Who fails a PostgreSQL cluster over inside its region: the one type for the file's
/// `[storage] promoter` and the command line's `--promoter`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Promoter {
    /// The lab as an operator: plain streaming replication, `pg_ctl promote` of the
    /// synchronous standby after a fixed detection delay. Also does the region moves.
    #[default]
    Lab,
    /// Patroni with etcd, one Patroni per server (`synchronous_mode: true`): it detects the
    /// loss and promotes by itself. In-region only: a server in another region is a member
    /// that Patroni never promotes.
    Patroni,
}

impl Promoter {
    pub fn name(self) -> &'static str {
        match self {
            Promoter::Lab => "lab",
            Promoter::Patroni => "patroni",
        }
    }

    fn is_lab(&self) -> bool {
        *self == Promoter::Lab
    }
}

/// Whether a replica runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standby {
    /// Running; the first warm replica of a node becomes active, the others stay passive.
    #[default]
    Warm,
    /// Configured but not started (made live by a later issue).
    Cold,
}

impl Standby {
    pub fn name(self) -> &'static str {
        match self {
            Standby::Warm => "warm",
            Standby::Cold => "cold",
        }
    }
}

/// The role of one PostgreSQL server in its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerRole {
    Primary,
    /// Acknowledges a commit before the primary does: no acknowledged write is lost.
    SyncStandby,
    /// Follows the primary asynchronously (typically in another region).
    AsyncStandby,
}

impl ServerRole {
    pub fn name(self) -> &'static str {
        match self {
            ServerRole::Primary => "primary",
            ServerRole::SyncStandby => "sync-standby",
            ServerRole::AsyncStandby => "async-standby",
        }
    }
}

/// The ports one process listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePorts {
    /// gRPC (the mediator has none and ignores it).
    pub grpc: u16,
    /// Admin HTTP: /livez /readyz /status /metrics.
    pub admin: u16,
}

impl NodePorts {
    pub const fn new(grpc: u16, admin: u16) -> Self {
        Self { grpc, admin }
    }
}

/// A whole deployment, as read from a deployment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Description {
    /// Lease timeout of the replicated nodes: how long a stuck active keeps its lease.
    #[serde(default = "default_lease_timeout_ms")]
    pub lease_timeout_ms: u64,
    /// One-way delay the lab puts on every database link between regions (an asynchronous
    /// standby streaming from a primary in another region), through a delaying proxy; absent
    /// means [`DEFAULT_CROSS_REGION_DELAY_MS`], or half of `[network] cross_region_rtt_ms`
    /// when that is set (see [`Description::standby_link_delay_ms`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_region_delay_ms: Option<u64>,
    pub regions: Vec<Region>,
    pub storage: StorageChoice,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres_clusters: Vec<PostgresCluster>,
    pub sequencer: SequencerNode,
    pub topology_manager: ReplicatedNode,
    pub mediator: ReplicatedNode,
    pub participants: Vec<ParticipantNode>,
    /// The global load balancer in front of the participants and the sequencer (the
    /// `[load_balancer]` table); absent, clients list every replica's endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// `meridian controller`'s timings and limits (the `[controller]` table; every key has a
    /// default). Written out only when it differs from the defaults, so that files which
    /// never name it stay as they are.
    #[serde(default, skip_serializing_if = "is_default")]
    pub controller: ControllerSettings,
    /// Round trips between zones and regions on every link that crosses them (the
    /// `[network]` table; absent: none, as before).
    #[serde(default, skip_serializing_if = "is_default")]
    pub network: NetworkSettings,
}

/// The `[network]` table: round trips the lab puts, through delaying proxies, on every link
/// that crosses a zone or region boundary (node to node, node to database, standby to
/// primary, client to replica). 0 means no proxy on those links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    /// Round trip between two zones of one region, in ms (1 is typical).
    #[serde(default)]
    pub cross_zone_rtt_ms: u64,
    /// Round trip between two regions, in ms (20 is typical for nearby regions).
    #[serde(default)]
    pub cross_region_rtt_ms: u64,
}

impl NetworkSettings {
    /// Whether any link gets a delay.
    pub fn is_on(&self) -> bool {
        self.cross_zone_rtt_ms > 0 || self.cross_region_rtt_ms > 0
    }
}

/// Which load balancer the lab runs (and `meridian lb config` writes a configuration for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerKind {
    /// HAProxy (the Debian package `haproxy`), in master-worker mode.
    #[default]
    Haproxy,
}

impl LoadBalancerKind {
    pub fn name(self) -> &'static str {
        match self {
            LoadBalancerKind::Haproxy => "HAProxy",
        }
    }
}

/// The `[load_balancer]` table: one address per participant and one for the sequencer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancer {
    #[serde(default)]
    pub kind: LoadBalancerKind,
    /// The address HAProxy listens on.
    #[serde(default = "default_load_balancer_address")]
    pub address: std::net::IpAddr,
    /// The sequencer's frontend listens on `first_port`, participant `i`'s (in file order) on
    /// `first_port + 1 + i`. Absent: free ports are picked at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_port: Option<u16>,
}

impl LoadBalancer {
    /// The fixed port of frontend `offset` (0: the sequencer; `1 + i`: participant `i` in file
    /// order): `None` without `first_port`, or past 65535.
    pub fn fixed_port(&self, offset: usize) -> Option<u16> {
        u16::try_from(usize::from(self.first_port?) + offset).ok()
    }
}

impl Default for LoadBalancer {
    fn default() -> Self {
        Self {
            kind: LoadBalancerKind::default(),
            address: default_load_balancer_address(),
            first_port: None,
        }
    }
}

fn default_load_balancer_address() -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

pub const DEFAULT_LEASE_TIMEOUT_MS: u64 = 700;

fn default_lease_timeout_ms() -> u64 {
    DEFAULT_LEASE_TIMEOUT_MS
}

/// A few milliseconds one way: nearby regions (the round trip is twice this).
pub const DEFAULT_CROSS_REGION_DELAY_MS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: RegionName,
    pub zones: Vec<ZoneName>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageChoice {
    pub backend: Backend,
    /// Who promotes a synchronous standby when a cluster's primary is lost.
    #[serde(default, skip_serializing_if = "Promoter::is_lab")]
    pub promoter: Promoter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresCluster {
    pub name: ClusterName,
    /// This cluster's own one-way delay to an asynchronous standby in another region, in
    /// place of the deployment's `cross_region_delay_ms` (a cluster whose standby lags more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross_region_delay_ms: Option<u64>,
    pub servers: Vec<DatabaseServer>,
}

impl PostgresCluster {
    /// The one-way delay of its cross-region links, in ms.
    pub fn link_delay_ms(&self, description: &Description) -> u64 {
        self.cross_region_delay_ms
            .unwrap_or_else(|| description.standby_link_delay_ms())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseServer {
    pub name: ServerName,
    pub zone: ZoneName,
    pub role: ServerRole,
}

/// The sequencer: instances that are all active on one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequencerNode {
    /// The PostgreSQL cluster of its database (may be left out when there is one cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterName>,
    pub instances: Vec<Replica>,
}

/// The topology manager or the mediator: one active replica, the others passive or cold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicatedNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterName>,
    pub replicas: Vec<Replica>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantNode {
    pub name: NodeName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterName>,
    pub replicas: Vec<Replica>,
}

/// One process of a node, placed in a zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replica {
    pub name: ReplicaName,
    pub zone: ZoneName,
    #[serde(default)]
    pub standby: Standby,
    /// Fixed ports; absent means free ones are picked at every start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<NodePorts>,
}

pub const SEQUENCER_NODE: &str = "sequencer";
pub const TOPOLOGY_NODE: &str = "topology-manager";
pub const MEDIATOR_NODE: &str = "mediator";

/// One node of a description with where in the file it is (`participants[1]`).
#[derive(Debug, Clone, Copy)]
pub struct NodeView<'a> {
    pub role: Role,
    pub name: &'a str,
    pub key: &'a str,
    pub cluster: Option<&'a ClusterName>,
    pub replicas: &'a [Replica],
}

impl NodeView<'_> {
    /// Each node is replicated (runs with a lease) when it has more than one replica, warm or
    /// cold: a cold replica joins later and must find the node fenced.
    pub fn is_replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    pub fn warm(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(|r| r.standby == Standby::Warm)
    }

    pub fn cold(&self) -> impl Iterator<Item = &Replica> {
        self.replicas.iter().filter(|r| r.standby == Standby::Cold)
    }
}

/// The keys of the participants in the file, `participants[0]` ..., built once per call.
fn participant_keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("participants[{i}]")).collect()
}

/// The built-in deployments (`--preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// One sequencer instance and one replica of every other node, three participants.
    Single,
    /// Two sequencer instances and two warm replicas of every other node over two zones,
    /// three participants: the default of `demo`, `up` and `drill`.
    Replicated,
    /// Two regions × two zones: warm replicas in region one, a cold one per node in region
    /// two; PostgreSQL with its primary and sync standby in region one and an async standby
    /// in region two.
    TwoRegions,
}

/// How many of each node a one-region deployment runs (the `--replicas` shorthands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub sequencers: usize,
    /// Replicas of the topology manager, the mediator and each participant.
    pub replicas: usize,
    pub participants: usize,
}

impl Shape {
    pub const REPLICATED: Shape = Shape {
        sequencers: 2,
        replicas: 2,
        participants: 3,
    };
}

/// Replica names of a node: `node` alone, or `node-a`, `node-b`, ...
pub fn replica_names(node: &str, replicas: usize) -> Vec<ReplicaName> {
    if replicas <= 1 {
        return vec![ReplicaName(node.to_owned())];
    }
    (0..replicas)
        .map(|i| ReplicaName(format!("{node}-{}", char::from(b'a' + (i % 26) as u8))))
        .collect()
}

pub fn participant_name(index: usize) -> NodeName {
    NodeName(format!("participant{}", index + 1))
}

/// `count` replicas of `node` over `zones` in turn, each `standby`.
fn spread(node: &str, count: usize, zones: &[ZoneName], standby: Standby) -> Vec<Replica> {
    replica_names(node, count)
        .into_iter()
        .zip(zones.iter().cycle())
        .map(|(name, zone)| Replica {
            name,
            zone: zone.clone(),
            standby,
            ports: None,
        })
        .collect()
}

impl Description {
    /// A one-region deployment of `shape` on SQLite, replicas spread over two zones.
    pub fn shaped(shape: Shape) -> Self {
        let zones: Vec<ZoneName> = vec!["zone-1a".into(), "zone-1b".into()];
        let replicated = |node: &str| ReplicatedNode {
            cluster: None,
            replicas: spread(node, shape.replicas, &zones, Standby::Warm),
        };
        Description {
            lease_timeout_ms: DEFAULT_LEASE_TIMEOUT_MS,
            cross_region_delay_ms: None,
            regions: vec![Region {
                name: "region-1".into(),
                zones: zones.clone(),
            }],
            storage: StorageChoice {
                backend: Backend::Sqlite,
                promoter: Promoter::Lab,
            },
            postgres_clusters: Vec::new(),
            sequencer: SequencerNode {
                cluster: None,
                instances: spread(SEQUENCER_NODE, shape.sequencers, &zones, Standby::Warm),
            },
            topology_manager: replicated(TOPOLOGY_NODE),
            mediator: replicated(MEDIATOR_NODE),
            participants: (0..shape.participants)
                .map(|i| {
                    let name = participant_name(i);
                    ParticipantNode {
                        replicas: replicated(name.as_str()).replicas,
                        name,
                        cluster: None,
                    }
                })
                .collect(),
            load_balancer: None,
            controller: ControllerSettings::default(),
            network: NetworkSettings::default(),
        }
    }

    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Single => Self::shaped(Shape {
                sequencers: 1,
                replicas: 1,
                participants: 3,
            }),
            Preset::Replicated => Self::shaped(Shape::REPLICATED),
            Preset::TwoRegions => Self::two_regions(),
        }
    }

    /// The replicated shape in region one, plus a cold replica of every node in region two
    /// and a PostgreSQL cluster spanning both.
    fn two_regions() -> Self {
        let mut description = Self::shaped(Shape::REPLICATED);
        description.regions.push(Region {
            name: "region-2".into(),
            zones: vec!["zone-2a".into(), "zone-2b".into()],
        });
        let cluster = ClusterName::from("main");
        let server = |name: &str, zone: &str, role| DatabaseServer {
            name: name.into(),
            zone: zone.into(),
            role,
        };
        description.storage.backend = Backend::Postgres;
        description.postgres_clusters = vec![PostgresCluster {
            name: cluster.clone(),
            cross_region_delay_ms: None,
            servers: vec![
                server("pg-1a", "zone-1a", ServerRole::Primary),
                server("pg-1b", "zone-1b", ServerRole::SyncStandby),
                server("pg-2a", "zone-2a", ServerRole::AsyncStandby),
            ],
        }];
        let zones: [ZoneName; 2] = ["zone-2a".into(), "zone-2b".into()];
        for (index, (cluster_ref, node, replicas)) in
            description.nodes_mut().into_iter().enumerate()
        {
            *cluster_ref = Some(cluster.clone());
            let name = replica_names(&node, 3).remove(2);
            replicas.push(Replica {
                name,
                zone: zones[index % zones.len()].clone(),
                standby: Standby::Cold,
                ports: None,
            });
        }
        description
    }

    /// Every node's cluster reference, name and replicas, for edits that apply to all.
    fn nodes_mut(&mut self) -> Vec<(&mut Option<ClusterName>, String, &mut Vec<Replica>)> {
        let mut nodes = vec![
            (
                &mut self.sequencer.cluster,
                SEQUENCER_NODE.to_owned(),
                &mut self.sequencer.instances,
            ),
            (
                &mut self.topology_manager.cluster,
                TOPOLOGY_NODE.to_owned(),
                &mut self.topology_manager.replicas,
            ),
            (
                &mut self.mediator.cluster,
                MEDIATOR_NODE.to_owned(),
                &mut self.mediator.replicas,
            ),
        ];
        for participant in &mut self.participants {
            nodes.push((
                &mut participant.cluster,
                participant.name.0.clone(),
                &mut participant.replicas,
            ));
        }
        nodes
    }

    /// Every node in start order: the sequencer, the topology manager, the mediator, the
    /// participants. `keys` holds the participants' keys (see [`Description::node_keys`]).
    pub fn nodes<'a>(&'a self, keys: &'a [String]) -> Vec<NodeView<'a>> {
        let mut nodes = vec![
            NodeView {
                role: Role::Sequencer,
                name: SEQUENCER_NODE,
                key: "sequencer",
                cluster: self.sequencer.cluster.as_ref(),
                replicas: &self.sequencer.instances,
            },
            NodeView {
                role: Role::TopologyManager,
                name: TOPOLOGY_NODE,
                key: "topology_manager",
                cluster: self.topology_manager.cluster.as_ref(),
                replicas: &self.topology_manager.replicas,
            },
            NodeView {
                role: Role::Mediator,
                name: MEDIATOR_NODE,
                key: "mediator",
                cluster: self.mediator.cluster.as_ref(),
                replicas: &self.mediator.replicas,
            },
        ];
        nodes.extend(
            self.participants
                .iter()
                .zip(keys)
                .map(|(participant, key)| NodeView {
                    role: Role::Participant,
                    name: participant.name.as_str(),
                    key,
                    cluster: participant.cluster.as_ref(),
                    replicas: &participant.replicas,
                }),
        );
        nodes
    }

    /// The keys [`Description::nodes`] borrows for the participants.
    pub fn node_keys(&self) -> Vec<String> {
        participant_keys(self.participants.len())
    }

    /// The region of `zone`, if a region lists it.
    pub fn region_of(&self, zone: &ZoneName) -> Option<&RegionName> {
        self.regions
            .iter()
            .find(|region| region.zones.contains(zone))
            .map(|region| &region.name)
    }

    /// The cluster `node` keeps its database on: the one it names, or the only one.
    pub fn cluster_of<'a>(&'a self, node: &NodeView<'a>) -> Option<&'a PostgresCluster> {
        match node.cluster {
            Some(name) => self.postgres_clusters.iter().find(|c| &c.name == name),
            None if self.postgres_clusters.len() == 1 => self.postgres_clusters.first(),
            None => None,
        }
    }

    /// The same deployment on `backend`: SQLite drops the clusters; PostgreSQL on a file
    /// without clusters gets one, with its primary in the first zone and an async standby
    /// in the first zone of every other region.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        if self.storage.backend == backend {
            return self;
        }
        self.storage.backend = backend;
        match backend {
            Backend::Sqlite => {
                // No cluster is left to fail over.
                self.storage.promoter = Promoter::Lab;
                self.postgres_clusters.clear();
                for (cluster, _, _) in self.nodes_mut() {
                    *cluster = None;
                }
            }
            Backend::Postgres if self.postgres_clusters.is_empty() => {
                let servers = self
                    .regions
                    .iter()
                    .filter_map(|region| region.zones.first())
                    .enumerate()
                    .map(|(index, zone)| DatabaseServer {
                        name: ServerName(format!("pg-{zone}")),
                        zone: zone.clone(),
                        role: if index == 0 {
                            ServerRole::Primary
                        } else {
                            ServerRole::AsyncStandby
                        },
                    })
                    .collect();
                self.postgres_clusters.push(PostgresCluster {
                    name: "main".into(),
                    cross_region_delay_ms: None,
                    servers,
                });
            }
            Backend::Postgres => {}
        }
        self
    }

    /// Reads a deployment file; unknown keys and wrong types are errors naming the key.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        Ok(meridian_node::config::load_toml(path)?)
    }

    /// The file text of this description.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// Warm participants, sequencer instances and replicated nodes' minimum of warm
    /// replicas: what the drills and the workload need to know about redundancy.
    pub fn min_warm_replicas(&self) -> usize {
        let keys = self.node_keys();
        self.nodes(&keys)
            .iter()
            .filter(|node| node.role != Role::Sequencer)
            .map(|node| node.warm().count())
            .min()
            .unwrap_or(0)
    }

    /// The one-way delay of a database link between regions (an asynchronous standby
    /// streaming from a primary in another region) unless a cluster sets its own: the file's
    /// `cross_region_delay_ms`, else half the `[network]` cross-region round trip (rounded
    /// down to whole ms) when set, else [`DEFAULT_CROSS_REGION_DELAY_MS`]. The check refuses a
    /// file whose `cross_region_delay_ms` disagrees with its `[network]` round trip.
    pub fn standby_link_delay_ms(&self) -> u64 {
        match (self.cross_region_delay_ms, self.network.cross_region_rtt_ms) {
            (Some(delay), _) => delay,
            (None, 0) => DEFAULT_CROSS_REGION_DELAY_MS,
            (None, rtt) => rtt / 2,
        }
    }

    pub fn warm_sequencers(&self) -> usize {
        self.sequencer
            .instances
            .iter()
            .filter(|r| r.standby == Standby::Warm)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_REGIONS_EXAMPLE: &str = include_str!("../../../../docs/examples/two-regions.toml");

    #[test]
    fn the_shipped_two_regions_example_is_the_preset() {
        let parsed: Description =
            meridian_node::config::parse_toml(TWO_REGIONS_EXAMPLE, "two-regions.toml")
                .expect("the example parses");
        assert_eq!(parsed, Description::preset(Preset::TwoRegions));
    }

    #[test]
    fn a_description_round_trips_through_its_file_text() {
        for preset in [Preset::Single, Preset::Replicated, Preset::TwoRegions] {
            let description = Description::preset(preset);
            let text = description.to_toml().expect("serializes");
            let parsed: Description =
                meridian_node::config::parse_toml(&text, "d.toml").expect("parses");
            assert_eq!(parsed, description, "{preset:?}");
        }
    }

    /// The `[controller]` table: keys left out keep their defaults, an unknown key is refused
    /// naming it, and a description with one round-trips through its file text.
    #[test]
    fn the_controller_table_is_optional_and_checked_for_unknown_keys() {
        let base = Description::preset(Preset::Replicated);
        assert_eq!(base.controller, ControllerSettings::default());
        let text = base.to_toml().expect("serializes");
        assert!(!text.contains("[controller]"), "defaults are not written");

        let with_table =
            format!("{text}\n[controller]\nfall = 5\nauto_approve = true\ncooldown_s = 0\n");
        let parsed: Description =
            meridian_node::config::parse_toml(&with_table, "d.toml").expect("parses");
        let expected = ControllerSettings {
            fall: 5,
            auto_approve: true,
            cooldown_s: 0,
            ..ControllerSettings::default()
        };
        assert_eq!(parsed.controller, expected);
        let again: Description =
            meridian_node::config::parse_toml(&parsed.to_toml().expect("serializes"), "d.toml")
                .expect("parses");
        assert_eq!(again, parsed);

        let unknown = format!("{text}\n[controller]\nfal = 5\n");
        let error = meridian_node::config::parse_toml::<Description>(&unknown, "d.toml")
            .expect_err("unknown key");
        assert!(error.to_string().contains("fal"), "{error}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = Description::preset(Preset::Single)
            .to_toml()
            .expect("serializes")
            .replace("lease_timeout_ms", "lease_timeout");
        let error = meridian_node::config::parse_toml::<Description>(&text, "d.toml")
            .expect_err("unknown key");
        assert!(error.to_string().contains("lease_timeout"), "{error}");
    }

    #[test]
    fn the_replicated_preset_is_todays_default_shape() {
        let description = Description::preset(Preset::Replicated);
        let keys = description.node_keys();
        let names: Vec<String> = description
            .nodes(&keys)
            .iter()
            .flat_map(|node| node.replicas.iter().map(|r| r.name.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                "sequencer-a",
                "sequencer-b",
                "topology-manager-a",
                "topology-manager-b",
                "mediator-a",
                "mediator-b",
                "participant1-a",
                "participant1-b",
                "participant2-a",
                "participant2-b",
                "participant3-a",
                "participant3-b"
            ]
        );
    }
}
