//! Black-box test of fork detection and its repair (issue 10, item 6), played without
//! replication, exactly as an asynchronous region loss leaves the databases: a deployment on
//! SQLite commits transfers and stops; the sequencer's, mediator's and topology manager's
//! database files are copied; it starts again, commits more and stops; the copies are put
//! back (the participants keep their later state). On the next start every participant must
//! halt with the alarm (`/readyz` reason, `meridian_fork_detected 1`, process alive) and list
//! exactly the transactions committed after the copy; then the repair procedure of
//! docs/operations.md ("Fork after a region loss") is followed step by step, after which the
//! participants are ready again, the lost commands resubmitted with their command ids commit,
//! and new transfers commit.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meridian_client::SubmitOutcome;
use meridian_core::ledger::{Command, Contract};
use meridian_core::{CommandId, PartyId, UserId};
use meridian_lab::deployment::{Deployment, DeploymentSpec};
use meridian_lab::workload::Parties;

mod common;
use common::{admin_metrics, admin_status, iou_create, party, transfer, EXE};

/// How long the participants get to detect the fork after the restart.
const DETECTION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a participant gets to be ready again after the repair (it replays).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

fn acting_for(name: &str) -> BTreeSet<PartyId> {
    BTreeSet::from([party(name)])
}

/// A command the test submits: on which participant (0-based), acting for whom.
struct Submitted {
    participant: usize,
    actor: &'static str,
    command_id: &'static str,
    command: Command,
}

/// Submits and waits; panics unless it commits. Returns (transaction id, created contracts).
async fn commit(parties: &Parties, submitted: &Submitted) -> (String, Vec<Contract>) {
    let outcome = parties.clients[submitted.participant]
        .submit_and_wait(
            &CommandId::new(submitted.command_id).unwrap(),
            &acting_for(submitted.actor),
            std::slice::from_ref(&submitted.command),
        )
        .await
        .unwrap();
    match outcome {
        SubmitOutcome::Committed(committed) => (committed.transaction_id, committed.created),
        other => panic!("{} did not commit: {other:?}", submitted.command_id),
    }
}

/// Waits until alice's participant (2) has `contract` active, so her next command finds it.
async fn visible_to_alice(parties: &Parties, contract: &Contract) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, active) = parties.clients[1]
            .active_contracts(&acting_for("alice"))
            .await
            .unwrap();
        if active.iter().any(|c| c.id == contract.id) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} never reached alice",
            contract.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The database files of every node but the participants: `<dir>/<node>/*.db*`.
fn shared_history_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for node in std::fs::read_dir(dir).unwrap() {
        let node = node.unwrap().path();
        let name = node.file_name().unwrap().to_string_lossy().into_owned();
        if !node.is_dir() || name.starts_with("participant") || name == "snapshot" {
            continue;
        }
        for file in std::fs::read_dir(&node).unwrap() {
            let file = file.unwrap().path();
            if file.to_string_lossy().contains(".db") {
                files.push(file);
            }
        }
    }
    files.sort();
    files
}

/// Copies the files to `<dir>/snapshot/`, keeping their path below `dir`.
fn snapshot(dir: &Path, files: &[PathBuf]) {
    for file in files {
        let target = dir.join("snapshot").join(file.strip_prefix(dir).unwrap());
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(file, target).unwrap();
    }
}

/// Puts the snapshot back: the current files of those nodes go, the copies return.
fn restore(dir: &Path, snapshotted: &[PathBuf]) {
    for file in shared_history_files(dir) {
        std::fs::remove_file(file).unwrap();
    }
    for file in snapshotted {
        let copy = dir.join("snapshot").join(file.strip_prefix(dir).unwrap());
        std::fs::copy(copy, file).unwrap();
    }
}

/// Runs `meridian admin ARGS...`; returns (success, stdout, stderr).
fn admin(args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(EXE)
        .arg("admin")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `/readyz` of participant `index`: (ready, body); not ready while its admin port is not up.
async fn readyz(http: &reqwest::Client, deployment: &Deployment, index: usize) -> (bool, String) {
    let address = deployment.participants[index].admin_address;
    match http
        .get(format!("{}/readyz", meridian_lab::tls::url(address)))
        .send()
        .await
    {
        Ok(response) => {
            let ready = response.status().is_success();
            (ready, response.text().await.unwrap_or_default())
        }
        Err(error) => (false, format!("no answer: {error}")),
    }
}

/// A three-participant deployment on SQLite in `dir`, the test's user, and an HTTP client for
/// the admin endpoints.
fn setup(dir: &Path) -> (DeploymentSpec, UserId, reqwest::Client) {
    let spec = DeploymentSpec {
        exe: EXE.into(),
        ..DeploymentSpec::local(dir.to_path_buf(), 3).unwrap()
    };
    let user = UserId::new("test").unwrap();
    let http = meridian_lab::tls::http_builder()
        .unwrap()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    (spec, user, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_ahead_of_the_restored_history_halts_lists_its_losses_and_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (spec, user, http) = setup(dir);

    // Round 1, the history both sides keep: two IOUs for alice, one transferred to bob.
    let mut deployment = common::start_deployment(&spec).await;
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    let mut ious = Vec::new();
    for (command_id, amount) in [("r1-issue-a", 10), ("r1-issue-b", 20)] {
        let submitted = Submitted {
            participant: 0,
            actor: "bank",
            command_id,
            command: iou_create("alice", amount),
        };
        let (_, created) = commit(&parties, &submitted).await;
        visible_to_alice(&parties, &created[0]).await;
        ious.push(created[0].clone());
    }
    commit(
        &parties,
        &Submitted {
            participant: 1,
            actor: "alice",
            command_id: "r1-transfer",
            command: transfer(&ious[0], "bob"),
        },
    )
    .await;
    deployment.stop().await.unwrap();
    let history_files = shared_history_files(dir);
    assert!(
        history_files
            .iter()
            .any(|f| f.to_string_lossy().contains("sequencer")),
        "{history_files:?}"
    );
    snapshot(dir, &history_files);

    // Round 2, what the "promoted standby" will lack: a new IOU and alice's second transfer.
    let mut deployment = common::start_deployment(&spec).await;
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    let lost = [
        Submitted {
            participant: 0,
            actor: "bank",
            command_id: "r2-issue",
            command: iou_create("alice", 30),
        },
        Submitted {
            participant: 1,
            actor: "alice",
            command_id: "r2-transfer",
            command: transfer(&ious[1], "bob"),
        },
    ];
    let mut lost_ids = BTreeSet::new();
    for submitted in &lost {
        let (transaction_id, created) = commit(&parties, submitted).await;
        if submitted.command_id == "r2-issue" {
            visible_to_alice(&parties, &created[0]).await;
        }
        lost_ids.insert(transaction_id);
    }
    deployment.stop().await.unwrap();
    restore(dir, &history_files);

    // The restart after the "region loss": the rest of the synchronizer is ready, every
    // participant halts on the fork and stays up to show it.
    let exe = deployment.exe().to_path_buf();
    for process in deployment.processes_mut() {
        process.start(&exe).unwrap();
        if !process.name().starts_with("participant") {
            process.wait_ready(READY_TIMEOUT).await.unwrap();
        }
    }
    let started = Instant::now();
    for index in 0..3 {
        loop {
            let (ready, body) = readyz(&http, &deployment, index).await;
            if !ready && body.contains("fork") {
                eprintln!(
                    "participant {} halted after {:.1} s: {body}",
                    index + 1,
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            assert!(
                started.elapsed() < DETECTION_TIMEOUT,
                "participant {} detected no fork: ready={ready} {body}",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let alice_admin = deployment.participants[1].admin_address;
    let (_, body) = readyz(&http, &deployment, 1).await;
    assert!(body.contains("is not in the sequencer's history"), "{body}");
    let status = admin_status(&http, alice_admin).await;
    let fork = &status["fork"];
    let listed: BTreeSet<String> = fork["lost_transactions"]
        .as_array()
        .unwrap_or_else(|| panic!("no lost list: {fork}"))
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, lost_ids,
        "exactly round 2's commits are lost: {fork}"
    );
    let commands: BTreeSet<&str> = fork["lost_transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["command_id"].as_str())
        .collect();
    assert_eq!(
        commands,
        BTreeSet::from(["r2-transfer"]),
        "alice's own command: {fork}"
    );
    let metrics = admin_metrics(&http, alice_admin).await;
    assert!(metrics.contains("meridian_fork_detected 1"), "{metrics}");
    for participant in &mut deployment.participants {
        assert!(
            participant.is_running(),
            "{} exited on the fork",
            participant.name()
        );
    }

    // Step 1 of the procedure: the report names the lost transactions and commands.
    let names: Vec<String> = (0..3).map(|i| deployment_node(&deployment, i)).collect();
    let node = |index: usize| names[index].clone();
    let (ok, report, stderr) = admin(&[
        "fork-report",
        &node(1),
        "--data-dir",
        &dir.to_string_lossy(),
    ]);
    assert!(ok, "{stderr}");
    for id in &lost_ids {
        assert!(report.contains(id.as_str()), "{report}");
    }
    assert!(report.contains("r2-transfer"), "{report}");
    // The repair refuses while the participant runs, and changes nothing.
    let save = |index: usize| dir.join(format!("lost-{}.json", node(index)));
    let (ok, _, stderr) = admin(&[
        "fork-repair",
        &node(1),
        "--data-dir",
        &dir.to_string_lossy(),
        "--save",
        &save(1).to_string_lossy(),
    ]);
    assert!(!ok && stderr.contains("is running"), "{stderr}");
    assert!(!save(1).exists());

    // Steps 2 and 3: stop the participants, repair each (saving its list first).
    for participant in &mut deployment.participants {
        participant
            .terminate(Duration::from_secs(10))
            .await
            .unwrap();
    }
    for index in 0..3 {
        let (ok, out, stderr) = admin(&[
            "fork-repair",
            &node(index),
            "--data-dir",
            &dir.to_string_lossy(),
            "--save",
            &save(index).to_string_lossy(),
        ]);
        assert!(ok, "repair of {}: {stderr}", node(index));
        eprintln!("{out}");
    }
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(save(1)).unwrap()).unwrap();
    let saved_ids: BTreeSet<String> = saved["lost_transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["transaction_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(saved_ids, lost_ids);
    // A second repair finds no fork and refuses (the saved file is not overwritten either).
    let (ok, _, stderr) = admin(&[
        "fork-repair",
        &node(1),
        "--data-dir",
        &dir.to_string_lossy(),
        "--save",
        &dir.join("again.json").to_string_lossy(),
    ]);
    assert!(!ok && stderr.contains("no fork is recorded"), "{stderr}");

    // Step 4: start the participants; they replay the new history and are ready.
    for participant in &mut deployment.participants {
        participant.start(&exe).unwrap();
        participant.wait_ready(READY_TIMEOUT).await.unwrap();
    }
    let status = admin_status(&http, alice_admin).await;
    assert!(status["fork"].is_null(), "{status}");

    // Step 5: applications resubmit the lost commands with their command ids; they commit
    // (the rewound participants freed them), and a new transfer commits too.
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    let mut resubmitted = BTreeSet::new();
    for submitted in &lost {
        let (transaction_id, created) = commit(&parties, submitted).await;
        if submitted.command_id == "r2-issue" {
            visible_to_alice(&parties, &created[0]).await;
            commit(
                &parties,
                &Submitted {
                    participant: 1,
                    actor: "alice",
                    command_id: "r3-transfer",
                    command: transfer(&created[0], "bob"),
                },
            )
            .await;
        }
        resubmitted.insert(transaction_id);
    }
    assert!(
        resubmitted.is_disjoint(&lost_ids),
        "new commits, not the lost ones"
    );
    deployment.stop().await.unwrap();
}

/// The topology manager's side of a region loss: it published a change (a party) that the
/// sequencer's restored database lacks. On its next start it must not publish on top of that
/// history: it halts with the fork alarm (`/readyz` reason, `meridian_fork_detected 1`,
/// `/status` fork), stays up, and serves no admin call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_manager_ahead_of_the_restored_sequencer_halts_with_the_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let (spec, user, http) = setup(dir);

    let mut deployment = common::start_deployment(&spec).await;
    Parties::allocate(&deployment, &user).await.unwrap();
    deployment.stop().await.unwrap();
    let sequencer_files: Vec<PathBuf> = shared_history_files(dir)
        .into_iter()
        .filter(|f| f.to_string_lossy().contains("sequencer"))
        .collect();
    assert!(!sequencer_files.is_empty());
    snapshot(dir, &sequencer_files);

    // The change the "promoted standby" of the sequencer's database will lack.
    let mut deployment = common::start_deployment(&spec).await;
    let parties = Parties::allocate(&deployment, &user).await.unwrap();
    parties.clients[0]
        .allocate_party(&party("carol"))
        .await
        .unwrap();
    deployment.stop().await.unwrap();
    for file in &sequencer_files {
        let copy = dir.join("snapshot").join(file.strip_prefix(dir).unwrap());
        std::fs::copy(copy, file).unwrap();
    }
    // The copy holds the whole database; a newer write-ahead log beside it would replay.
    for file in shared_history_files(dir) {
        let name = file.to_string_lossy().into_owned();
        if name.contains("sequencer") && !sequencer_files.contains(&file) {
            std::fs::remove_file(file).unwrap();
        }
    }

    let exe = deployment.exe().to_path_buf();
    for sequencer in &mut deployment.sequencers {
        sequencer.start(&exe).unwrap();
        sequencer.wait_ready(READY_TIMEOUT).await.unwrap();
    }
    deployment.topology.start(&exe).unwrap();
    let admin_address = deployment.topology.admin_address;
    let started = Instant::now();
    let body = loop {
        let answer = http
            .get(format!("{}/readyz", meridian_lab::tls::url(admin_address)))
            .send()
            .await;
        if let Ok(answer) = answer {
            let ready = answer.status().is_success();
            let body = answer.text().await.unwrap_or_default();
            assert!(
                !ready,
                "the topology manager serves a forked history: {body}"
            );
            if body.contains("fork") {
                break body;
            }
        }
        assert!(
            started.elapsed() < DETECTION_TIMEOUT,
            "the topology manager detected no fork"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "topology manager halted after {:.1} s: {body}",
        started.elapsed().as_secs_f64()
    );
    assert!(body.contains("is not in the sequencer's history"), "{body}");
    let metrics = admin_metrics(&http, admin_address).await;
    assert!(metrics.contains("meridian_fork_detected 1"), "{metrics}");
    let status = admin_status(&http, admin_address).await;
    assert!(status["fork"].is_object(), "{status}");
    assert_ne!(status["phase"], "serving", "{status}");
    assert!(deployment.topology.is_running(), "it exited on the fork");
    deployment.stop().await.unwrap();
}

/// The node name `meridian admin` takes for participant `index`: its directory under the
/// data directory.
fn deployment_node(deployment: &Deployment, index: usize) -> String {
    deployment.participant_ids[index].to_string()
}
