//! Support for the controller's black-box tests: `meridian controller` as a child process
//! (its API at the `https://` URL it writes, reached trusting the deployment's CA only),
//! polling its status, and a guard that SIGKILLs the deployment's node processes at the end —
//! they outlive every controller by design.

#![allow(dead_code)]
#![allow(clippy::unwrap_used)] // test helpers panic on failure by design

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_controller::api::{
    AuditKind, AuditRecord, Command as ControllerCommand, CommandError, CommandOutcome,
    ReplicaStatus, Status,
};
use meridian_lab::controller::{file_tail, url_file, ControlledDeployment};

pub const EXE: &str = env!("CARGO_BIN_EXE_meridian");

/// One `meridian controller` process.
pub struct ControllerProcess {
    pub name: String,
    child: Option<Child>,
    pub url: String,
    pub log: PathBuf,
    pub http: reqwest::Client,
}

impl ControllerProcess {
    /// Starts controller replica `name` on `data_dir` with the deployment `args` (e.g.
    /// `["--preset", "replicated"]`) and waits until its API answers.
    pub async fn start(data_dir: &Path, name: &str, args: &[&str]) -> Self {
        let url_path = url_file(data_dir, name);
        let _ = std::fs::remove_file(&url_path);
        let log = data_dir
            .parent()
            .unwrap()
            .join(format!("{name}-{}.log", std::process::id()));
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(EXE)
            .arg("controller")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut process = Self {
            name: name.to_owned(),
            child: Some(child),
            url: String::new(),
            log,
            // Replaced by one that trusts the deployment's CA once the URL file is there.
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&url_path) {
                if process.url.is_empty() {
                    // The controller wrote the deployment's certificates before its URL file.
                    process.http = https_client(data_dir);
                }
                process.url = text.trim().to_owned();
                let scheme = if args.contains(&"--plaintext") {
                    "http://"
                } else {
                    "https://"
                };
                assert!(
                    process.url.starts_with(scheme),
                    "the controller serves {scheme}: {}",
                    process.url
                );
                if process.try_status().await.is_some() {
                    return process;
                }
            }
            if let Some(status) = process.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", process.log_tail(40));
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not serve its API within 30 s:\n{}",
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    pub async fn try_status(&self) -> Option<Status> {
        let response = self
            .http
            .get(format!("{}/api/status", self.url))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    pub async fn status(&self) -> Status {
        self.try_status()
            .await
            .unwrap_or_else(|| panic!("{} did not answer:\n{}", self.name, self.log_tail(40)))
    }

    /// Polls the status until `done` holds, for at most `timeout`.
    pub async fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Status) -> bool,
    ) -> Status {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            if let Some(status) = self.try_status().await {
                if done(&status) {
                    return status;
                }
                last = Some(status);
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: not {what} within {timeout:?}; last status: {}\nlog:\n{}",
                    self.name,
                    serde_json::to_string_pretty(&last).unwrap(),
                    self.log_tail(60)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a command with the deployment's admin token.
    pub async fn command(
        &self,
        data_dir: &Path,
        command: &ControllerCommand,
    ) -> Result<CommandOutcome, (u16, CommandError)> {
        let token = std::fs::read_to_string(data_dir.join("secrets").join("admin-token")).unwrap();
        let response = self
            .http
            .post(format!("{}/api/commands", self.url))
            .bearer_auth(token.trim())
            .json(command)
            .send()
            .await
            .unwrap();
        let code = response.status().as_u16();
        if response.status().is_success() {
            Ok(response.json().await.unwrap())
        } else {
            Err((code, response.json().await.unwrap()))
        }
    }

    /// SIGKILL, reaped.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        // A failing assertion after the last status poll says nothing of why; the log does.
        if std::thread::panicking() {
            eprintln!(
                "--- {} log (last 80 lines) ---\n{}",
                self.name,
                self.log_tail(80)
            );
        }
        self.kill9();
    }
}

/// An HTTP client that trusts the CA of the deployment in `data_dir` and nothing else (and
/// presents the lab certificate), as `meridian ctl` builds it.
pub fn https_client(data_dir: &Path) -> reqwest::Client {
    meridian_lab::tls::use_deployment(data_dir).unwrap();
    meridian_lab::tls::http_builder()
        .unwrap()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// SIGKILLs the deployment's node processes when dropped (they outlive the controllers).
pub struct NodesGuard(pub PathBuf);

impl Drop for NodesGuard {
    fn drop(&mut self) {
        if let Ok(deployment) = ControlledDeployment::open(&self.0) {
            if std::thread::panicking() {
                for replica in deployment.replicas() {
                    eprintln!(
                        "--- {replica} (pid {:?}) log (last 15 lines) ---\n{}",
                        deployment.pid(&replica),
                        deployment.log_tail(&replica, 15)
                    );
                }
            }
            deployment.kill_all();
        }
    }
}

pub fn replica<'a>(status: &'a Status, name: &str) -> Option<&'a ReplicaStatus> {
    status.replicas().find(|r| r.name.as_str() == name)
}

/// The deployment is up as the controller sees it (see `Status::deployment_up`).
pub fn all_up(status: &Status) -> bool {
    status.deployment_up()
}

pub fn records<'a>(
    status: &'a Status,
    kind: AuditKind,
    replica: &'a str,
) -> impl Iterator<Item = &'a AuditRecord> + 'a {
    status.events.iter().filter(move |e| {
        e.kind == kind && e.replica.as_ref().is_some_and(|r| r.as_str() == replica)
    })
}
