//! The deployment as the controller sees it: every replica with its placement (region, zone,
//! warm or cold) and every database server with its role — the *inventory*, fixed for a
//! controller's lifetime and read from the deployment file — plus the *observations* the
//! runtime feeds the engine (probe outcomes, process exits, database facts). Plain data, so
//! that the engine is a function of it and the tests build it by hand.

use meridian_core::placement::{
    ClusterName, NodeKind, NodeName, RegionName, ReplicaName, ServerName, ZoneName,
};
use meridian_core::Timestamp;
use serde::{Deserialize, Serialize};

/// Whether a replica runs from the start (warm: process up, passive until it takes the lease)
/// or is only configured (cold: started by the controller when it is needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Temperature {
    Warm,
    Cold,
}

/// One replica of a node: one process, placed in a zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSpec {
    pub name: ReplicaName,
    pub node: NodeName,
    pub kind: NodeKind,
    pub region: RegionName,
    pub zone: ZoneName,
    pub temperature: Temperature,
    /// Sequencer instances are active-active: every running one serves. Every other node has
    /// one active replica at a time (the lease holder).
    pub active_active: bool,
}

/// What a database server is in its cluster, as the deployment file placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatabaseRole {
    Primary,
    SyncStandby,
    AsyncStandby,
}

/// One PostgreSQL server of the deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    pub name: ServerName,
    pub cluster: ClusterName,
    pub region: RegionName,
    pub zone: ZoneName,
    /// Its role in the deployment file; what it is now is in [`DatabaseFact`].
    pub placed_as: DatabaseRole,
}

/// A region and its zones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionSpec {
    pub name: RegionName,
    pub zones: Vec<ZoneName>,
}

/// The whole deployment: what the controller supervises.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub regions: Vec<RegionSpec>,
    /// Every replica, nodes in start order ([`NodeKind::START_ORDER`]), warm before cold.
    pub replicas: Vec<ReplicaSpec>,
    /// Empty on SQLite (each node's file is shared by its replicas on one machine).
    pub servers: Vec<ServerSpec>,
}

impl Inventory {
    pub fn replica(&self, name: &ReplicaName) -> Option<&ReplicaSpec> {
        self.replicas.iter().find(|r| &r.name == name)
    }

    pub fn region(&self, name: &RegionName) -> Option<&RegionSpec> {
        self.regions.iter().find(|r| &r.name == name)
    }

    /// Every replica of `node`.
    pub fn replicas_of<'a>(&'a self, node: &'a NodeName) -> impl Iterator<Item = &'a ReplicaSpec> {
        self.replicas.iter().filter(move |r| &r.node == node)
    }

    /// The nodes, each once, in start order.
    pub fn nodes(&self) -> Vec<&NodeName> {
        let mut nodes: Vec<&NodeName> = Vec::new();
        for replica in &self.replicas {
            if !nodes.contains(&&replica.node) {
                nodes.push(&replica.node);
            }
        }
        nodes
    }
}

/// What a replica answers as its role in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServingRole {
    Active,
    Passive,
    /// An unreplicated node or a sequencer instance: serves when ready.
    Single,
}

/// One probe of a replica's admin port: `/livez`, then `/readyz` (its reason when not ready),
/// then the role from `/status`. Each part is `None`/false when the port did not answer in
/// time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeOutcome {
    pub live: bool,
    pub ready: bool,
    /// The `/readyz` reason when not ready ("passive: the active replica is ...",
    /// "database is a standby ...").
    pub reason: Option<String>,
    pub role: Option<ServingRole>,
}

impl ProbeOutcome {
    /// No answer at all (connection refused, timeout).
    pub fn unreachable(reason: impl Into<String>) -> Self {
        Self {
            live: false,
            ready: false,
            reason: Some(reason.into()),
            role: None,
        }
    }
}

/// What a database server is now, as the runtime last read it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseFact {
    pub server: ServerName,
    pub reachable: bool,
    /// Primary (takes writes) or standby (in recovery), when reachable.
    pub role: Option<DatabaseRole>,
    /// For a standby: how far its replay is behind its primary's current WAL position, in
    /// bytes (what a region loss now would lose, for an asynchronous one).
    pub lag_bytes: Option<u64>,
    pub read_at: Timestamp,
}

/// An observation the runtime hands the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    Probe {
        replica: ReplicaName,
        outcome: ProbeOutcome,
    },
    /// A process this controller (or the one before it) started has exited. `code` is `None`
    /// when a signal ended it.
    Exited {
        replica: ReplicaName,
        code: Option<i32>,
    },
    /// The actuator could not start the replica's process at all (no process ran): its host
    /// looks unavailable. Counts as an exit for the backoff and the crash-loop limit, and the
    /// replica is not expected back, so its node's cold standby need not wait for it.
    StartFailed {
        replica: ReplicaName,
        error: String,
    },
    /// A process was started for the replica (by an effect, or found running at takeover).
    Started {
        replica: ReplicaName,
        pid: u32,
    },
    Databases(Vec<DatabaseFact>),
}
