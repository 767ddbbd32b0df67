//! Whether a deployment description can run, decided before anything starts. Every problem is
//! collected (not just the first) and names the file key and the value at fault, so one
//! `meridian deployment check` shows all that is wrong with a file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::description::{
    Backend, Description, NodeView, PostgresCluster, Promoter, Role, ServerRole, ZoneName,
};

/// Most nodes and replicas a one-machine deployment runs.
pub const MAX_PARTICIPANTS: usize = 16;
pub const MAX_REPLICAS: usize = 8;
const MIN_LEASE_TIMEOUT_MS: u64 = 100;
const MAX_LEASE_TIMEOUT_MS: u64 = 60_000;
/// A delay beyond this is no region on this planet; it would only stall the standby.
const MAX_CROSS_REGION_DELAY_MS: u64 = 500;
/// The longest round trip `[network]` puts on a link: twice the longest one-way delay.
const MAX_NETWORK_RTT_MS: u64 = 2 * MAX_CROSS_REGION_DELAY_MS;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DescriptionError {
    #[error("{key} = {zone:?}: no region lists this zone")]
    UnknownZone { key: String, zone: String },
    #[error("{key} = {value:?}: the name is missing")]
    MissingName { key: String, value: String },
    #[error("{key}: region {region:?} has no zones")]
    RegionWithoutZones { key: String, region: String },
    #[error("{key} = {name:?}: the {kind} name is used twice (first at {first})")]
    Duplicate {
        kind: &'static str,
        key: String,
        name: String,
        first: String,
    },
    #[error("{key}: node {node:?} has no replica")]
    NodeWithoutReplica { key: String, node: String },
    #[error("{key}: node {node:?} has no warm replica, so nothing would serve it")]
    NoWarmReplica { key: String, node: String },
    #[error("{key}: node {node:?} has {count} replicas; at most {max}")]
    TooManyReplicas {
        key: String,
        node: String,
        count: usize,
        max: usize,
    },
    #[error("participants: {count} participants; at most {max}")]
    TooManyParticipants { count: usize, max: usize },
    #[error("lease_timeout_ms = {value}: between {min} and {max}")]
    LeaseTimeout { value: u64, min: u64, max: u64 },
    #[error("{key} = {cluster:?}: no postgres_clusters entry has this name")]
    UnknownCluster { key: String, cluster: String },
    #[error("{key}: node {node:?} names no cluster and there are {clusters} (name one with `cluster = ...`)")]
    NoCluster {
        key: String,
        node: String,
        clusters: usize,
    },
    #[error(
        "storage.backend = \"sqlite\": postgres_clusters[{index}] ({cluster:?}) would not be used"
    )]
    ClustersOnSqlite { index: usize, cluster: String },
    #[error("{key}: cluster {cluster:?} has {primaries} primaries; it needs exactly one")]
    Primaries {
        key: String,
        cluster: String,
        primaries: usize,
    },
    #[error("{key}: node {node:?} has a replica in region {region:?} but cluster {cluster:?} has no server there")]
    NoDatabaseServerInRegion {
        key: String,
        node: String,
        region: String,
        cluster: String,
    },
    #[error("load_balancer: the deployment has no participant for it to front")]
    LoadBalancerWithoutParticipant,
    #[error("load_balancer.first_port = {first}: its {count} ports ({first} to {first} + {count} - 1) run past 65535")]
    LoadBalancerPortsOverflow { first: u16, count: usize },
    #[error("{key} = {port}: port {port} is already used by {first}")]
    PortInUse {
        key: String,
        port: u16,
        first: String,
    },
    #[error("{key} = 0: port 0 is not a fixed port")]
    PortZero { key: String },
    #[error(
        "{key}: sync standby {standby:?} is in zone {zone:?} with primary {primary:?}; a zone \
         loss would take both, so put it in another zone"
    )]
    SyncStandbyInPrimaryZone {
        key: String,
        standby: String,
        primary: String,
        zone: String,
    },
    #[error(
        "{key}: async standby {standby:?} is in region {region:?} with primary {primary:?}; it \
         is there for a region loss, so put it in another region (or make it a sync standby)"
    )]
    AsyncStandbyInPrimaryRegion {
        key: String,
        standby: String,
        primary: String,
        region: String,
    },
    #[error("{key} = {value}: at most {max}")]
    CrossRegionDelay { key: String, value: u64, max: u64 },
    #[error("network.{key} = {value}: at most {max}")]
    NetworkRtt {
        key: &'static str,
        value: u64,
        max: u64,
    },
    #[error(
        "{key} = {delay} (one way) disagrees with network.cross_region_rtt_ms = {rtt} (round \
         trip): the standby link between regions is one of the links [network] delays; set \
         {key} = {half}, or leave it out"
    )]
    ConflictingCrossRegionDelay {
        key: String,
        delay: u64,
        rtt: u64,
        half: String,
    },
    #[error("storage.promoter = \"patroni\": Patroni runs PostgreSQL clusters; set storage.backend = \"postgres\"")]
    PatroniWithoutPostgres,
    #[error(
        "{key}: Patroni promotes only a synchronous standby of the primary's region, and cluster \
         {cluster:?} has none (add a server with role = \"sync-standby\" in another zone)"
    )]
    PatroniWithoutSyncStandby { key: String, cluster: String },
    #[error("{key} = {name:?}: not usable as a Patroni member name: {why}")]
    PatroniMemberName {
        key: String,
        name: String,
        why: String,
    },
    /// A `[controller]` setting out of its bounds (`ControllerSettings::check`).
    #[error("controller.{key}: {problem}")]
    ControllerSetting { key: &'static str, problem: String },
}

/// All the problems of one description, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptionErrors(pub Vec<DescriptionError>);

impl fmt::Display for DescriptionErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DescriptionErrors {}

/// First owner of each name of one kind, to report duplicates with both places.
#[derive(Default)]
struct Names(BTreeMap<String, String>);

impl Names {
    fn claim(
        &mut self,
        kind: &'static str,
        key: String,
        name: &str,
        errors: &mut Vec<DescriptionError>,
    ) {
        if name.trim().is_empty() {
            errors.push(DescriptionError::MissingName {
                key,
                value: name.to_owned(),
            });
            return;
        }
        match self.0.get(name) {
            Some(first) => errors.push(DescriptionError::Duplicate {
                kind,
                key,
                name: name.to_owned(),
                first: first.clone(),
            }),
            None => {
                self.0.insert(name.to_owned(), key);
            }
        }
    }

    /// Claims the `name` field of the entry at `entry_key`, e.g. `regions[0]`.
    fn claim_name_of(
        &mut self,
        kind: &'static str,
        entry_key: &str,
        name: &str,
        errors: &mut Vec<DescriptionError>,
    ) {
        self.claim(kind, format!("{entry_key}.name"), name, errors);
    }
}

/// Every problem of `description`; empty means it can run.
pub fn check(description: &Description) -> Result<(), DescriptionErrors> {
    let mut errors = Vec::new();
    check_regions(description, &mut errors);
    let keys = description.node_keys();
    let nodes = description.nodes(&keys);
    check_nodes(description, &nodes, &mut errors);
    check_clusters(description, &nodes, &mut errors);
    check_ports(&nodes, &mut errors);
    check_load_balancer(description, &nodes, &mut errors);
    let lease = description.lease_timeout_ms;
    if !(MIN_LEASE_TIMEOUT_MS..=MAX_LEASE_TIMEOUT_MS).contains(&lease) {
        errors.push(DescriptionError::LeaseTimeout {
            value: lease,
            min: MIN_LEASE_TIMEOUT_MS,
            max: MAX_LEASE_TIMEOUT_MS,
        });
    }
    let explicit_delays =
        std::iter::once((
            "cross_region_delay_ms".to_owned(),
            description.cross_region_delay_ms,
        ))
        .chain(description.postgres_clusters.iter().enumerate().map(
            |(index, cluster)| {
                (
                    format!("postgres_clusters[{index}].cross_region_delay_ms"),
                    cluster.cross_region_delay_ms,
                )
            },
        ));
    let rtt = description.network.cross_region_rtt_ms;
    for (key, delay) in explicit_delays {
        match delay {
            Some(value) if value > MAX_CROSS_REGION_DELAY_MS => {
                errors.push(DescriptionError::CrossRegionDelay {
                    key,
                    value,
                    max: MAX_CROSS_REGION_DELAY_MS,
                });
            }
            // One delay per link: a round trip of 2 x delay agrees, anything else is refused
            // rather than one of the two silently winning.
            Some(delay) if rtt > 0 && delay.checked_mul(2) != Some(rtt) => {
                errors.push(DescriptionError::ConflictingCrossRegionDelay {
                    key,
                    delay,
                    rtt,
                    half: if rtt.is_multiple_of(2) {
                        (rtt / 2).to_string()
                    } else {
                        format!("{} (not a whole ms: leave it out)", rtt as f64 / 2.0)
                    },
                });
            }
            _ => {}
        }
    }
    for (key, value) in [
        ("cross_zone_rtt_ms", description.network.cross_zone_rtt_ms),
        ("cross_region_rtt_ms", rtt),
    ] {
        if value > MAX_NETWORK_RTT_MS {
            errors.push(DescriptionError::NetworkRtt {
                key,
                value,
                max: MAX_NETWORK_RTT_MS,
            });
        }
    }
    if let Err(setting) = description.controller.check() {
        errors.push(DescriptionError::ControllerSetting {
            key: setting.key,
            problem: setting.problem,
        });
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DescriptionErrors(errors))
    }
}

fn check_regions(description: &Description, errors: &mut Vec<DescriptionError>) {
    let mut regions = Names::default();
    let mut zones = Names::default();
    for (index, region) in description.regions.iter().enumerate() {
        let key = format!("regions[{index}]");
        regions.claim_name_of("region", &key, region.name.as_str(), errors);
        if region.zones.is_empty() {
            errors.push(DescriptionError::RegionWithoutZones {
                key: format!("{key}.zones"),
                region: region.name.to_string(),
            });
        }
        for (zone_index, zone) in region.zones.iter().enumerate() {
            zones.claim(
                "zone",
                format!("{key}.zones[{zone_index}]"),
                zone.as_str(),
                errors,
            );
        }
    }
}

fn check_nodes(
    description: &Description,
    nodes: &[NodeView<'_>],
    errors: &mut Vec<DescriptionError>,
) {
    if description.participants.len() > MAX_PARTICIPANTS {
        errors.push(DescriptionError::TooManyParticipants {
            count: description.participants.len(),
            max: MAX_PARTICIPANTS,
        });
    }
    let mut node_names = Names::default();
    let mut replica_names = Names::default();
    for node in nodes {
        let replicas_key = replicas_key(node);
        if node.role == Role::Participant {
            node_names.claim_name_of("node", node.key, node.name, errors);
        } else {
            node_names.claim("node", node.key.to_owned(), node.name, errors);
        }
        if node.replicas.is_empty() {
            errors.push(DescriptionError::NodeWithoutReplica {
                key: replicas_key.clone(),
                node: node.name.to_owned(),
            });
        } else if node.warm().next().is_none() {
            errors.push(DescriptionError::NoWarmReplica {
                key: replicas_key.clone(),
                node: node.name.to_owned(),
            });
        }
        if node.replicas.len() > MAX_REPLICAS {
            errors.push(DescriptionError::TooManyReplicas {
                key: replicas_key.clone(),
                node: node.name.to_owned(),
                count: node.replicas.len(),
                max: MAX_REPLICAS,
            });
        }
        check_placed(
            description,
            "replica",
            &replicas_key,
            node.replicas.iter().map(|r| (r.name.as_str(), &r.zone)),
            &mut replica_names,
            errors,
        );
    }
}

/// Checks each of a list of things placed in a zone (node replicas or database servers):
/// its name is unique among its `kind` ("replica" or "server") and its zone is one of a
/// region's. `list_key` is where the list is in the description, e.g. `mediator.replicas`.
fn check_placed<'a>(
    description: &Description,
    kind: &'static str,
    list_key: &str,
    placed: impl IntoIterator<Item = (&'a str, &'a ZoneName)>,
    names: &mut Names,
    errors: &mut Vec<DescriptionError>,
) {
    for (index, (name, zone)) in placed.into_iter().enumerate() {
        let key = format!("{list_key}[{index}]");
        names.claim_name_of(kind, &key, name, errors);
        if description.region_of(zone).is_none() {
            errors.push(DescriptionError::UnknownZone {
                key: format!("{key}.zone"),
                zone: zone.to_string(),
            });
        }
    }
}

/// `sequencer.instances`, `mediator.replicas`, `participants[2].replicas`.
pub fn replicas_key(node: &NodeView<'_>) -> String {
    match node.role {
        Role::Sequencer => format!("{}.instances", node.key),
        _ => format!("{}.replicas", node.key),
    }
}

fn check_clusters(
    description: &Description,
    nodes: &[NodeView<'_>],
    errors: &mut Vec<DescriptionError>,
) {
    if description.storage.backend == Backend::Sqlite {
        if description.storage.promoter == Promoter::Patroni {
            errors.push(DescriptionError::PatroniWithoutPostgres);
        }
        for (index, cluster) in description.postgres_clusters.iter().enumerate() {
            errors.push(DescriptionError::ClustersOnSqlite {
                index,
                cluster: cluster.name.to_string(),
            });
        }
        return;
    }
    let mut cluster_names = Names::default();
    let mut server_names = Names::default();
    for (index, cluster) in description.postgres_clusters.iter().enumerate() {
        let key = format!("postgres_clusters[{index}]");
        cluster_names.claim_name_of("cluster", &key, cluster.name.as_str(), errors);
        let primaries = cluster
            .servers
            .iter()
            .filter(|s| s.role == ServerRole::Primary)
            .count();
        if primaries != 1 {
            errors.push(DescriptionError::Primaries {
                key: format!("{key}.servers"),
                cluster: cluster.name.to_string(),
                primaries,
            });
        }
        check_placed(
            description,
            "server",
            &format!("{key}.servers"),
            cluster.servers.iter().map(|s| (s.name.as_str(), &s.zone)),
            &mut server_names,
            errors,
        );
        check_standby_placement(description, &key, cluster, errors);
        if description.storage.promoter == Promoter::Patroni {
            check_patroni_cluster(&key, cluster, errors);
        }
    }
    for node in nodes {
        check_node_cluster(description, node, errors);
    }
}

/// Patroni needs a synchronous standby to promote (it promotes no other in synchronous
/// mode), and each server becomes a member whose name is also a replication slot's.
fn check_patroni_cluster(key: &str, cluster: &PostgresCluster, errors: &mut Vec<DescriptionError>) {
    if !cluster
        .servers
        .iter()
        .any(|s| s.role == ServerRole::SyncStandby)
    {
        errors.push(DescriptionError::PatroniWithoutSyncStandby {
            key: format!("{key}.servers"),
            cluster: cluster.name.to_string(),
        });
    }
    for (index, server) in cluster.servers.iter().enumerate() {
        if let Err(error) = super::patroni::member_name(&server.name) {
            errors.push(DescriptionError::PatroniMemberName {
                key: format!("{key}.servers[{index}].name"),
                name: server.name.to_string(),
                why: error.to_string(),
            });
        }
    }
}

/// A sync standby is for a zone loss, so it must not share the primary's zone; an async
/// standby is for a region loss, so it must not share the primary's region. (Servers in
/// unknown zones are reported by `check_placed` already.)
fn check_standby_placement(
    description: &Description,
    key: &str,
    cluster: &PostgresCluster,
    errors: &mut Vec<DescriptionError>,
) {
    let mut primaries = cluster
        .servers
        .iter()
        .filter(|s| s.role == ServerRole::Primary);
    let (Some(primary), None) = (primaries.next(), primaries.next()) else {
        return;
    };
    // By position, not name: a region name used twice is reported on its own.
    let region_index = |zone: &ZoneName| {
        description
            .regions
            .iter()
            .position(|region| region.zones.contains(zone))
    };
    let primary_region = region_index(&primary.zone);
    for (index, server) in cluster.servers.iter().enumerate() {
        let key = format!("{key}.servers[{index}]");
        match server.role {
            ServerRole::SyncStandby if server.zone == primary.zone => {
                errors.push(DescriptionError::SyncStandbyInPrimaryZone {
                    key,
                    standby: server.name.to_string(),
                    primary: primary.name.to_string(),
                    zone: server.zone.to_string(),
                });
            }
            ServerRole::AsyncStandby => match (region_index(&server.zone), primary_region) {
                (Some(region), Some(primary_region)) if region == primary_region => {
                    errors.push(DescriptionError::AsyncStandbyInPrimaryRegion {
                        key,
                        standby: server.name.to_string(),
                        primary: primary.name.to_string(),
                        region: description.regions[region].name.to_string(),
                    });
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// The node's cluster exists and has a server in every region the node has a replica in.
fn check_node_cluster(
    description: &Description,
    node: &NodeView<'_>,
    errors: &mut Vec<DescriptionError>,
) {
    let Some(cluster) = description.cluster_of(node) else {
        match node.cluster {
            Some(name) => errors.push(DescriptionError::UnknownCluster {
                key: format!("{}.cluster", node.key),
                cluster: name.to_string(),
            }),
            None => errors.push(DescriptionError::NoCluster {
                key: node.key.to_owned(),
                node: node.name.to_owned(),
                clusters: description.postgres_clusters.len(),
            }),
        }
        return;
    };
    let served: BTreeSet<_> = cluster
        .servers
        .iter()
        .filter_map(|server| description.region_of(&server.zone))
        .collect();
    let mut reported = BTreeSet::new();
    for (index, replica) in node.replicas.iter().enumerate() {
        let Some(region) = description.region_of(&replica.zone) else {
            continue;
        };
        if !served.contains(region) && reported.insert(region) {
            errors.push(DescriptionError::NoDatabaseServerInRegion {
                key: format!("{}[{index}].zone", replicas_key(node)),
                node: node.name.to_owned(),
                region: region.to_string(),
                cluster: cluster.name.to_string(),
            });
        }
    }
}

/// The load balancer has something to front, and its own ports (when fixed) clash with no
/// replica's.
fn check_load_balancer(
    description: &Description,
    nodes: &[NodeView<'_>],
    errors: &mut Vec<DescriptionError>,
) {
    let Some(load_balancer) = &description.load_balancer else {
        return;
    };
    if description.participants.is_empty() {
        errors.push(DescriptionError::LoadBalancerWithoutParticipant);
    }
    let Some(first) = load_balancer.first_port else {
        return;
    };
    let count = 1 + description.participants.len();
    let ports: Vec<(u16, String)> = std::iter::once("the sequencer".to_owned())
        .chain(description.participants.iter().map(|p| p.name.to_string()))
        .enumerate()
        .filter_map(|(offset, node)| {
            let port = load_balancer.fixed_port(offset)?;
            Some((
                port,
                format!("load_balancer.first_port + {offset} ({node}'s frontend)"),
            ))
        })
        .collect();
    if ports.len() < count || first == 0 {
        errors.push(DescriptionError::LoadBalancerPortsOverflow { first, count });
        return;
    }
    let owners = replica_ports(nodes);
    for (port, key) in ports {
        if let Some(first) = owners.get(&port) {
            errors.push(DescriptionError::PortInUse {
                key,
                port,
                first: first.clone(),
            });
        }
    }
}

/// Every fixed port of every replica, with the key that sets it.
fn replica_ports(nodes: &[NodeView<'_>]) -> BTreeMap<u16, String> {
    let mut owners = BTreeMap::new();
    for node in nodes {
        for (index, replica) in node.replicas.iter().enumerate() {
            let Some(ports) = replica.ports else {
                continue;
            };
            let key = format!("{}[{index}].ports", replicas_key(node));
            let grpc = (node.role != Role::Mediator).then_some(("grpc", ports.grpc));
            for (kind, port) in grpc.into_iter().chain([("admin", ports.admin)]) {
                owners
                    .entry(port)
                    .or_insert_with(|| format!("{key}.{kind} ({})", replica.name));
            }
        }
    }
    owners
}

/// No two processes (warm or cold: a cold one starts later on the same machine) share a port.
fn check_ports(nodes: &[NodeView<'_>], errors: &mut Vec<DescriptionError>) {
    let mut owners: BTreeMap<u16, String> = BTreeMap::new();
    for node in nodes {
        for (index, replica) in node.replicas.iter().enumerate() {
            let Some(ports) = replica.ports else {
                continue;
            };
            let key = format!("{}[{index}].ports", replicas_key(node));
            // The mediator serves no gRPC, so only its admin port is taken.
            let mut used = vec![("admin", ports.admin)];
            if node.role != Role::Mediator {
                used.insert(0, ("grpc", ports.grpc));
            }
            for (kind, port) in used {
                let key = format!("{key}.{kind}");
                if port == 0 {
                    errors.push(DescriptionError::PortZero { key });
                    continue;
                }
                match owners.get(&port) {
                    Some(first) => errors.push(DescriptionError::PortInUse {
                        key,
                        port,
                        first: first.clone(),
                    }),
                    None => {
                        owners.insert(port, format!("{key} ({})", replica.name));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::{NodePorts, Preset, Standby};

    fn two_regions() -> Description {
        Description::preset(Preset::TwoRegions)
    }

    /// The messages of every error of `description`.
    fn errors(description: &Description) -> Vec<String> {
        match check(description) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn only_error(description: &Description) -> String {
        let errors = errors(description);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        errors[0].clone()
    }

    #[test]
    fn every_preset_can_run() {
        for preset in [Preset::Single, Preset::Replicated, Preset::TwoRegions] {
            let description = Description::preset(preset);
            assert_eq!(errors(&description), Vec::<String>::new(), "{preset:?}");
            for backend in [Backend::Sqlite, Backend::Postgres] {
                let switched = description.clone().with_backend(backend);
                assert_eq!(
                    errors(&switched),
                    Vec::<String>::new(),
                    "{preset:?} {backend:?}"
                );
            }
        }
    }

    #[test]
    fn a_replica_in_an_unknown_zone_is_refused_naming_key_and_zone() {
        let mut description = two_regions();
        description.mediator.replicas[1].zone = "zone-9z".into();
        assert_eq!(
            only_error(&description),
            "mediator.replicas[1].zone = \"zone-9z\": no region lists this zone"
        );
    }

    #[test]
    fn a_database_server_in_an_unknown_zone_is_refused() {
        let mut description = two_regions();
        description.postgres_clusters[0].servers[1].zone = "zone-3a".into();
        let message = only_error(&description);
        assert!(
            message.starts_with("postgres_clusters[0].servers[1].zone = \"zone-3a\""),
            "{message}"
        );
    }

    #[test]
    fn a_replica_without_a_zone_is_refused_by_the_parser_naming_the_key() {
        let mut text = two_regions().to_toml().expect("serializes");
        text = text.replacen("zone = \"zone-1a\"\n", "", 1);
        let error = meridian_node::config::parse_toml::<Description>(&text, "d.toml")
            .expect_err("a replica without a zone");
        let message = error.to_string();
        assert!(message.contains("zone"), "{message}");
    }

    #[test]
    fn a_region_without_zones_is_refused() {
        let mut description = Description::preset(Preset::Single);
        description
            .regions
            .push(crate::deployment::description::Region {
                name: "region-2".into(),
                zones: Vec::new(),
            });
        assert_eq!(
            only_error(&description),
            "regions[1].zones: region \"region-2\" has no zones"
        );
    }

    #[test]
    fn duplicate_names_are_refused_with_both_places() {
        let mut description = two_regions();
        description.regions[1].name = "region-1".into();
        assert_eq!(
            only_error(&description),
            "regions[1].name = \"region-1\": the region name is used twice (first at regions[0].name)"
        );

        let mut description = two_regions();
        description.regions[1].zones[1] = "zone-1b".into();
        // The replicas placed in zone-2b are now in no zone, which is reported too.
        assert!(errors(&description)[0].starts_with(
            "regions[1].zones[1] = \"zone-1b\": the zone name is used twice (first at regions[0].zones[1])"
        ));

        let mut description = two_regions();
        description.participants[2].name = "participant1".into();
        let errors = errors(&description);
        assert!(
            errors.contains(
                &"participants[2].name = \"participant1\": the node name is used twice (first at participants[0].name)"
                    .to_owned()
            ),
            "{errors:#?}"
        );

        let mut description = two_regions();
        description.mediator.replicas[1].name = "mediator-a".into();
        assert_eq!(
            only_error(&description),
            "mediator.replicas[1].name = \"mediator-a\": the replica name is used twice (first at mediator.replicas[0].name)"
        );

        let mut description = two_regions();
        description.postgres_clusters[0].servers[2].name = "pg-1a".into();
        assert_eq!(
            only_error(&description),
            "postgres_clusters[0].servers[2].name = \"pg-1a\": the server name is used twice (first at postgres_clusters[0].servers[0].name)"
        );
    }

    #[test]
    fn a_node_without_a_replica_is_refused() {
        let mut description = two_regions();
        description.participants[1].replicas.clear();
        assert_eq!(
            only_error(&description),
            "participants[1].replicas: node \"participant2\" has no replica"
        );
        let mut description = two_regions();
        description.sequencer.instances.clear();
        assert_eq!(
            only_error(&description),
            "sequencer.instances: node \"sequencer\" has no replica"
        );
    }

    #[test]
    fn a_node_with_only_cold_replicas_is_refused() {
        let mut description = two_regions();
        for replica in &mut description.topology_manager.replicas {
            replica.standby = Standby::Cold;
        }
        assert!(only_error(&description).contains("has no warm replica"));
    }

    #[test]
    fn a_region_without_a_database_server_for_a_replica_there_is_refused() {
        let mut description = two_regions();
        description.postgres_clusters[0].servers.pop();
        let errors = errors(&description);
        // Every node has its cold replica in region two.
        assert_eq!(errors.len(), 3 + 3, "{errors:#?}");
        assert!(
            errors.contains(
                &"participants[1].replicas[2].zone: node \"participant2\" has a replica in region \"region-2\" but cluster \"main\" has no server there"
                    .to_owned()
            ),
            "{errors:#?}"
        );
    }

    #[test]
    fn a_sync_standby_in_the_primarys_zone_is_refused_naming_both_servers() {
        let mut description = two_regions();
        description.postgres_clusters[0].servers[1].zone = "zone-1a".into();
        assert_eq!(
            only_error(&description),
            "postgres_clusters[0].servers[1]: sync standby \"pg-1b\" is in zone \"zone-1a\" \
             with primary \"pg-1a\"; a zone loss would take both, so put it in another zone"
        );
        // The same standby in the other zone of the region is what the preset does.
        description.postgres_clusters[0].servers[1].zone = "zone-1b".into();
        assert_eq!(errors(&description), Vec::<String>::new());
    }

    #[test]
    fn an_async_standby_in_the_primarys_region_is_refused_naming_both_servers() {
        let mut description = two_regions();
        // Another zone, but the primary's region: a region loss would take it too. (Region
        // two is left without a server, which is reported too.)
        description.postgres_clusters[0].servers[2].zone = "zone-1b".into();
        let message = errors(&description)[0].clone();
        assert!(
            message.starts_with(
                "postgres_clusters[0].servers[2]: async standby \"pg-2a\" is in region \
                 \"region-1\" with primary \"pg-1a\""
            ),
            "{message}"
        );
    }

    /// `[network]`: bounded round trips, and a `cross_region_delay_ms` that is not half the
    /// cross-region round trip is refused (naming both keys) instead of one silently winning.
    #[test]
    fn network_round_trips_are_bounded_and_agree_with_the_standby_delay() {
        let mut description = two_regions();
        description.network.cross_region_rtt_ms = 20;
        description.network.cross_zone_rtt_ms = 1;
        assert_eq!(errors(&description), Vec::<String>::new());
        assert_eq!(
            description.standby_link_delay_ms(),
            10,
            "half the round trip"
        );
        description.cross_region_delay_ms = Some(10);
        assert_eq!(errors(&description), Vec::<String>::new(), "agrees");
        description.cross_region_delay_ms = Some(5);
        assert_eq!(
            only_error(&description),
            "cross_region_delay_ms = 5 (one way) disagrees with network.cross_region_rtt_ms = \
             20 (round trip): the standby link between regions is one of the links [network] \
             delays; set cross_region_delay_ms = 10, or leave it out"
        );
        description.cross_region_delay_ms = None;
        description.postgres_clusters[0].cross_region_delay_ms = Some(300);
        assert!(
            only_error(&description).starts_with(
                "postgres_clusters[0].cross_region_delay_ms = 300 (one way) disagrees"
            ),
            "a cluster's own delay too"
        );
        description.postgres_clusters[0].cross_region_delay_ms = None;
        description.network.cross_zone_rtt_ms = 1001;
        assert_eq!(
            only_error(&description),
            "network.cross_zone_rtt_ms = 1001: at most 1000"
        );
        // Without [network] nothing changes: today's 5 ms standby link.
        let plain = two_regions();
        assert_eq!(plain.standby_link_delay_ms(), 5);
    }

    #[test]
    fn a_cross_region_delay_beyond_the_bound_is_refused() {
        let mut description = two_regions();
        description.cross_region_delay_ms = Some(0);
        assert_eq!(errors(&description), Vec::<String>::new(), "0 is allowed");
        description.cross_region_delay_ms = Some(501);
        assert_eq!(
            only_error(&description),
            "cross_region_delay_ms = 501: at most 500"
        );
        description.cross_region_delay_ms = Some(5);
        description.postgres_clusters[0].cross_region_delay_ms = Some(900);
        assert_eq!(
            only_error(&description),
            "postgres_clusters[0].cross_region_delay_ms = 900: at most 500"
        );
    }

    #[test]
    fn patroni_runs_the_two_region_preset_and_refuses_what_it_cannot_run() {
        let mut description = two_regions();
        description.storage.promoter = Promoter::Patroni;
        assert_eq!(errors(&description), Vec::<String>::new());

        let mut no_sync = description.clone();
        no_sync.postgres_clusters[0]
            .servers
            .retain(|s| s.role != ServerRole::SyncStandby);
        assert_eq!(
            only_error(&no_sync),
            "postgres_clusters[0].servers: Patroni promotes only a synchronous standby of the \
             primary's region, and cluster \"main\" has none (add a server with role = \
             \"sync-standby\" in another zone)"
        );

        let mut bad_name = description.clone();
        bad_name.postgres_clusters[0].servers[1].name = "PG 1b".into();
        let error = only_error(&bad_name);
        assert!(
            error.starts_with(
                "postgres_clusters[0].servers[1].name = \"PG 1b\": not usable as a Patroni member name"
            ),
            "{error}"
        );

        let mut on_sqlite = Description::preset(Preset::Replicated);
        on_sqlite.storage.promoter = Promoter::Patroni;
        assert_eq!(
            only_error(&on_sqlite),
            "storage.promoter = \"patroni\": Patroni runs PostgreSQL clusters; set storage.backend = \"postgres\""
        );
    }

    #[test]
    fn an_unknown_cluster_is_refused() {
        let mut description = two_regions();
        description.mediator.cluster = Some("other".into());
        assert_eq!(
            only_error(&description),
            "mediator.cluster = \"other\": no postgres_clusters entry has this name"
        );
    }

    #[test]
    fn a_port_used_twice_is_refused_naming_both() {
        let mut description = two_regions();
        description.participants[0].replicas[0].ports = Some(NodePorts::new(24501, 24601));
        description.sequencer.instances[1].ports = Some(NodePorts::new(24601, 24701));
        assert_eq!(
            only_error(&description),
            "participants[0].replicas[0].ports.admin = 24601: port 24601 is already used by sequencer.instances[1].ports.grpc (sequencer-b)"
        );
    }

    #[test]
    fn the_load_balancers_ports_and_participants_are_checked() {
        let mut description = two_regions();
        description.load_balancer = Some(crate::deployment::description::LoadBalancer {
            first_port: Some(24600),
            ..Default::default()
        });
        description.participants[1].replicas[1].ports = Some(NodePorts::new(24602, 24700));
        assert_eq!(
            only_error(&description),
            "load_balancer.first_port + 2 (participant2's frontend) = 24602: port 24602 is already used by participants[1].replicas[1].ports.grpc (participant2-b)"
        );
        description.participants[1].replicas[1].ports = None;
        description.load_balancer = Some(crate::deployment::description::LoadBalancer {
            first_port: Some(65534),
            ..Default::default()
        });
        assert_eq!(
            only_error(&description),
            "load_balancer.first_port = 65534: its 4 ports (65534 to 65534 + 4 - 1) run past 65535"
        );
        description.load_balancer = Some(Default::default());
        description.participants.clear();
        let errors = check(&description).expect_err("no participant").to_string();
        assert!(
            errors.contains("load_balancer: the deployment has no participant for it to front"),
            "{errors}"
        );
    }

    #[test]
    fn a_controller_setting_out_of_bounds_is_refused_naming_the_key() {
        let mut description = two_regions();
        description.controller.probe_interval_ms = 5;
        assert_eq!(
            only_error(&description),
            "controller.probe_interval_ms: 5 is outside 10..=60000"
        );
        description.controller.probe_interval_ms = 100;
        description.controller.restart_backoff_max_ms = 100;
        assert_eq!(
            only_error(&description),
            "controller.restart_backoff_max_ms: 100 is outside 200..=3600000"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut description = two_regions();
        description.mediator.replicas[0].zone = "nowhere".into();
        description.participants[0].replicas.clear();
        description.lease_timeout_ms = 0;
        assert_eq!(errors(&description).len(), 3);
    }
}
