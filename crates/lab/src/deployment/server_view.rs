//! One database server as a running deployment shows it, whoever runs the cluster (the lab's
//! own streaming replication in `clusters`, or Patroni in `patroni`): both produce it, so it
//! lives apart from either.

use std::net::SocketAddr;

use super::description::{ClusterName, RegionName, ServerName, ServerRole, ZoneName};

/// One server as the drills and `admin status` see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerView {
    pub cluster: ClusterName,
    pub name: ServerName,
    pub zone: ZoneName,
    pub region: RegionName,
    pub role: ServerRole,
    pub running: bool,
    pub address: Option<SocketAddr>,
}
