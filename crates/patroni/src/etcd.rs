//! A single-member etcd on loopback: Patroni's distributed configuration store, where the
//! leader key lives. One member is no consensus, which is fine for a lab on one machine (the
//! machine is the failure domain anyway); production runs three or five members in separate
//! zones.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::process::{self, RunAs};
use crate::PatroniError;

/// How long a fresh etcd may take to answer `/health`; it usually takes well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports picked free can be taken by an unrelated process before etcd binds them.
const START_ATTEMPTS: usize = 3;

/// A running etcd; it is killed and its directory removed on drop.
#[derive(Debug)]
pub struct EtcdServer {
    client_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
    /// Removes the directory on drop (after the process is gone).
    _tempdir: tempfile::TempDir,
}

impl EtcdServer {
    /// Starts etcd in a new directory under the system's temp directory.
    pub async fn start() -> Result<EtcdServer, PatroniError> {
        Self::start_in(&std::env::temp_dir()).await
    }

    /// Starts etcd in a new directory under `parent`, and waits until it is healthy.
    pub async fn start_in(parent: &Path) -> Result<EtcdServer, PatroniError> {
        let program = process::find_program("etcd")?;
        let tempdir = tempfile::Builder::new()
            .prefix("meridian-etcd-")
            .tempdir_in(parent)
            .context("creating the etcd directory")?;
        let dir = tempdir.path().to_path_buf();
        let mut server = EtcdServer {
            client_port: 0,
            dir,
            child: None,
            watchdog: None,
            _tempdir: tempdir,
        };
        // No PostgreSQL in here: the watchdog only kills etcd and removes the directory.
        server.watchdog = Some(process::spawn_watchdog(
            &server.dir,
            None,
            RunAs::unprivileged(),
        )?);
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match server.spawn_and_wait(&program).await {
                Ok(()) => {
                    tracing::info!(port = server.client_port, "etcd started");
                    return Ok(server);
                }
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow!("etcd did not start"))
            .into())
    }

    async fn spawn_and_wait(&mut self, program: &Path) -> anyhow::Result<()> {
        let client_port = meridian_node::ports::free_loopback_port()?;
        let peer_port = meridian_node::ports::free_loopback_port()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let data = self.dir.join("data");
        // A failed earlier attempt may have left a half-initialised member behind.
        let _ = std::fs::remove_dir_all(&data);
        let log = self.log_file();
        // etcd runs as whoever we are: only PostgreSQL refuses root.
        let mut command = RunAs::unprivileged().command(program, &self.dir, &log)?;
        command
            .arg("--name=meridian")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=meridian={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-level=warn");
        let mut child = process::spawn_recorded(&mut command, &self.dir)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let http = reqwest::Client::new();
        let url = format!("{client}/health");
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(anyhow!(
                    "etcd exited ({status}):\n{}",
                    process::log_tail(&log, 20)
                ));
            }
            if healthy(&http, &url).await {
                self.client_port = client_port;
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() > deadline {
                process::kill_group(&mut child, &self.dir);
                return Err(anyhow!(
                    "etcd not healthy after {READY_TIMEOUT:?}:\n{}",
                    process::log_tail(&log, 20)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `127.0.0.1:PORT`, the client endpoint as Patroni's `etcd3.hosts` takes it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }
}

async fn healthy(http: &reqwest::Client, url: &str) -> bool {
    let Ok(response) = http.get(url).timeout(Duration::from_secs(1)).send().await else {
        return false;
    };
    let Ok(body) = response.json::<serde_json::Value>().await else {
        return false;
    };
    body["health"] == "true"
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_group(&mut child, &self.dir);
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
