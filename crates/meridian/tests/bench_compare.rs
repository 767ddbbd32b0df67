//! `meridian bench compare` runs a bench with two binaries alternately and prints both sides
//! of every round, the ratio and the medians; it refuses bad input before anything starts,
//! and stops with the child's exit status and stderr when a bench fails, prints no such
//! figure, or overruns its timeout. The happy path runs the real binary on both sides with
//! the quickest bench (a one-second `bench sequencer`); the failures use small shell scripts
//! standing in for a binary.

#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_meridian");

/// The quickest bench run there is: one sender, one subscriber, one second.
const QUICK_SEQUENCER: &[&str] = &[
    "sequencer",
    "--duration",
    "1",
    "--senders",
    "1",
    "--subscribers",
    "1",
    "--in-flight",
    "8",
];

fn compare(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(["bench", "compare"])
        .args(args)
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A stand-in `meridian`: answers `--version`, and runs `body` for anything else after
/// touching `ran` (so a test can tell that nothing was started).
fn fake_binary(dir: &Path, name: &str, body: &str) -> (PathBuf, PathBuf) {
    let path = dir.join(name);
    let ran = dir.join(format!("{name}.ran"));
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'fake 0.0.0'; exit 0; fi\ntouch '{}'\n{body}\n",
        ran.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, ran)
}

#[test]
fn both_sides_every_round_alternating_with_the_ratio_and_the_medians() {
    let mut args = vec![
        "--baseline",
        EXE,
        "--candidate",
        EXE,
        "--rounds",
        "2",
        "--json",
        "--",
    ];
    args.extend(QUICK_SEQUENCER);
    let output = compare(&args);
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let exe = std::fs::canonicalize(EXE).unwrap();
    for side in ["baseline", "candidate"] {
        assert_eq!(report[side]["path"].as_str(), exe.to_str(), "{report}");
        assert!(
            report[side]["version"]
                .as_str()
                .unwrap()
                .starts_with("meridian "),
            "{report}"
        );
    }
    assert_eq!(report["bench"], "sequencer");
    assert_eq!(report["metric"], "submissions_per_s");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{report}");
    assert_eq!(
        rounds[0]["order"],
        serde_json::json!(["baseline", "candidate"])
    );
    assert_eq!(
        rounds[1]["order"],
        serde_json::json!(["candidate", "baseline"])
    );
    for round in rounds {
        let baseline = round["baseline"].as_f64().unwrap();
        let candidate = round["candidate"].as_f64().unwrap();
        assert!(baseline > 0.0 && candidate > 0.0, "{round}");
        let ratio = round["ratio"].as_f64().unwrap();
        assert!((ratio - candidate / baseline).abs() < 1e-9, "{round}");
        assert_eq!(
            round["baseline_report"]["submissions_per_s"].as_f64(),
            Some(baseline)
        );
    }
    for field in ["baseline", "candidate", "ratio"] {
        assert!(report["median"][field].as_f64().unwrap() > 0.0, "{report}");
    }
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, ran) = fake_binary(dir.path(), "fake", "echo '{\"tx_per_s\": 1}'");
    let not_executable = dir.path().join("not-executable");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let missing = dir.path().join("missing");
    let fake = fake.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["--baseline", missing.to_str().unwrap(), "--candidate", fake],
            format!("--baseline {}", missing.display()),
        ),
        (
            vec![
                "--baseline",
                fake,
                "--candidate",
                not_executable.to_str().unwrap(),
            ],
            "not executable".into(),
        ),
        (
            vec!["--baseline", fake, "--candidate", fake, "--rounds", "0"],
            "--rounds".into(),
        ),
        (
            vec!["--baseline", fake, "--candidate", fake, "--rounds", "51"],
            "--rounds".into(),
        ),
        (
            vec!["--baseline", fake, "--candidate", fake, "--metric", "speed"],
            "--metric speed: `bench ledger` reports none; choose one of: tx_per_s, latency_p50_ms"
                .into(),
        ),
    ];
    for (args, expected) in cases {
        let mut args = args;
        args.extend(["--", "ledger", "--duration", "1"]);
        let output = compare(&args);
        assert!(!output.status.success(), "{args:?} was accepted");
        let message = stderr(&output);
        assert!(message.contains(&expected), "{args:?}: {message}");
        assert!(!ran.exists(), "{args:?} started a bench");
    }
    let output = compare(&["--baseline", fake, "--candidate", fake, "--", "lb"]);
    assert!(
        stderr(&output).contains("not `bench lb`"),
        "{}",
        stderr(&output)
    );
    assert!(!ran.exists());
}

#[test]
fn a_failing_bench_stops_the_comparison_with_its_status_and_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (failing, _) = fake_binary(
        dir.path(),
        "failing",
        "echo 'the deployment did not start' >&2; exit 3",
    );
    let failing = failing.to_str().unwrap();
    let output = compare(&[
        "--baseline",
        failing,
        "--candidate",
        EXE,
        "--",
        "ledger",
        "--duration",
        "1",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("round 1: the baseline bench failed (exit status: 3)")
            && message.contains("its stderr ended with:\nthe deployment did not start"),
        "{message}"
    );
    // The candidate never ran: the baseline goes first in round 1.
    assert!(!message.contains("round 1/3: candidate"), "{message}");
}

#[test]
fn a_report_without_the_metric_is_an_error_naming_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = fake_binary(dir.path(), "other", "echo '{\"other_figure\": 5}'");
    let other = other.to_str().unwrap();
    let output = compare(&[
        "--baseline",
        other,
        "--candidate",
        other,
        "--",
        "ledger",
        "--duration",
        "1",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("has no number `tx_per_s` (its fields: other_figure)"),
        "{message}"
    );
}

#[test]
fn a_bench_that_overruns_its_timeout_is_stopped_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    // A grandchild that would outlive a kill of the script alone keeps writing `alive`.
    let alive = dir.path().join("alive");
    let (slow, _) = fake_binary(
        dir.path(),
        "slow",
        &format!(
            "sh -c 'while true; do touch {}; sleep 0.2; done' &\nsleep 60",
            alive.display()
        ),
    );
    let slow = slow.to_str().unwrap();
    let started = Instant::now();
    let output = compare(&[
        "--baseline",
        slow,
        "--candidate",
        slow,
        "--timeout-s",
        "2",
        "--",
        "ledger",
        "--duration",
        "1",
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("round 1: the baseline bench ran longer than --timeout-s 2"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "{message}");
    // Its whole process group was stopped: the grandchild no longer touches the file.
    std::fs::remove_file(&alive).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!alive.exists(), "the bench's child outlived the timeout");
}
