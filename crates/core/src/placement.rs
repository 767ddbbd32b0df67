//! Where things run: the names of regions, zones, nodes, replicas and database servers, and
//! the kinds of node. The deployment file, the lab and the controller all speak of placement,
//! so the names live here, below all of them, as distinct types: a zone is never passed where
//! a replica is meant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declares a name newtype: a string in the file, a distinct type in the code so that a zone
/// is never passed where a replica is meant.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(name.to_owned())
            }
        }
    };
}

name_type!(
    /// A region: a group of zones far enough apart to fail independently.
    RegionName
);
name_type!(
    /// A zone (a failure domain inside a region); zone names are unique across regions.
    ZoneName
);
name_type!(
    /// A node's name: its directory, database and member name (`participant2`).
    NodeName
);
name_type!(
    /// One process of a node (`participant2-a`, `sequencer-b`).
    ReplicaName
);
name_type!(
    /// A PostgreSQL cluster: one primary and its standbys.
    ClusterName
);
name_type!(
    /// One PostgreSQL server of a cluster.
    ServerName
);

/// What a node does, which decides how it is configured and started, and the order a
/// deployment starts its nodes in (each kind needs the ones before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    Sequencer,
    TopologyManager,
    Mediator,
    Participant,
}

impl NodeKind {
    /// Every kind, in start order.
    pub const START_ORDER: [NodeKind; 4] = [
        NodeKind::Sequencer,
        NodeKind::TopologyManager,
        NodeKind::Mediator,
        NodeKind::Participant,
    ];

    /// The `meridian` subcommand that runs it.
    pub fn command(self) -> &'static str {
        match self {
            NodeKind::Sequencer => "sequencer",
            NodeKind::TopologyManager => "topology",
            NodeKind::Mediator => "mediator",
            NodeKind::Participant => "participant",
        }
    }
}
