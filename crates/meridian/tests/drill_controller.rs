//! `meridian drill --scenario region-switchover | region-loss` operated by the controller: the
//! real binary starts `meridian controller` on the two-regions preset (SQLite: region two's
//! cold replicas open the same files), runs the workload, and plays the operator — proposes
//! and approves the switchover, or freezes region one (SIGSTOP) and approves the controller's
//! own region-loss plan acknowledging its loss. Each asserts the plan finished, a transfer
//! sent after region one's fence committed (in region two), RPO 0 and no duplicate, and that
//! the failed requests are reported. Bad input is refused before anything starts.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::Path;
use std::process::{Command, Output};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

fn drill(args: &[&str]) -> Output {
    Command::new(EXE).arg("drill").args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs one controller-operated trial of `scenario` in `dir`; returns the JSON report.
fn run_trial(scenario: &str, dir: &Path) -> serde_json::Value {
    let json = dir.join("drill.json");
    let data = dir.join("data");
    let (json_arg, data_arg) = (json.display().to_string(), data.display().to_string());
    let output = drill(&[
        "--scenario",
        scenario,
        "--preset",
        "two-regions",
        "--backend",
        "sqlite",
        "--settle-s",
        "2",
        "--observe-s",
        "1",
        "--lanes",
        "8",
        "--data-dir",
        &data_arg,
        "--json",
        &json_arg,
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(
        output.status.success(),
        "drill failed: {stdout}\n{}",
        stderr(&output)
    );
    assert!(
        stdout.contains("operated by the controller"),
        "the controller operated it: {stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["operator"], "controller", "{report}");
    assert_eq!(report["passed"], true, "{report}");
    let trials = report["trials"].as_array().unwrap();
    assert_eq!(trials.len(), 1, "{report}");
    let trial = &trials[0];
    assert_eq!(trial["scenario"], scenario, "{trial}");
    assert_eq!(trial["plan_state"], "done", "{trial}");
    assert_eq!(trial["from_region"], "region-1", "{trial}");
    assert_eq!(trial["to_region"], "region-2", "{trial}");
    assert!(trial.get("problem").is_none_or(|p| p.is_null()), "{trial}");
    for figure in [
        "approval_to_first_commit_ms",
        "approval_to_all_participants_ms",
        "approval_to_done_ms",
    ] {
        assert!(trial[figure].as_f64().is_some(), "{figure}: {trial}");
    }
    assert_eq!(trial["rpo_transactions"], 0, "{trial}");
    assert_eq!(trial["duplicate_transactions"], 0, "{trial}");
    assert_eq!(trial["amounts_conserved"], true, "{trial}");
    assert_eq!(trial["views_agree"], true, "{trial}");
    assert!(trial["committed"].as_u64().unwrap() > 0, "{trial}");
    for reported in ["failed_requests", "failed_during_move", "retried_requests"] {
        assert!(trial[reported].as_u64().is_some(), "{reported}: {trial}");
    }
    let steps = trial["steps"].as_array().unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s["step"].as_str().unwrap().starts_with("fence region-1")),
        "{trial}"
    );
    for step in steps {
        assert!(
            ["done", "already-done"].contains(&step["outcome"].as_str().unwrap()),
            "{step}"
        );
        assert!(step["duration_ms"].as_f64().is_some(), "{step}");
    }
    // Region two's cold replicas ran (the first commit after the fence was theirs).
    for node in ["participant1", "participant2", "participant3", "mediator"] {
        let log = data.join(node).join(format!("{node}-c.log"));
        assert!(
            std::fs::metadata(&log).is_ok_and(|m| m.len() > 0),
            "{} was written",
            log.display()
        );
    }
    trial.clone()
}

#[test]
fn a_region_switchover_approved_by_the_drill_moves_to_region_two_losing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let trial = run_trial("region-switchover", dir.path());
    assert!(
        trial["detection_ms"].is_null(),
        "planned: nothing to detect"
    );
    // Every participant of region one stopped admitting calls before any was stopped, so
    // none waited out its drain bound for a confirmation from one already gone.
    let fence = &trial["steps"][0];
    assert!(
        fence["detail"]
            .as_str()
            .unwrap()
            .contains("quiesced participant1-a, participant2-a, participant3-a"),
        "{fence}"
    );
}

#[test]
fn a_region_loss_is_detected_by_the_controller_and_its_plan_approved_with_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let trial = run_trial("region-loss", dir.path());
    // The controller's dwell (3 s by default) is part of the detection.
    let detection = trial["detection_ms"].as_f64().unwrap();
    assert!(detection >= 3_000.0, "{trial}");
    assert!(trial["data_loss"].is_string(), "{trial}");
    // The frozen region is fenced by SIGKILL at once, not after the 10 s SIGTERM grace.
    let fence = &trial["steps"][0];
    assert!(
        fence["detail"].as_str().unwrap().contains("frozen"),
        "{fence}"
    );
    assert!(fence["duration_ms"].as_f64().unwrap() < 5_000.0, "{fence}");
}

#[test]
fn what_the_controller_cannot_operate_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "--operator",
                "controller",
                "--scenario",
                "participant-crash",
            ],
            "operates region-switchover and region-loss only",
        ),
        (
            vec!["--scenario", "region-switchover"],
            "needs a second region with a cold replica of every node",
        ),
        (
            vec![
                "--operator",
                "controller",
                "--scenario",
                "region-loss",
                "--preset",
                "two-regions",
                "--backend",
                "postgres",
            ],
            "SQLite only",
        ),
        (
            vec![
                "--scenario",
                "region-loss",
                "--preset",
                "two-regions",
                "--backend",
                "sqlite",
                "--target",
                "participant1",
            ],
            "--target does not apply",
        ),
        (
            vec![
                "--operator",
                "lab",
                "--scenario",
                "region-switchover",
                "--preset",
                "two-regions",
                "--backend",
                "sqlite",
            ],
            "--backend postgres",
        ),
    ];
    for (args, expected) in cases {
        let mut all = args.clone();
        all.extend(["--data-dir", &data_arg]);
        let output = drill(&all);
        let message = stderr(&output);
        assert!(!output.status.success(), "{args:?} was accepted");
        assert!(message.contains(expected), "{args:?}: {message}");
        assert!(
            !message.contains("starting the controller")
                && !message.contains("starting the deployment"),
            "{args:?} started something: {message}"
        );
        assert!(!data.exists(), "{args:?} created the data directory");
    }
}
