//! Cold standby by `meridian controller`: a node with one warm and one cold replica whose warm
//! replica is gone for good (killed with SIGKILL, its config broken so that every restart
//! exits at once) has no replica left that could serve; the controller starts the cold one,
//! which takes the node's lease, and a transfer commits through it. Real binary, real
//! processes, SQLite.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::time::Duration;

use controller_common::{all_up, records, replica, ControllerProcess, NodesGuard};
use meridian_controller::api::{AuditKind, ReplicaRole};
use meridian_lab::controller::ControlledDeployment;
use meridian_lab::deployment::{Description, Preset, Standby};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_warm_replica_left_gets_its_cold_one_started() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let mut description = Description::preset(Preset::Replicated);
    description.participants[0].replicas[1].standby = Standby::Cold;
    let file = dir.path().join("deployment.toml");
    std::fs::write(&file, description.to_toml().unwrap()).unwrap();
    let file = file.to_string_lossy().into_owned();
    let controller =
        ControllerProcess::start(&data, "controller-a", &["--deployment", &file]).await;
    let status = controller
        .wait_for("up", Duration::from_secs(90), all_up)
        .await;
    assert_eq!(
        replica(&status, "participant1-b").unwrap().role,
        ReplicaRole::Cold
    );
    let deployment = ControlledDeployment::open(&data).unwrap();
    assert_eq!(deployment.pid("participant1-b"), None, "cold: not running");

    let config = deployment.config_path("participant1-a").unwrap();
    // An unknown key first: still TOML (its addresses stay readable), refused by the node.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("not_a_participant_key = 1\n{text}")).unwrap();
    let pid = deployment.pid("participant1-a").unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();

    let status = controller
        .wait_for(
            "participant1-b started and active",
            Duration::from_secs(90),
            |s| {
                replica(s, "participant1-b")
                    .is_some_and(|r| r.role == ReplicaRole::Active && r.ready)
            },
        )
        .await;
    assert!(
        records(&status, AuditKind::ColdStart, "participant1-b")
            .next()
            .is_some(),
        "a cold-start record: {:?}",
        status.events
    );
    assert!(deployment.pid("participant1-b").is_some());
    let report = deployment
        .transfers("cold-standby", Duration::from_secs(3))
        .await
        .unwrap();
    assert!(report.committed > 0, "a transfer commits: {report:?}");
}
