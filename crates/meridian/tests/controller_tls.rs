//! TLS on the controller's HTTP API, with the real binary: by default it serves `https://`
//! with the deployment's `controller` certificate — `meridian ctl` (trusting the deployment's
//! CA) reads its status, a plaintext `http://` request to the same port gets no answer, and
//! nothing warns. `--plaintext` serves `http://` (the deployment it starts too) with a
//! warning at start-up. `--plaintext` against a deployment that runs TLS, or TLS against one
//! that does not, is refused before anything is opened or written.

#![allow(clippy::unwrap_used)]

mod controller_common;

use std::process::Command;
use std::time::Duration;

use controller_common::{all_up, ControllerProcess, NodesGuard, EXE};
use meridian_lab::controller::url_file;
use meridian_lab::deployment::{Description, Preset};

const ARGS: [&str; 4] = ["--preset", "single", "--backend", "sqlite"];
/// What the controller logs when it serves plaintext.
const PLAINTEXT_WARNING: &str = "TLS is OFF";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_https_only_and_ctl_trusts_the_deployments_ca() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let controller = ControllerProcess::start(&data, "controller-a", &ARGS).await;
    assert!(controller.url.starts_with("https://"), "{}", controller.url);
    controller
        .wait_for("up", Duration::from_secs(90), all_up)
        .await;

    // `meridian ctl` finds the URL file and checks the certificate with <data>/tls/ca.crt.
    let output = Command::new(EXE)
        .args(["ctl", "status", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "ctl status over https: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("\"active\": true"), "{stdout}");

    // Plaintext to the API's port: no HTTP answer, for a read or a command with the token.
    let plaintext = controller.url.replacen("https://", "http://", 1);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let read = http.get(format!("{plaintext}/api/status")).send().await;
    assert!(read.is_err(), "plaintext read answered: {read:?}");
    let command = http
        .post(format!("{plaintext}/api/plans"))
        .bearer_auth("whatever")
        .json(&serde_json::json!({ "to": "region-1" }))
        .send()
        .await;
    assert!(command.is_err(), "plaintext command answered: {command:?}");
    // Over https the same port answers.
    assert!(controller.try_status().await.is_some());

    let log = std::fs::read_to_string(&controller.log).unwrap();
    assert!(
        !log.contains(PLAINTEXT_WARNING),
        "no plaintext warning: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_explicit_and_warned_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _nodes = NodesGuard(data.clone());
    let mut args = ARGS.to_vec();
    args.push("--plaintext");
    let controller = ControllerProcess::start(&data, "controller-a", &args).await;
    assert!(controller.url.starts_with("http://"), "{}", controller.url);
    let log = std::fs::read_to_string(&controller.log).unwrap();
    let warning = log
        .lines()
        .find(|line| line.contains(PLAINTEXT_WARNING))
        .unwrap_or_else(|| panic!("a start-up warning: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("admin token"), "{warning}");
    controller
        .wait_for("up", Duration::from_secs(90), all_up)
        .await;
    assert!(
        !data.join("tls").join("ca.crt").exists(),
        "the deployment it started runs plaintext too"
    );
}

/// `meridian controller` on `data` with `extra` arguments; its stderr, after asserting it
/// failed.
fn refused(data: &std::path::Path, extra: &[&str]) -> String {
    let output = Command::new(EXE)
        .arg("controller")
        .args(ARGS)
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "refused: {stderr}");
    stderr
}

#[test]
fn tls_that_does_not_fit_the_deployment_is_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("tls")).unwrap();
    let description =
        Description::preset(Preset::Single).with_backend(meridian_lab::deployment::Backend::Sqlite);
    std::fs::write(data.join("deployment.toml"), description.to_toml().unwrap()).unwrap();
    let listing = |data: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = walk(data);
        names.sort();
        names
    };

    // A deployment without TLS: the controller does not silently go plaintext.
    let before = listing(&data);
    let stderr = refused(&data, &[]);
    assert!(
        stderr.contains("runs without TLS") && stderr.contains("--plaintext"),
        "{stderr}"
    );
    assert_eq!(listing(&data), before, "nothing written");

    // A deployment with TLS: --plaintext is refused.
    std::fs::write(data.join("tls").join("ca.crt"), "not read").unwrap();
    let before = listing(&data);
    let stderr = refused(&data, &["--plaintext"]);
    assert!(
        stderr.contains("--plaintext") && stderr.contains("runs TLS"),
        "{stderr}"
    );
    assert_eq!(listing(&data), before, "nothing written");
    assert!(!url_file(&data, "controller-a").exists());
}

/// Every path under `dir`, relative.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}
