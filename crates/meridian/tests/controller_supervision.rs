//! Supervision by `meridian controller`: a warm replica's process killed with SIGKILL is
//! restarted (a new pid, passive again, a `restart` record in the audit log), and a replica
//! whose process exits at once every time (its config broken after it started) is marked
//! failed after the crash-loop limit and not restarted again. Real binary, real processes,
//! SQLite, the controller's default timings.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::time::Duration;

use controller_common::{all_up, records, replica, ControllerProcess, NodesGuard};
use meridian_controller::api::{AuditKind, ReplicaRole};
use meridian_controller::settings::ControllerSettings;
use meridian_lab::controller::ControlledDeployment;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn kill9(pid: u32) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_restarted_and_a_crash_looping_one_is_marked_failed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let controller =
        ControllerProcess::start(&data, "controller-a", &["--preset", "replicated"]).await;
    controller
        .wait_for("up", Duration::from_secs(90), all_up)
        .await;
    let deployment = ControlledDeployment::open(&data).unwrap();

    // A warm passive replica crashes: restarted, passive again under a new pid.
    let old = deployment.pid("participant1-b").unwrap();
    kill9(old);
    let status = controller
        .wait_for("participant1-b restarted", Duration::from_secs(30), |s| {
            replica(s, "participant1-b").is_some_and(|r| {
                r.pid.is_some_and(|pid| pid != old) && r.role == ReplicaRole::Passive
            }) && records(s, AuditKind::Restart, "participant1-b")
                .next()
                .is_some()
        })
        .await;
    let restarted = replica(&status, "participant1-b").unwrap();
    assert!(restarted.restarts >= 1, "{restarted:?}");
    assert_eq!(deployment.pid("participant1-b"), restarted.pid);

    // A replica that exits at once every time: failed after the limit, then left alone.
    let config = deployment.config_path("participant2-b").unwrap();
    // An unknown key first: still TOML (its addresses stay readable), refused by the node.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("not_a_participant_key = 1\n{text}")).unwrap();
    kill9(deployment.pid("participant2-b").unwrap());
    let status = controller
        .wait_for("participant2-b failed", Duration::from_secs(90), |s| {
            replica(s, "participant2-b").is_some_and(|r| r.role == ReplicaRole::Failed)
        })
        .await;
    assert!(
        records(&status, AuditKind::CrashLoop, "participant2-b")
            .next()
            .is_some(),
        "a crash-loop record: {:?}",
        status.events
    );
    let failed = replica(&status, "participant2-b").unwrap().clone();
    let limit = ControllerSettings::default().crash_loop_restarts;
    assert!(failed.restarts <= limit, "{failed:?}");
    assert!(
        records(&status, AuditKind::Restart, "participant2-b").count() <= limit as usize,
        "{:?}",
        status.events
    );
    // No more restarts: three seconds on, the same count and no process.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = controller.status().await;
    let still = replica(&later, "participant2-b").unwrap();
    assert_eq!(still.role, ReplicaRole::Failed);
    assert_eq!(still.restarts, failed.restarts, "not restarted again");
    assert_eq!(deployment.pid("participant2-b"), None);
    // The rest of the deployment is untouched.
    assert_eq!(
        replica(&later, "participant1-b").unwrap().pid,
        restarted.pid,
        "the restarted replica keeps running"
    );
}
