//! Starting Meridian nodes as real child processes, for the benchmarks and the black-box
//! tests: write a config, spawn `meridian <role>`, wait for `/readyz`, and kill (SIGKILL or
//! SIGTERM) on demand or when dropped, so no test leaves a stray process behind.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_sequencer::SequencerConfig;
use meridian_store::StorageConfig;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Two loopback addresses reserved for this process (see [`meridian_node::ports`]): (gRPC,
/// admin HTTP).
pub fn free_addresses() -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let port = || meridian_node::ports::free_loopback_port();
    Ok((
        SocketAddr::from(([127, 0, 0, 1], port()?)),
        SocketAddr::from(([127, 0, 0, 1], port()?)),
    ))
}

/// The environment of a node process the lab starts beside the others on this machine: its
/// share of the cores as runtime threads ([`meridian_node::runtime`]), unless the lab's own
/// environment sets a count, which the node then inherits (to measure another one).
pub fn co_located_environment() -> Vec<(OsString, OsString)> {
    use meridian_node::runtime::{co_located_runtime_threads, RUNTIME_THREADS_ENV};
    if std::env::var_os(RUNTIME_THREADS_ENV).is_some() {
        return Vec::new();
    }
    vec![(
        RUNTIME_THREADS_ENV.into(),
        co_located_runtime_threads().to_string().into(),
    )]
}

/// A `meridian <role> --config FILE` child process.
pub struct NodeProcess {
    role: &'static str,
    name: String,
    child: Option<Child>,
    pub grpc_address: SocketAddr,
    pub admin_address: SocketAddr,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// Set for the process on every (re)start, on top of this process's environment.
    environment: Vec<(OsString, OsString)>,
    /// Started in its own process group (so a Ctrl-C of ours does not reach it) and left
    /// running when this handle is dropped: for processes that must outlive the lab process
    /// that started them (the controller's).
    detached: bool,
}

/// The sequencer is the node most tests start on its own.
pub type SequencerProcess = NodeProcess;

impl NodeProcess {
    /// Writes `dir/<name>.toml` for a sequencer on `storage` with free ports, lets `adjust`
    /// change the config (an instance index, an owner key, timings), and starts it with
    /// output in `dir/<name>.log`.
    pub fn spawn(
        exe: &Path,
        dir: &Path,
        name: &str,
        storage: &StorageConfig,
        adjust: impl FnOnce(&mut SequencerConfig),
    ) -> anyhow::Result<Self> {
        Self::sequencer(dir, name, storage, adjust)?.started(exe)
    }

    /// [`Self::spawn`] without starting: for a caller that sets the environment first.
    pub fn sequencer(
        dir: &Path,
        name: &str,
        storage: &StorageConfig,
        adjust: impl FnOnce(&mut SequencerConfig),
    ) -> anyhow::Result<Self> {
        let (grpc_address, admin_address) = free_addresses()?;
        let mut config = SequencerConfig {
            admin_token_file: None,
            admin_http: Default::default(),
            listen_address: grpc_address,
            admin_address,
            instance: Default::default(),
            storage: storage.clone(),
            limits: Default::default(),
            timing: Default::default(),
            admin_token: None,
            owner_public_key: None,
            tls: crate::tls::standalone_node_config(dir)?,
        };
        adjust(&mut config);
        let config = toml::to_string(&config).context("writing the sequencer config")?;
        Self::configure("sequencer", dir, name, &config, grpc_address, admin_address)
    }

    /// Writes `config_toml` (a role config serialized with `toml::to_string`) to
    /// `dir/<name>.toml` for `meridian <role>`, not started yet: [`Self::started`] starts it,
    /// after [`Self::set_env`] if the process needs an environment of its own.
    pub fn configure(
        role: &'static str,
        dir: &Path,
        name: &str,
        config_toml: &str,
        grpc_address: SocketAddr,
        admin_address: SocketAddr,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join(format!("{name}.toml"));
        std::fs::write(&config_path, config_toml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        Ok(Self {
            role,
            name: name.to_owned(),
            child: None,
            grpc_address,
            admin_address,
            config_path,
            log_path: dir.join(format!("{name}.log")),
            environment: co_located_environment(),
            detached: false,
        })
    }

    /// Starts a configured process: [`Self::start`] for a process just built.
    pub fn started(mut self, exe: &Path) -> anyhow::Result<Self> {
        self.start(exe)?;
        Ok(self)
    }

    /// Sets an environment variable for the process from its next (re)start on.
    pub fn set_env(&mut self, key: impl Into<OsString>, value: impl Into<OsString>) {
        let key = key.into();
        self.environment.retain(|(set, _)| *set != key);
        self.environment.push((key, value.into()));
    }

    /// From the next start on, the process runs in its own process group and outlives this
    /// handle (see [`Self::detach`]).
    pub fn set_detached(&mut self) {
        self.detached = true;
    }

    /// Hands the running child over to the caller, who reaps it from now on; this handle
    /// then no longer knows the process (and its drop cannot kill it).
    pub fn detach(&mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `meridian` subcommand it runs (`sequencer`, `participant`, ...).
    pub fn role_command(&self) -> &'static str {
        self.role
    }

    /// (Re)starts the process with the same config and ports, appending to the same log.
    pub fn start(&mut self, exe: &Path) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the process is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg(self.role)
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.environment.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if self.detached {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn grpc_endpoint(&self) -> String {
        crate::tls::url(self.grpc_address)
    }

    /// Polls `/readyz` until 200, failing early (with the log's tail) if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if let Err(last) = self
            .poll_admin("/readyz", timeout, " before becoming ready")
            .await?
        {
            bail!(
                "{} was not ready within {timeout:?} (last /readyz: {last}); log tail:\n{}",
                self.name,
                self.log_tail(20)
            )
        }
        Ok(())
    }

    /// Polls the admin `path` until it answers 200 and `Ok(Ok(()))`; `Ok(Err(last answer))`
    /// once `timeout` passes; an error with the log's tail if the process exits first
    /// (`exited_when` ends that message's "exited" phrase).
    async fn poll_admin(
        &mut self,
        path: &str,
        timeout: Duration,
        exited_when: &str,
    ) -> anyhow::Result<Result<(), String>> {
        let client = crate::tls::http()?;
        let url = format!("{}{path}", crate::tls::url(self.admin_address));
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            self.bail_if_exited(exited_when)?;
            match client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => return Ok(Ok(())),
                Ok(response) => last = response.text().await.unwrap_or_default(),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Err(last))
    }

    /// Fails with the log tail if the process has exited; `when` ends the "exited" phrase.
    fn bail_if_exited(&mut self, when: &str) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                bail!(
                    "{} exited ({status}){when}; log tail:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
        }
        Ok(())
    }

    /// Polls `/livez` until 200 (a passive replica is alive but not ready).
    pub async fn wait_alive(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.poll_admin("/livez", timeout, "").await?.is_err() {
            bail!("{} was not alive within {timeout:?}", self.name)
        }
        Ok(())
    }

    /// SIGSTOP / SIGCONT: an alive-but-stuck process, for failover tests.
    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the process is not running")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal).with_context(|| format!("{signal}"))?;
        Ok(())
    }

    /// Peak resident set size of the process so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL: the crash a failover test needs.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("SIGKILL")?;
            child.wait()?;
        }
        Ok(())
    }

    /// Reaps a process that was asked to stop (SIGTERM) and is handing over: waits up to
    /// `grace` for it to exit by itself, then [`terminate`](Self::terminate)s it. It is not
    /// signalled again at once, because a second SIGTERM cuts a node's drain short.
    pub async fn wait_exit(&mut self, grace: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            let exited = match self.child.as_mut() {
                None => return Ok(()),
                Some(child) => child.try_wait()?.is_some(),
            };
            if exited {
                self.child = None;
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.terminate(grace).await
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill()?;
        child.wait()?;
        bail!("{} did not stop within {grace:?} of SIGTERM", self.name)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::controller::file_tail(&self.log_path, lines)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
