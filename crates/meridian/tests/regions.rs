//! The `two-regions` deployment on real replicated PostgreSQL: the lab starts the primary, a
//! synchronous standby in the other zone and an asynchronous standby in the other region
//! (through a delaying link), the nodes run on multi-host URLs, and transfers commit while the
//! primary reports its standbys as they must be.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;

use std::time::{Duration, Instant};

use meridian_lab::deployment::{Deployment, DeploymentSpec, Description, Preset, StandbyReport};
use std::sync::atomic::Ordering;

use common::{start_deployment, start_load, EXE};

/// How long the load may take to commit its first transfers on a busy shared machine.
const FIRST_COMMITS_TIMEOUT: Duration = Duration::from_secs(60);

fn two_regions_spec(dir: &std::path::Path) -> DeploymentSpec {
    DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::new(dir.to_path_buf(), Description::preset(Preset::TwoRegions)).unwrap()
    }
}

fn report<'a>(reports: &'a [StandbyReport], server: &str) -> &'a StandbyReport {
    reports
        .iter()
        .find(|r| r.server.as_str() == server)
        .unwrap_or_else(|| panic!("no report for {server}: {reports:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_two_region_deployment_commits_on_a_primary_with_a_sync_and_an_async_standby() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = two_regions_spec(dir.path());
    let databases = spec.start_postgres().unwrap().expect("PostgreSQL clusters");
    let mut deployment: Deployment = start_deployment(&spec).await;

    // Region one's replicas list region one's servers, the primary first; region two's cold
    // replicas list only region two's server.
    let servers = databases.servers();
    let address = |name: &str| {
        servers
            .iter()
            .find(|s| s.name.as_str() == name)
            .and_then(|s| s.address)
            .unwrap()
            .to_string()
    };
    let warm_config =
        std::fs::read_to_string(dir.path().join("participant2/participant2-a.toml")).unwrap();
    let region_one_hosts = format!("{},{}", address("pg-1a"), address("pg-1b"));
    assert!(warm_config.contains(&region_one_hosts), "{warm_config}");
    assert!(!warm_config.contains(&address("pg-2a")), "{warm_config}");
    let cold_config =
        std::fs::read_to_string(dir.path().join("participant2/cold/participant2-c.toml")).unwrap();
    assert!(
        cold_config.contains(&format!("@{}/", address("pg-2a"))),
        "{cold_config}"
    );

    let load = start_load(&deployment, "regions", "regions").await;
    let deadline = Instant::now() + FIRST_COMMITS_TIMEOUT;
    while load.live.committed.load(Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "no transfer committed in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reports = tokio::task::block_in_place(|| databases.standby_reports()).unwrap();
    let sync = report(&reports, "pg-1b");
    assert!(sync.streaming && sync.sync, "{sync:?}");
    let remote = report(&reports, "pg-2a");
    assert!(remote.streaming && !remote.sync, "{remote:?}");

    let finished = load.finish().await.unwrap();
    assert!(finished.audit.audit_ok, "{:?}", finished.audit);
    assert!(finished.report.committed > 0);
    // Everything committed reached the async standby too once the load stopped.
    let async_standby = "pg-2a".into();
    tokio::task::block_in_place(|| {
        databases.wait_for_catch_up(&async_standby, Duration::from_secs(30))
    })
    .unwrap();
    deployment.stop().await.unwrap();
}
