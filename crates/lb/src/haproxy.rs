//! The HAProxy process: find the binary, check a configuration, start it, reload it without
//! dropping a connection, read its servers' states, stop it.
//!
//! HAProxy runs in master-worker mode (`-W`): the master re-reads the configuration on
//! SIGUSR2 and starts a new worker, which takes over the listening sockets from the old one
//! (`expose-fd listeners` on the runtime socket), while the old worker finishes the streams it
//! carries. That is the hitless reload a region switchover needs; a restart would refuse
//! connections for as long as HAProxy takes to start. Every wait here is bounded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::plan::{render, LbPlan, PlanError};

/// How long HAProxy may take to answer on its runtime socket after a start or a reload.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one runtime API command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// At most this much of a runtime API answer is read (`show stat` of a large deployment is a
/// few tens of KiB).
const MAX_ANSWER_BYTES: u64 = 4 << 20;
/// How long a stopped HAProxy gets before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error(
        "HAProxy is not installed: no `haproxy` on PATH, in /usr/sbin or in $MERIDIAN_HAPROXY \
         (on Debian: apt-get install -y haproxy)"
    )]
    NotInstalled,
    #[error("HAProxy refuses the configuration {path}:\n{output}")]
    InvalidConfig { path: PathBuf, output: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "HAProxy did not come up within {timeout:?} ({detail}); the end of its log {log}:\n{tail}"
    )]
    StartFailed {
        timeout: Duration,
        detail: String,
        log: PathBuf,
        tail: String,
    },
    #[error("HAProxy's runtime socket {path}: {detail}")]
    Runtime { path: PathBuf, detail: String },
    #[error("HAProxy (master pid {pid}) did not start a new worker within {timeout:?} after the reload; the end of its log {log}:\n{tail}")]
    ReloadTimeout {
        pid: u32,
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("no HAProxy runs for {0}: its pid file names no live process")]
    NotRunning(PathBuf),
    #[error(transparent)]
    Plan(#[from] PlanError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LbError {
    let context = context.into();
    move |source| LbError::Io { context, source }
}

/// Where one load balancer keeps its files: configuration, plan, pid, runtime socket, log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyFiles {
    dir: PathBuf,
}

impl HaproxyFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    /// The plan the configuration was rendered from, as JSON: what a later region move starts
    /// from (the controller that moves it may not be the process that started it).
    pub fn plan(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    /// The master's pid.
    pub fn pid(&self) -> PathBuf {
        self.dir.join("haproxy.pid")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("haproxy.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("haproxy.log")
    }

    /// The plan saved by the last [`write_config`].
    pub fn load_plan(&self) -> Result<LbPlan, LbError> {
        let path = self.plan();
        let text =
            std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(|error| LbError::Io {
            context: format!("parsing {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
        })
    }

    /// The master's pid if the pid file names a live process.
    pub fn running_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.pid()).ok()?;
        let pid: u32 = text.trim().parse().ok()?;
        let raw = i32::try_from(pid).ok()?;
        kill(Pid::from_raw(raw), None).ok().map(|()| pid)
    }
}

/// The HAProxy binary: `$MERIDIAN_HAPROXY`, else `haproxy` on PATH, else `/usr/sbin/haproxy`
/// (Debian installs it there, outside a normal user's PATH).
pub fn binary() -> Result<PathBuf, LbError> {
    if let Some(path) = std::env::var_os("MERIDIAN_HAPROXY") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(LbError::NotInstalled)
        };
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("haproxy"))
        .find(|path| path.is_file())
        .ok_or(LbError::NotInstalled)
}

/// `haproxy -c`: whether HAProxy accepts the configuration at `path`.
pub fn check_config(binary: &Path, path: &Path) -> Result<(), LbError> {
    let output = Command::new(binary)
        .arg("-c")
        .arg("-f")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("running {} -c", binary.display())))?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Err(LbError::InvalidConfig {
        path: path.to_path_buf(),
        output: text.trim().to_owned(),
    })
}

/// Renders `plan`, has HAProxy check it, and only then replaces the configuration and the
/// saved plan: a plan HAProxy refuses leaves the running configuration as it was.
pub fn write_config(binary: &Path, files: &HaproxyFiles, plan: &LbPlan) -> Result<(), LbError> {
    let config = render(plan)?;
    std::fs::create_dir_all(files.dir())
        .map_err(io(format!("creating {}", files.dir().display())))?;
    let candidate = files.dir().join("haproxy.cfg.new");
    std::fs::write(&candidate, &config).map_err(io(format!("writing {}", candidate.display())))?;
    if let Err(error) = check_config(binary, &candidate) {
        let _ = std::fs::remove_file(&candidate);
        return Err(error);
    }
    let plan_json = serde_json::to_string_pretty(plan).map_err(|error| LbError::Io {
        context: "serializing the load balancer plan".to_owned(),
        source: std::io::Error::other(error),
    })?;
    let plan_candidate = files.dir().join("plan.json.new");
    std::fs::write(&plan_candidate, plan_json)
        .map_err(io(format!("writing {}", plan_candidate.display())))?;
    std::fs::rename(&candidate, files.config())
        .map_err(io(format!("replacing {}", files.config().display())))?;
    std::fs::rename(&plan_candidate, files.plan())
        .map_err(io(format!("replacing {}", files.plan().display())))?;
    Ok(())
}

/// A running HAProxy master (and its worker).
#[derive(Debug)]
pub struct Haproxy {
    files: HaproxyFiles,
    master_pid: u32,
    /// Set when this process started it and it dies with the handle.
    child: Option<Child>,
}

impl Haproxy {
    /// Starts HAProxy on the configuration [`write_config`] wrote, and waits until its runtime
    /// socket answers. `detached`: in its own process group, left running when the handle is
    /// dropped (a controller's deployment outlives the controller).
    pub async fn start(
        binary: &Path,
        files: &HaproxyFiles,
        detached: bool,
    ) -> Result<Self, LbError> {
        let log_path = files.log();
        let log =
            File::create(&log_path).map_err(io(format!("creating {}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(io(format!("opening {}", log_path.display())))?;
        let _ = std::fs::remove_file(files.socket());
        let mut command = Command::new(binary);
        command
            .arg("-W")
            .arg("-f")
            .arg(files.config())
            .arg("-p")
            .arg(files.pid())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if detached {
            use std::os::unix::process::CommandExt as _;
            command.process_group(0);
        }
        let mut child = command
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        let master_pid = child.id();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(start_failed(files, format!("it exited with {status}")));
            }
            if worker_pid(&files.socket()).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(start_failed(
                    files,
                    "its runtime socket never answered".to_owned(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(pid = master_pid, config = %files.config().display(), "HAProxy started");
        Ok(Self {
            files: files.clone(),
            master_pid,
            child: (!detached).then_some(child),
        })
    }

    /// The HAProxy another process started for `files`, by its pid file.
    pub fn adopt(files: &HaproxyFiles) -> Result<Self, LbError> {
        let master_pid = files
            .running_pid()
            .ok_or_else(|| LbError::NotRunning(files.dir().to_path_buf()))?;
        Ok(Self {
            files: files.clone(),
            master_pid,
            child: None,
        })
    }

    pub fn master_pid(&self) -> u32 {
        self.master_pid
    }

    pub fn files(&self) -> &HaproxyFiles {
        &self.files
    }

    /// Makes HAProxy load the current configuration without refusing or dropping a
    /// connection, and waits until the new worker answers.
    pub async fn reload(&self) -> Result<(), LbError> {
        reload(&self.files, self.master_pid).await
    }

    /// Stops HAProxy (SIGTERM to the master, SIGKILL after a grace).
    pub fn stop(&mut self) {
        let Ok(raw) = i32::try_from(self.master_pid) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        match self.child.as_mut() {
            Some(child) => loop {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            },
            None => {
                while kill(pid, None).is_ok() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        self.child = None;
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// SIGUSR2 to the master of `files`, then waits until a new worker answers on the socket.
async fn reload(files: &HaproxyFiles, master_pid: u32) -> Result<(), LbError> {
    let socket = files.socket();
    let before = worker_pid(&socket).await.ok();
    // The new worker reads the servers' states from here (`server-state-file`), so that a
    // replica known to be down stays down instead of starting up until its first check.
    let states = runtime_command(&socket, "show servers state").await?;
    let state_file = files.load_plan()?.server_state_file();
    std::fs::write(&state_file, states).map_err(io(format!("writing {}", state_file.display())))?;
    let raw =
        i32::try_from(master_pid).map_err(|_| LbError::NotRunning(files.dir().to_path_buf()))?;
    kill(Pid::from_raw(raw), Signal::SIGUSR2)
        .map_err(|_| LbError::NotRunning(files.dir().to_path_buf()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match worker_pid(&socket).await {
            Ok(now) if Some(now) != before => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err(LbError::ReloadTimeout {
                    pid: master_pid,
                    timeout: START_TIMEOUT,
                    log: files.log(),
                    tail: log_tail(&files.log(), 20),
                })
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn start_failed(files: &HaproxyFiles, detail: String) -> LbError {
    LbError::StartFailed {
        timeout: START_TIMEOUT,
        detail,
        log: files.log(),
        tail: log_tail(&files.log(), 20),
    }
}

/// The last `lines` lines of a log file ("" if it cannot be read).
fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends one runtime API command and returns the whole answer.
pub async fn runtime_command(socket: &Path, command: &str) -> Result<String, LbError> {
    let failed = |detail: String| LbError::Runtime {
        path: socket.to_path_buf(),
        detail,
    };
    let exchange = async {
        let mut stream = UnixStream::connect(socket)
            .await
            .map_err(|e| failed(format!("connecting: {e}")))?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| failed(format!("sending {command:?}: {e}")))?;
        let mut answer = String::new();
        stream
            .take(MAX_ANSWER_BYTES)
            .read_to_string(&mut answer)
            .await
            .map_err(|e| failed(format!("reading the answer to {command:?}: {e}")))?;
        Ok(answer)
    };
    tokio::time::timeout(COMMAND_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            failed(format!(
                "no answer to {command:?} within {COMMAND_TIMEOUT:?}"
            ))
        })?
}

/// The pid of the worker that answers on the runtime socket (`show info`).
pub async fn worker_pid(socket: &Path) -> Result<u32, LbError> {
    let answer = runtime_command(socket, "show info").await?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Pid: "))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| LbError::Runtime {
            path: socket.to_path_buf(),
            detail: format!("`show info` names no Pid: {answer:?}"),
        })
}

/// One server of a backend as HAProxy sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// HAProxy's status: `UP`, `DOWN`, `UP 1/2` (going down), `DOWN 1/2` (going up), `MAINT`.
    pub status: String,
    pub backup: bool,
}

impl ServerState {
    /// Taking traffic: up, including a server one failed check away from down.
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status.starts_with("UP ")
    }
}

/// Every server's state, from `show stat` (CSV with a header naming the columns).
pub async fn server_states(socket: &Path) -> Result<Vec<ServerState>, LbError> {
    let answer = runtime_command(socket, "show stat").await?;
    parse_stat(&answer).map_err(|detail| LbError::Runtime {
        path: socket.to_path_buf(),
        detail,
    })
}

fn parse_stat(csv: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("`show stat` answered without a header: {csv:?}"))?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("`show stat` has no column {name}"))
    };
    let (proxy, server, status, backup) = (
        column("pxname")?,
        column("svname")?,
        column("status")?,
        column("bck")?,
    );
    Ok(lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|fields| fields.len() > backup.max(status))
        .filter(|fields| !matches!(fields[server], "FRONTEND" | "BACKEND"))
        .map(|fields| ServerState {
            backend: fields[proxy].to_owned(),
            server: fields[server].to_owned(),
            status: fields[status].to_owned(),
            backup: fields[backup] == "1",
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_is_read_by_its_header_and_skips_the_proxy_rows() {
        let csv = "# pxname,svname,qcur,status,weight,bck\n\
                   participant1,FRONTEND,,OPEN,,\n\
                   participant1,participant1-a,0,UP,1,0\n\
                   participant1,participant1-b,0,DOWN,1,0\n\
                   participant1,participant1-c,0,UP 1/2,1,1\n\
                   participant1,BACKEND,0,UP,1,0\n\n";
        let states = parse_stat(csv).expect("parses");
        assert_eq!(states.len(), 3);
        assert!(states[0].is_up() && !states[0].backup);
        assert!(!states[1].is_up());
        assert!(states[2].is_up() && states[2].backup);
        assert!(parse_stat("Unknown command\n").is_err());
    }

    #[test]
    fn a_missing_binary_named_by_the_environment_is_not_installed() {
        // Only this test sets the variable in this process's test binary.
        std::env::set_var("MERIDIAN_HAPROXY", "/nonexistent/haproxy");
        let error = binary().expect_err("no such file");
        std::env::remove_var("MERIDIAN_HAPROXY");
        assert!(
            error.to_string().contains("apt-get install -y haproxy"),
            "{error}"
        );
    }
}
