//! A `meridian controller` child process of a lab tool (the controller-operated drills, the
//! cold-standby bench) and the deployment it starts from a deployment file. Dropping the
//! handle — also on an error or a panic — kills the controller first, else it would restart
//! what is killed next, then every node process, which outlive their controller by design.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use meridian_controller::client::ControllerClient;
use tokio_util::sync::CancellationToken;

use super::{url_file, ControlledDeployment};
use crate::deployment::DESCRIPTION_FILE;

/// One HTTP request to the controller's API, at most.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);
/// How much of the controller's log an error quotes.
const LOG_LINES: usize = 30;

/// A running `meridian controller --deployment FILE --data-dir DIR --name NAME`.
pub struct ControllerChild {
    child: Option<Child>,
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl ControllerChild {
    /// Starts controller replica `name` of the binary `exe` on `deployment_file`, its output
    /// appended to `log`.
    pub fn spawn(
        exe: &Path,
        deployment_file: &Path,
        data_dir: &Path,
        name: &str,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let data_dir = std::path::absolute(data_dir)?;
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        // A URL file left by an earlier run would name a dead controller.
        let _ = std::fs::remove_file(url_file(&data_dir, name));
        let child = Command::new(exe)
            .arg("controller")
            .arg("--deployment")
            .arg(deployment_file)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--name")
            .arg(name)
            .stdin(Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .with_context(|| format!("starting {} controller", exe.display()))?;
        Ok(Self {
            child: Some(child),
            name: name.to_owned(),
            data_dir,
            log: log.to_path_buf(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The last `lines` lines of the controller's log.
    pub fn log_tail(&self, lines: usize) -> String {
        file_tail(&self.log, lines)
    }

    /// An error quoting the log if the controller exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the controller exited ({status}); its log:\n{}",
                    self.log_tail(LOG_LINES)
                );
            }
        }
        Ok(())
    }

    /// Waits until the controller serves its API and sees the whole deployment up
    /// ([`meridian_controller::api::Status::deployment_up`]), for at most `timeout`; its
    /// client then. An error quotes the controller's log.
    pub async fn wait_until_up(
        &mut self,
        timeout: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<ControllerClient> {
        let url_path = url_file(&self.data_dir, &self.name);
        let deadline = Instant::now() + timeout;
        let mut client: Option<ControllerClient> = None;
        loop {
            if shutdown.is_cancelled() {
                bail!("interrupted");
            }
            self.check_running()?;
            if client.is_none() {
                if let Ok(url) = std::fs::read_to_string(&url_path) {
                    client = Some(self.client(url.trim())?);
                }
            }
            if let Some(client) = &client {
                if client.status().await.is_ok_and(|s| s.deployment_up()) {
                    return Ok(client.clone());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the deployment was not up under the controller within {} s; its log:\n{}",
                    timeout.as_secs(),
                    self.log_tail(LOG_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of the API at `url` that trusts the deployment's CA. The controller wrote its
    /// certificates before its URL file, so they are there once the URL is; an `http://` URL
    /// (a `--plaintext` controller) needs none.
    fn client(&self, url: &str) -> anyhow::Result<ControllerClient> {
        crate::tls::use_deployment(&self.data_dir)?;
        let http = crate::tls::http_builder()?
            .timeout(HTTP_TIMEOUT)
            .build()
            .context("building an HTTP client")?;
        Ok(ControllerClient::new(http, url))
    }
}

impl Drop for ControllerChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.data_dir.join(DESCRIPTION_FILE).exists() {
            if let Ok(deployment) = ControlledDeployment::open(&self.data_dir) {
                deployment.kill_all();
            }
        }
    }
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn file_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
