//! Bad input to `meridian controller`: a deployment file that does not match the deployment
//! running in the data directory is refused with an error naming what differs, and nothing
//! changes — no process is started, stopped or restarted, and the refused replica writes no
//! URL file. Real binary, real processes, SQLite.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use controller_common::{ControllerProcess, NodesGuard, EXE};
use meridian_lab::controller::{url_file, ControlledDeployment};
use meridian_lab::deployment::{Description, Preset};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_file_that_does_not_match_the_running_one_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let mut controller =
        ControllerProcess::start(&data, "controller-a", &["--preset", "replicated"]).await;
    controller
        .wait_for("active", Duration::from_secs(60), |s| s.controller.active)
        .await;
    let deployment = ControlledDeployment::open(&data).unwrap();
    let pids = |deployment: &ControlledDeployment| -> BTreeMap<String, Option<u32>> {
        deployment
            .replicas()
            .into_iter()
            .map(|r| {
                let pid = deployment.pid(&r);
                (r, pid)
            })
            .collect()
    };
    let before = pids(&deployment);
    assert!(
        before.values().all(Option::is_some),
        "every replica runs: {before:?}"
    );
    // No controller runs now: nothing but the refused command could change anything.
    controller.kill9();

    // The same deployment with one participant replica made cold.
    let mut other = Description::preset(Preset::Replicated);
    other.participants[1].replicas[1].standby = meridian_lab::deployment::Standby::Cold;
    let file = dir.path().join("other.toml");
    std::fs::write(&file, other.to_toml().unwrap()).unwrap();
    let output = Command::new(EXE)
        .arg("controller")
        .arg("--deployment")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "controller-b"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(stderr.contains("not the one given"), "{stderr}");
    assert!(
        stderr.contains("participants[1].replicas[1].standby: running \"warm\", given \"cold\""),
        "names the key and both values: {stderr}"
    );
    assert!(
        stderr.contains("nothing was started or changed"),
        "{stderr}"
    );
    assert!(
        !url_file(&data, "controller-b").exists(),
        "the refused replica serves nothing"
    );

    // A preset of another shape: refused too.
    let output = Command::new(EXE)
        .args(["controller", "--preset", "single", "--data-dir"])
        .arg(&data)
        .args(["--name", "controller-b"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("sequencer.instances[1]"), "{stderr}");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        pids(&deployment),
        before,
        "the same processes run, untouched"
    );
}
