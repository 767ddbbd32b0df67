//! The controller's [`Inventory`] of a lab deployment: every node's replicas with their
//! region, zone and temperature (the sequencer's instances active-active), and the PostgreSQL
//! servers of its clusters. A pure function of the description.

use meridian_controller::model::{
    DatabaseRole, Inventory, RegionSpec, ReplicaSpec, ServerSpec, Temperature,
};

use crate::deployment::description::{Description, NodeName, Role, ServerRole, Standby};

/// What the controller supervises in `description`: nodes in start order, each node's warm
/// replicas before its cold ones.
pub fn inventory(description: &Description) -> Inventory {
    let keys = description.node_keys();
    let mut replicas = Vec::new();
    for node in description.nodes(&keys) {
        for standby in [Standby::Warm, Standby::Cold] {
            for replica in node.replicas.iter().filter(|r| r.standby == standby) {
                let Some(region) = description.region_of(&replica.zone) else {
                    // `check` refuses a zone no region lists; nothing to place it in.
                    continue;
                };
                replicas.push(ReplicaSpec {
                    name: replica.name.clone(),
                    node: NodeName(node.name.to_owned()),
                    kind: node.role,
                    region: region.clone(),
                    zone: replica.zone.clone(),
                    temperature: match standby {
                        Standby::Warm => Temperature::Warm,
                        Standby::Cold => Temperature::Cold,
                    },
                    active_active: node.role == Role::Sequencer,
                });
            }
        }
    }
    let servers = description
        .postgres_clusters
        .iter()
        .flat_map(|cluster| {
            cluster.servers.iter().filter_map(|server| {
                Some(ServerSpec {
                    name: server.name.clone(),
                    cluster: cluster.name.clone(),
                    region: description.region_of(&server.zone)?.clone(),
                    zone: server.zone.clone(),
                    placed_as: database_role(server.role),
                })
            })
        })
        .collect();
    Inventory {
        regions: description
            .regions
            .iter()
            .map(|region| RegionSpec {
                name: region.name.clone(),
                zones: region.zones.clone(),
            })
            .collect(),
        replicas,
        servers,
    }
}

pub fn database_role(role: ServerRole) -> DatabaseRole {
    match role {
        ServerRole::Primary => DatabaseRole::Primary,
        ServerRole::SyncStandby => DatabaseRole::SyncStandby,
        ServerRole::AsyncStandby => DatabaseRole::AsyncStandby,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::description::{Backend, Preset};

    #[test]
    fn the_two_regions_preset_places_every_replica() {
        let description = Description::preset(Preset::TwoRegions);
        let inventory = inventory(&description);
        assert_eq!(inventory.regions.len(), 2);
        // 3 sequencer instances, 3 replicas of the topology manager, mediator and 3
        // participants each.
        assert_eq!(inventory.replicas.len(), 3 + 3 * 5);
        let sequencer_c = inventory
            .replica(&"sequencer-c".into())
            .expect("the cold instance");
        assert_eq!(sequencer_c.temperature, Temperature::Cold);
        assert_eq!(sequencer_c.region.as_str(), "region-2");
        assert!(sequencer_c.active_active);
        let mediator_a = inventory.replica(&"mediator-a".into()).expect("mediator-a");
        assert_eq!(
            (mediator_a.temperature, mediator_a.active_active),
            (Temperature::Warm, false)
        );
        assert_eq!(inventory.servers.len(), 3);
        // Warm before cold within each node, nodes in start order.
        let kinds: Vec<Role> = inventory.replicas.iter().map(|r| r.kind).collect();
        let mut sorted = kinds.clone();
        sorted.sort();
        assert_eq!(kinds, sorted);

        let sqlite = inventory_of_sqlite();
        assert!(sqlite.servers.is_empty());
    }

    fn inventory_of_sqlite() -> Inventory {
        inventory(&Description::preset(Preset::TwoRegions).with_backend(Backend::Sqlite))
    }
}
