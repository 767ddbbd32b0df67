//! Black-box tests of "a database knows whose it is" (issue 9): a real participant process
//! pointed at a database that belongs to another node refuses to start — exit status not 0,
//! both owners and the database named — and the rightful owner keeps serving. Once on each
//! backend with participant1 started on participant2's database, and once on SQLite with a
//! participant of another deployment (another owner key) started on this one's
//! `participant1.db`.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use meridian_core::crypto::SigningKey;
use meridian_core::SynchronizerId;
use meridian_lab::deployment::{Deployment, DeploymentSpec};
use meridian_lab::launch::free_addresses;
use meridian_participant::ParticipantConfig;
use meridian_testkit::PostgresServer;

mod common;

/// A refusing participant exits at start-up, before it contacts anything: a generous bound
/// for a loaded two-core machine, far below the "runs forever" it guards against.
const REFUSAL_WITHIN: Duration = Duration::from_secs(20);
/// How long the rightful owner gets to show it is still ready afterwards.
const STILL_READY_WITHIN: Duration = Duration::from_secs(10);

/// Two unreplicated participants and one sequencer instance under `dir`, on `postgres` if
/// given.
fn spec(dir: &Path, postgres: Option<&PostgresServer>) -> DeploymentSpec {
    let mut spec = DeploymentSpec {
        exe: common::EXE.into(),
        ..DeploymentSpec::local(dir.to_path_buf(), 2).unwrap()
    };
    if let Some(server) = postgres {
        spec.use_postgres(server);
    }
    spec
}

fn participant_config(deployment: &mut Deployment, index: usize) -> ParticipantConfig {
    ParticipantConfig::load(&deployment.participants[index].config_path).unwrap()
}

/// Runs `meridian participant` with `config` (on fresh ports) until it exits, which it must
/// within [`REFUSAL_WITHIN`]; a process still running then is killed and the test fails.
async fn run_to_exit(dir: &Path, name: &str, mut config: ParticipantConfig) -> Output {
    let (grpc, admin) = free_addresses().unwrap();
    config.listen_address = grpc;
    config.admin_address = admin;
    config.replication = None;
    let path = dir.join(format!("{name}.toml"));
    meridian_node::config::write_toml(&path, &config).unwrap();
    let run = tokio::process::Command::new(common::EXE)
        .arg("participant")
        .arg("--config")
        .arg(&path)
        .kill_on_drop(true)
        .output();
    let started = std::time::Instant::now();
    match tokio::time::timeout(REFUSAL_WITHIN, run).await {
        Ok(output) => {
            eprintln!("{name} exited after {:?}", started.elapsed());
            output.unwrap()
        }
        Err(_) => {
            panic!("{name} still runs after {REFUSAL_WITHIN:?}: it did not refuse the database")
        }
    }
}

/// Asserts that `output` is a refusal at start-up naming every one of `names`.
fn assert_refused(output: &Output, names: &[&str]) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "exited successfully:\n{text}");
    let error_line = text
        .lines()
        .find(|line| line.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    eprintln!("refused as expected: {error_line}");
    assert!(error_line.contains("belongs to"), "{error_line}");
    for name in names {
        assert!(
            error_line.contains(name),
            "{error_line:?} does not name {name}"
        );
    }
    // Refused first thing: it never got as far as the topology (nor the lease and state after).
    assert!(!text.contains("topology synced"), "{text}");
}

/// participant1, configured like itself but with participant2's `[storage]`.
async fn participant1_on_participant2s_database(postgres: Option<&PostgresServer>) {
    let dir = tempfile::tempdir().unwrap();
    let mut deployment = common::start_deployment(&spec(&dir.path().join("a"), postgres)).await;
    let participant1 = participant_config(&mut deployment, 0);
    let participant2 = participant_config(&mut deployment, 1);
    let database = match &participant2.storage {
        meridian_store::StorageConfig::Sqlite { path } => path.display().to_string(),
        meridian_store::StorageConfig::Postgres { url, .. } => {
            url.rsplit('/').next().unwrap().to_owned()
        }
    };
    let synchronizer = synchronizer_of(&participant1);

    let intruder = ParticipantConfig {
        storage: participant2.storage.clone(),
        ..participant1
    };
    let output = run_to_exit(dir.path(), "participant1-on-participant2", intruder).await;
    assert_refused(
        &output,
        &[
            "participant participant1",
            "participant participant2",
            &synchronizer,
            &database,
        ],
    );
    // participant2's database was not touched: it still serves.
    deployment.participants[1]
        .wait_ready(STILL_READY_WITHIN)
        .await
        .unwrap();
    deployment.stop().await.unwrap();
}

fn synchronizer_of(config: &ParticipantConfig) -> String {
    let owner = meridian_core::crypto::PublicKey::from_hex(&config.owner_public_key).unwrap();
    SynchronizerId::of_owner(&owner).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_participant1_on_participant2s_database_refuses_to_start() {
    participant1_on_participant2s_database(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_participant1_on_participant2s_database_refuses_to_start() {
    let server = PostgresServer::start().unwrap();
    participant1_on_participant2s_database(Some(&server)).await;
}

/// Another deployment's participant1 (same id, another owner key) on this deployment's
/// `participant1.db`, as after copying a data directory between deployments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_another_deployments_participant1_refuses_this_participant1_db() {
    let dir = tempfile::tempdir().unwrap();
    let mut deployment = common::start_deployment(&spec(&dir.path().join("a"), None)).await;
    let ours = participant_config(&mut deployment, 0);
    deployment.stop().await.unwrap();

    let other_owner = SigningKey::generate().public_key();
    let theirs = ParticipantConfig {
        owner_public_key: other_owner.to_string(),
        ..ours.clone()
    };
    let output = run_to_exit(dir.path(), "other-participant1", theirs).await;
    let database = match &ours.storage {
        meridian_store::StorageConfig::Sqlite { path } => path.display().to_string(),
        meridian_store::StorageConfig::Postgres { .. } => unreachable!("an SQLite deployment"),
    };
    assert_refused(
        &output,
        &[
            &synchronizer_of(&ours),
            &SynchronizerId::of_owner(&other_owner).to_string(),
            "participant participant1",
            &database,
        ],
    );
}
