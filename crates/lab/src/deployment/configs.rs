//! The role configs of a deployment, built as values of the role crates' config types and
//! written with `toml::to_string`, so a renamed field is a compile error here rather than a
//! node refusing its config at run time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meridian_core::{MemberId, ParticipantId};
use meridian_mediator::MediatorConfig;
use meridian_node::config::Endpoints;
use meridian_node::replication::ReplicationConfig;
use meridian_participant::ParticipantConfig;
use meridian_sequencer::config::InstanceConfig;
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use meridian_topology::TopologyManagerConfig;

use super::description::{ReplicaName, ZoneName, MEDIATOR_NODE, TOPOLOGY_NODE};

/// `[instance] count` of every sequencer: fixed for the life of the database, and above any
/// number of instances a deployment runs.
pub const SEQUENCER_INSTANCE_COUNT: u32 = 32;
/// How often a passive replica looks at the lease: often, so that lab failovers are quick.
const LEASE_POLL_INTERVAL_MS: u64 = 50;
/// Connections of each node's PostgreSQL pool (the store's documented default).
pub const POSTGRES_POOL_CONNECTIONS: u32 = 8;

/// The mediator settings a deployment gives its mediator; tests tighten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediatorSettings {
    pub response_timeout_ms: u64,
    pub time_proof_interval_ms: u64,
}

impl Default for MediatorSettings {
    /// The role's documented defaults (docs/configuration.md).
    fn default() -> Self {
        Self {
            response_timeout_ms: 10_000,
            time_proof_interval_ms: 500,
        }
    }
}

/// The participant settings a deployment gives every participant; tests tighten them.
#[derive(Debug, Clone, Copy)]
pub struct ParticipantSettings {
    pub max_sequencing_delay_ms: u64,
    pub dedup_period_s: u64,
    pub max_dedup_period_s: u64,
    pub dedup_memory_window_s: u64,
    pub submit_timeout_ms: u64,
    pub limits: meridian_participant::LimitsConfig,
}

impl Default for ParticipantSettings {
    /// The role's documented defaults (docs/configuration.md).
    fn default() -> Self {
        Self {
            max_sequencing_delay_ms: 10_000,
            dedup_period_s: 600,
            max_dedup_period_s: 86_400,
            dedup_memory_window_s: 60,
            submit_timeout_ms: 30_000,
            limits: meridian_participant::LimitsConfig::default(),
        }
    }
}

/// Where one process listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
}

/// The `[replication]` table of one replica of a replicated node.
pub fn replication(
    replica: &ReplicaName,
    advertised: SocketAddr,
    lease_timeout_ms: u64,
) -> ReplicationConfig {
    advertised_replication(replica, crate::tls::url(advertised), lease_timeout_ms)
}

/// The `[replication]` table of a replica reached at `advertised_endpoint`, a URL rather than
/// a local address: a Kubernetes export advertises the replica's cluster DNS name.
pub fn advertised_replication(
    replica: &ReplicaName,
    advertised_endpoint: String,
    lease_timeout_ms: u64,
) -> ReplicationConfig {
    ReplicationConfig {
        replica_id: replica.to_string(),
        advertised_endpoint: Some(advertised_endpoint),
        lease_timeout_ms,
        poll_interval_ms: LEASE_POLL_INTERVAL_MS,
    }
}

/// The `[tls]` the builders below start from: explicit plaintext. A deployment replaces it
/// with the node's own certificates (`with_tls(crate::tls::node_config(..))`).
pub fn lab_tls() -> meridian_node::tls::TlsConfig {
    meridian_node::tls::TlsConfig::plaintext()
}

/// What every member (mediator, participant) shares: the owner and where the sequencer
/// instances and topology manager replicas are.
#[derive(Debug, Clone)]
pub struct MemberContext {
    pub owner_public_key: String,
    pub keys_dir: PathBuf,
    /// The warm sequencer instances' endpoints.
    pub sequencer_endpoints: Vec<String>,
    /// The cold instances' endpoints, listed after the warm ones (refused until started).
    pub cold_sequencer_endpoints: Vec<String>,
    /// Every topology manager replica's endpoint, warm ones first.
    pub topology_endpoints: Vec<String>,
    /// The JWKS every participant verifies Ledger API tokens with; `None`: an open API.
    pub ledger_auth_jwks: Option<PathBuf>,
}

impl MemberContext {
    /// The warm sequencer endpoints, then the cold ones: the same list for every member.
    fn sequencers(&self) -> Endpoints {
        Endpoints::new(warm_then_cold(
            &self.sequencer_endpoints,
            &self.cold_sequencer_endpoints,
        ))
    }

    /// The same context as a replica in `zone` sees it: every endpoint through the link
    /// from that zone ([`super::network`]).
    pub fn dialed_from(&self, network: &super::network::Network, zone: &ZoneName) -> Self {
        let dial = |endpoints: &[String]| -> Vec<String> {
            endpoints
                .iter()
                .map(|e| network.dial_url(zone, e))
                .collect()
        };
        Self {
            sequencer_endpoints: dial(&self.sequencer_endpoints),
            cold_sequencer_endpoints: dial(&self.cold_sequencer_endpoints),
            topology_endpoints: dial(&self.topology_endpoints),
            ..self.clone()
        }
    }

    fn key_file(&self, node: &str) -> PathBuf {
        self.keys_dir.join(format!("{node}.key"))
    }
}

/// `warm`, then `cold`: a member starts on a running instance and knows the cold ones for
/// when their region is started. Every member gets the same order, so that all of them send
/// to and subscribe at the same instance, and the others stay idle spares whose watermarks no
/// event waits for (see `meridian_client::sequencer`).
pub fn warm_then_cold(warm: &[String], cold: &[String]) -> Vec<String> {
    warm.iter().chain(cold).cloned().collect()
}

pub fn sequencer(
    at: Addresses,
    index: u32,
    storage: StorageConfig,
    owner_public_key: &str,
) -> SequencerConfig {
    SequencerConfig {
        admin_token_file: None,
        admin_http: Default::default(),
        listen_address: at.grpc,
        admin_address: at.admin,
        instance: InstanceConfig {
            index,
            count: SEQUENCER_INSTANCE_COUNT,
        },
        storage,
        limits: Default::default(),
        timing: Default::default(),
        admin_token: None,
        owner_public_key: Some(owner_public_key.to_owned()),
        tls: lab_tls(),
    }
}

pub fn topology_manager(
    at: Addresses,
    keys_dir: &Path,
    sequencer_endpoints: Endpoints,
    storage: StorageConfig,
    replication: Option<ReplicationConfig>,
) -> TopologyManagerConfig {
    TopologyManagerConfig {
        admin_token_file: None,
        admin_http: Default::default(),
        member_id: TOPOLOGY_NODE.to_owned(),
        owner_key_file: keys_dir.join("owner.key"),
        key_file: keys_dir.join(format!("{TOPOLOGY_NODE}.key")),
        sequencer_endpoints,
        listen_address: at.grpc,
        admin_address: at.admin,
        admin_token: None,
        storage,
        replication,
        tls: lab_tls(),
    }
}

pub fn mediator_id() -> MemberId {
    MemberId::new(MEDIATOR_NODE).expect("static member id is valid")
}

/// The mediator's config.
pub fn mediator(
    context: &MemberContext,
    admin: SocketAddr,
    settings: MediatorSettings,
    storage: StorageConfig,
    replication: Option<ReplicationConfig>,
) -> MediatorConfig {
    MediatorConfig {
        admin_token_file: None,
        admin_http: Default::default(),
        member_id: mediator_id(),
        key_file: context.key_file(MEDIATOR_NODE),
        owner_public_key: context.owner_public_key.clone(),
        sequencer_endpoints: context.sequencers(),
        topology_endpoints: Endpoints::new(context.topology_endpoints.clone()),
        admin_address: admin,
        response_timeout_ms: settings.response_timeout_ms,
        time_proof_interval_ms: settings.time_proof_interval_ms,
        storage,
        replication,
        tls: lab_tls(),
    }
}

pub fn participant(
    context: &MemberContext,
    id: &ParticipantId,
    at: Addresses,
    settings: ParticipantSettings,
    storage: StorageConfig,
    replication: Option<ReplicationConfig>,
) -> ParticipantConfig {
    ParticipantConfig {
        admin_token_file: None,
        admin_http: Default::default(),
        participant_id: id.clone(),
        key_file: context.key_file(id.as_str()),
        owner_public_key: context.owner_public_key.clone(),
        sequencer_endpoints: context.sequencers(),
        topology_endpoints: Endpoints::new(context.topology_endpoints.clone()),
        mediator_id: mediator_id(),
        listen_address: at.grpc,
        admin_address: at.admin,
        storage,
        max_sequencing_delay_ms: settings.max_sequencing_delay_ms,
        dedup_period_s: settings.dedup_period_s,
        max_dedup_period_s: settings.max_dedup_period_s,
        dedup_memory_window_s: settings.dedup_memory_window_s,
        submit_timeout_ms: settings.submit_timeout_ms,
        limits: settings.limits,
        replication,
        ledger_auth: context
            .ledger_auth_jwks
            .clone()
            .map(meridian_participant::config::LedgerAuthConfig::jwks),
        tls: lab_tls(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_start_on_a_warm_instance_and_know_the_cold_ones() {
        let warm = vec!["http://a".to_owned(), "http://b".to_owned()];
        let cold = vec!["http://c".to_owned()];
        assert_eq!(
            warm_then_cold(&warm, &cold),
            vec!["http://a", "http://b", "http://c"]
        );
    }
}
