//! The database-owner conformance suite: `claim_database` records the first node that uses a
//! database and refuses every other one, on SQLite (a temp file) and PostgreSQL (a fresh
//! database on the test binary's shared throwaway server). Each claim opens its own
//! connections, as each node process does.

use harness::{alter_database, postgres_config, Backend, OpenHarness};
use meridian_core::crypto::SigningKey;
use meridian_core::SynchronizerId;
use meridian_store::{
    claim_database, DatabaseOwner, ForeignDatabase, NodeKind, OwnerClaim, StoreError,
};
use meridian_testkit::PostgresServer;

#[macro_use]
mod harness;

/// Claims racing on one fresh database: more than the replicas a node usually has.
const RACING_CLAIMS: usize = 6;

struct Harness {
    backend: Backend,
    synchronizer: SynchronizerId,
}

impl OpenHarness for Harness {
    async fn open(backend: Backend) -> Harness {
        Harness {
            backend,
            synchronizer: new_synchronizer(),
        }
    }
}

impl Harness {
    fn owner(&self, kind: NodeKind, node: &str) -> DatabaseOwner {
        DatabaseOwner::new(kind, node, Some(self.synchronizer.clone()))
    }

    async fn claim(&self, owner: &DatabaseOwner) -> Result<OwnerClaim, StoreError> {
        claim_database(&self.backend.config, owner).await
    }

    /// Claims as `owner`, which must be refused in favour of `found`.
    async fn refused(&self, owner: &DatabaseOwner, found: &DatabaseOwner) -> ForeignDatabase {
        match self.claim(owner).await {
            Err(StoreError::ForeignDatabase(foreign)) => {
                assert_eq!(foreign.expected, *owner);
                assert_eq!(foreign.found, *found);
                *foreign
            }
            other => panic!("{owner} must be refused, got {other:?}"),
        }
    }
}

fn new_synchronizer() -> SynchronizerId {
    SynchronizerId::of_owner(&SigningKey::generate().public_key())
}

async fn the_first_claim_records_and_the_same_owner_passes_again(h: Harness) {
    let owner = h.owner(NodeKind::Participant, "participant1");
    assert_eq!(h.claim(&owner).await.expect("claim"), OwnerClaim::Recorded);
    // A restart, another replica: the same owner.
    assert_eq!(h.claim(&owner).await.expect("again"), OwnerClaim::Confirmed);
    assert_eq!(h.claim(&owner).await.expect("again"), OwnerClaim::Confirmed);
}

async fn another_node_kind_or_synchronizer_is_refused_naming_both(h: Harness) {
    let owner = h.owner(NodeKind::Participant, "participant2");
    h.claim(&owner).await.expect("claim");

    let other_node = h.owner(NodeKind::Participant, "participant1");
    let foreign = h.refused(&other_node, &owner).await;
    let message = foreign.to_string();
    for part in ["participant1", "participant2", h.synchronizer.as_str()] {
        assert!(message.contains(part), "{message:?} lacks {part}");
    }
    let database = match &h.backend.config {
        meridian_store::StorageConfig::Sqlite { path } => path.display().to_string(),
        meridian_store::StorageConfig::Postgres { .. } => {
            let url = h.backend.postgres_url().expect("postgres");
            url.rsplit('/').next().expect("database name").to_owned()
        }
    };
    assert!(message.contains(&database), "{message:?} lacks {database}");

    h.refused(&h.owner(NodeKind::Mediator, "participant2"), &owner)
        .await;
    let other_deployment = DatabaseOwner::new(
        NodeKind::Participant,
        "participant2",
        Some(new_synchronizer()),
    );
    h.refused(&other_deployment, &owner).await;
    let unowned = DatabaseOwner::new(NodeKind::Participant, "participant2", None);
    h.refused(&unowned, &owner).await;

    // Refusals change nothing: the database is still its owner's.
    assert_eq!(h.claim(&owner).await.expect("owner"), OwnerClaim::Confirmed);
}

async fn a_sequencer_without_an_owner_key_owns_its_database_too(h: Harness) {
    let open = DatabaseOwner::new(NodeKind::Sequencer, "sequencer", None);
    assert_eq!(h.claim(&open).await.expect("claim"), OwnerClaim::Recorded);
    assert_eq!(h.claim(&open).await.expect("again"), OwnerClaim::Confirmed);
    // Another deployment's sequencer, which has an owner, is refused.
    h.refused(&h.owner(NodeKind::Sequencer, "sequencer"), &open)
        .await;
}

async fn replicas_claiming_at_once_record_one_owner(h: Harness) {
    let owner = h.owner(NodeKind::Mediator, "mediator");
    let claims = futures_join(RACING_CLAIMS, |_| {
        let (config, owner) = (h.backend.config.clone(), owner.clone());
        async move { claim_database(&config, &owner).await }
    })
    .await;
    let recorded = claims
        .iter()
        .filter(|claim| matches!(claim, Ok(OwnerClaim::Recorded)))
        .count();
    let confirmed = claims
        .iter()
        .filter(|claim| matches!(claim, Ok(OwnerClaim::Confirmed)))
        .count();
    assert_eq!((recorded, confirmed), (1, RACING_CLAIMS - 1), "{claims:?}");
}

async fn different_nodes_claiming_at_once_leave_one_owner(h: Harness) {
    let owners: Vec<DatabaseOwner> = (0..RACING_CLAIMS)
        .map(|i| h.owner(NodeKind::Participant, &format!("participant{i}")))
        .collect();
    let claims = futures_join(RACING_CLAIMS, |i| {
        let (config, owner) = (h.backend.config.clone(), owners[i].clone());
        async move { claim_database(&config, &owner).await }
    })
    .await;
    let winners: Vec<usize> = (0..RACING_CLAIMS)
        .filter(|&i| matches!(claims[i], Ok(OwnerClaim::Recorded)))
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let winner = &owners[winners[0]];
    for (i, claim) in claims.iter().enumerate() {
        if i == winners[0] {
            continue;
        }
        match claim {
            Err(StoreError::ForeignDatabase(foreign)) => {
                assert_eq!(foreign.found, *winner);
                assert_eq!(foreign.expected, owners[i]);
            }
            other => panic!("{} must be refused, got {other:?}", owners[i]),
        }
    }
}

/// Runs `count` claims concurrently, each on its own task (and so its own connections).
async fn futures_join<F, Fut>(count: usize, make: F) -> Vec<Result<OwnerClaim, StoreError>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<OwnerClaim, StoreError>> + Send + 'static,
{
    let tasks: Vec<_> = (0..count).map(|i| tokio::spawn(make(i))).collect();
    let mut results = Vec::with_capacity(count);
    for task in tasks {
        results.push(task.await.expect("claim task"));
    }
    results
}

conformance!(
    "owner":
    the_first_claim_records_and_the_same_owner_passes_again,
    another_node_kind_or_synchronizer_is_refused_naming_both,
    a_sequencer_without_an_owner_key_owns_its_database_too,
    replicas_claiming_at_once_record_one_owner,
    different_nodes_claiming_at_once_leave_one_owner,
);

/// A database that knows its owner answers even when read-only (a standby promoted late, a
/// primary set read-only): the check writes nothing once the owner is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_read_only_database_still_tells_its_owner() {
    let url = PostgresServer::shared()
        .create_database("owner_read_only")
        .expect("create database");
    let config = postgres_config(&url);
    let owner = DatabaseOwner::new(
        NodeKind::Participant,
        "participant1",
        Some(new_synchronizer()),
    );
    claim_database(&config, &owner).await.expect("claim");
    alter_database(&url, "default_transaction_read_only = on");
    assert_eq!(
        claim_database(&config, &owner).await.expect("confirmed"),
        OwnerClaim::Confirmed
    );
    let other = DatabaseOwner::new(
        NodeKind::Participant,
        "participant2",
        owner.synchronizer.clone(),
    );
    assert!(matches!(
        claim_database(&config, &other).await,
        Err(StoreError::ForeignDatabase(_))
    ));
}
