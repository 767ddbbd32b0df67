//! The controller's node processes on one machine, which outlive the controller: each runs
//! `meridian <kind> --config <node dir>/<replica>.toml` in its own process group, output
//! appended to `<node dir>/<replica>.log`, its pid in `<node dir>/<replica>.pid`. A controller
//! reaps the children it spawned (their exit code); a controller taking over *adopts* the
//! processes it finds by pidfile — the pid alive, not a zombie, and its command line naming
//! the replica's config, so a pid reused by another program is never taken for a replica —
//! or, when the pidfile names none (a controller killed between a spawn and its pidfile), by
//! that command line alone, and watches those by polling.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;
use meridian_core::placement::ReplicaName;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::deployment::COLD_DIR;
use crate::proc_stat::ProcStat;

/// Where one replica's files are.
#[derive(Debug, Clone)]
pub struct ReplicaFiles {
    /// `meridian <command>`.
    pub command: &'static str,
    /// The config a running replica is started with: `<node dir>/<replica>.toml`.
    pub config: PathBuf,
    /// A cold replica's config as the deployment wrote it: `<node dir>/cold/<replica>.toml`,
    /// copied to [`Self::config`] on its first start.
    pub cold_config: PathBuf,
    pub log: PathBuf,
    pub pidfile: PathBuf,
}

impl ReplicaFiles {
    pub fn new(node_dir: &Path, replica: &ReplicaName, command: &'static str) -> Self {
        Self {
            command,
            config: node_dir.join(format!("{replica}.toml")),
            cold_config: node_dir.join(COLD_DIR).join(format!("{replica}.toml")),
            log: node_dir.join(format!("{replica}.log")),
            pidfile: node_dir.join(format!("{replica}.pid")),
        }
    }

    /// The config the replica runs with, written from the cold one if it never ran. Written
    /// beside it and renamed into place: a controller killed in the middle of a plain copy
    /// left a truncated config that the next controller took for the replica's own, and the
    /// replica crash-looped on it.
    pub fn ensure_config(&self) -> anyhow::Result<&Path> {
        if !self.config.exists() {
            let partial = self.config.with_extension("toml.partial");
            std::fs::copy(&self.cold_config, &partial)
                .and_then(|_| std::fs::rename(&partial, &self.config))
                .with_context(|| {
                    format!(
                        "neither {} nor the cold replica's {} can be used",
                        self.config.display(),
                        self.cold_config.display()
                    )
                })?;
        }
        Ok(&self.config)
    }

    /// The live process running this replica's config: the one its pidfile names, else one
    /// found by its command line. The pidfile is written after the spawn returns, so a
    /// controller killed in between leaves a replica running without one (or with a stale
    /// one); starting it a second time would fail to bind and crash-loop, the first one
    /// unwatched. The pidfile is rewritten for a process found that way.
    pub fn adoptable_pid(&self) -> Option<u32> {
        if let Some(pid) = self
            .pidfile_pid()
            .filter(|pid| is_alive(*pid) && self.runs_in(*pid))
        {
            return Some(pid);
        }
        let pid = self.find_by_command_line()?;
        tracing::info!(
            pidfile = %self.pidfile.display(),
            pid,
            "found a replica's process without its pidfile; recording it"
        );
        if let Err(error) = self.record(pid) {
            tracing::warn!(%error, "cannot record the pid; the process is still adopted");
        }
        Some(pid)
    }

    fn pidfile_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(&self.pidfile).ok()?;
        match text.trim().parse() {
            Ok(pid) => Some(pid),
            Err(_) => {
                tracing::warn!(pidfile = %self.pidfile.display(), "a pidfile that holds no pid; ignored");
                None
            }
        }
    }

    /// A live process whose command line names this replica's config (`/proc` scanned;
    /// a few hundred entries on a lab machine).
    fn find_by_command_line(&self) -> Option<u32> {
        let entries = std::fs::read_dir("/proc").ok()?;
        entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != std::process::id())
            .find(|pid| self.runs_in(*pid) && is_alive(*pid))
    }

    /// Whether process `pid`'s command line names this replica's config.
    fn runs_in(&self, pid: u32) -> bool {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        cmdline
            .split(|byte| *byte == 0)
            .any(|arg| arg == self.config.as_os_str().as_encoded_bytes())
    }

    /// Spawns the replica's process in its own process group and records its pid.
    pub fn spawn(&self, exe: &Path) -> anyhow::Result<Child> {
        let config = self.ensure_config()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut command = Command::new(exe);
        command
            .arg(self.command)
            .arg("--config")
            .arg(config)
            .envs(crate::launch::co_located_environment())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: a Ctrl-C of the controller's terminal does not reach it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), self.command))?;
        self.record(child.id())?;
        Ok(child)
    }

    /// Writes the pidfile.
    pub fn record(&self, pid: u32) -> anyhow::Result<()> {
        std::fs::write(&self.pidfile, format!("{pid}\n"))
            .with_context(|| format!("writing {}", self.pidfile.display()))
    }
}

/// Whether `pid` is a process that runs: it exists and is not a zombie (`/proc/PID/stat`'s
/// state, the field after the parenthesized command name).
pub fn is_alive(pid: u32) -> bool {
    !matches!(process_state(pid).as_deref(), Some("Z" | "X" | "x") | None)
}

/// Whether `pid` is stopped (SIGSTOP, or traced): it acts on no SIGTERM until it is
/// continued, so waiting for it to exit after one is waiting for nothing.
pub fn is_stopped(pid: u32) -> bool {
    matches!(process_state(pid).as_deref(), Some("T" | "t"))
}

/// `/proc/PID/stat`'s state field, if the process exists.
fn process_state(pid: u32) -> Option<String> {
    ProcStat::read(pid)?.state().map(str::to_owned)
}

/// Sends `signal` to `pid`; a process that is gone already is no error.
pub fn signal(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("a pid out of range")?;
    match kill(Pid::from_raw(raw), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(error) => Err(anyhow::anyhow!("{signal} to {pid}: {error}")),
    }
}

/// How the controller knows a process: its own child (reaped, with an exit code), or one it
/// adopted (watched by polling its pid).
#[derive(Debug)]
pub enum Watched {
    Child(Child),
    Adopted(u32),
}

impl Watched {
    pub fn pid(&self) -> u32 {
        match self {
            Watched::Child(child) => child.id(),
            Watched::Adopted(pid) => *pid,
        }
    }

    /// `Some(code)` once it exited (`code` `None` for a signal or an adopted process).
    pub fn exit(&mut self) -> Option<Option<i32>> {
        match self {
            Watched::Child(child) => match child.try_wait() {
                Ok(Some(status)) => Some(status.code()),
                Ok(None) => None,
                Err(error) => {
                    tracing::warn!(pid = child.id(), %error, "cannot wait for a child; counting it gone");
                    Some(None)
                }
            },
            Watched::Adopted(pid) => (!is_alive(*pid)).then_some(None),
        }
    }
}

/// Every process the controller watches, by replica, and the exits not reported yet.
#[derive(Debug, Default)]
pub struct Processes {
    watched: HashMap<ReplicaName, Watched>,
    exits: Vec<(ReplicaName, Option<i32>)>,
}

impl Processes {
    /// The pid of `replica`'s process if it runs; an exit found on the way is kept for
    /// [`Self::take_exits`].
    pub fn running(&mut self, replica: &ReplicaName) -> Option<u32> {
        let watched = self.watched.get_mut(replica)?;
        match watched.exit() {
            None => Some(watched.pid()),
            Some(code) => {
                self.watched.remove(replica);
                self.exits.push((replica.clone(), code));
                None
            }
        }
    }

    /// `replica`'s running process: a watched one, else one its pidfile names (adopted).
    pub fn find(&mut self, replica: &ReplicaName, files: &ReplicaFiles) -> Option<u32> {
        if let Some(pid) = self.running(replica) {
            return Some(pid);
        }
        let pid = files.adoptable_pid()?;
        tracing::info!(%replica, pid, "adopted a running process");
        self.watched.insert(replica.clone(), Watched::Adopted(pid));
        Some(pid)
    }

    pub fn watch(&mut self, replica: ReplicaName, watched: Watched) {
        self.watched.insert(replica, watched);
    }

    /// Every exit since the last call.
    pub fn take_exits(&mut self) -> Vec<(ReplicaName, Option<i32>)> {
        let replicas: Vec<ReplicaName> = self.watched.keys().cloned().collect();
        for replica in replicas {
            self.running(&replica);
        }
        std::mem::take(&mut self.exits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(is_alive(std::process::id()));
        let mut child = Command::new("true").spawn().expect("spawns true");
        let pid = child.id();
        child.wait().expect("waits");
        assert!(!is_alive(pid));
    }

    #[test]
    fn a_zombie_is_not_alive_and_its_exit_is_reported() {
        let child = Command::new("true").spawn().expect("spawns true");
        let pid = child.id();
        // Not reaped yet: a zombie once it exits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_alive(pid), "an exited, unreaped child counts as gone");
        let mut processes = Processes::default();
        processes.watch("r".into(), Watched::Child(child));
        assert_eq!(processes.take_exits(), vec![("r".into(), Some(0))]);
        assert!(processes.take_exits().is_empty());
    }

    #[test]
    fn a_cold_config_is_copied_whole_over_a_partial_copy_left_behind() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = ReplicaFiles::new(dir.path(), &"participant1-c".into(), "participant");
        std::fs::create_dir_all(files.cold_config.parent().expect("a cold dir")).expect("mkdir");
        std::fs::write(&files.cold_config, "admin_address = \"127.0.0.1:1\"\n").expect("write");
        // What a controller killed mid-copy leaves: the partial file, never the config.
        std::fs::write(files.config.with_extension("toml.partial"), "admin_").expect("write");
        let config = files.ensure_config().expect("copied");
        assert_eq!(
            std::fs::read_to_string(config).expect("read"),
            "admin_address = \"127.0.0.1:1\"\n"
        );
        assert!(!files.config.with_extension("toml.partial").exists());
    }

    #[test]
    fn a_pidfile_is_adopted_only_for_a_process_running_the_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ReplicaFiles::new(dir.path(), &"r-a".into(), "participant");
        std::fs::write(&files.pidfile, format!("{}\n", std::process::id())).expect("writes");
        // This test process is alive but does not run r-a's config.
        assert_eq!(files.adoptable_pid(), None);
        // `; true`: the shell stays (no exec of the last command), with the path in its argv;
        // its own process group, so that the sleep goes with it.
        let mut command = Command::new("sh");
        command
            .args(["-c", "sleep 30; true", "sh"])
            .arg(&files.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut sleeper = command.spawn().expect("spawns sh");
        // Until the child has exec'd, its command line is still this test binary's.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !files.runs_in(sleeper.id()) {
            assert!(std::time::Instant::now() < deadline, "sh never ran");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        files.record(sleeper.id()).expect("records");
        assert_eq!(files.adoptable_pid(), Some(sleeper.id()));
        // A pidfile that was never written, or holds garbage: the process is found by its
        // command line, and the pidfile repaired.
        std::fs::remove_file(&files.pidfile).expect("removes");
        assert_eq!(files.adoptable_pid(), Some(sleeper.id()));
        std::fs::write(&files.pidfile, "garbage").expect("writes");
        assert_eq!(files.adoptable_pid(), Some(sleeper.id()));
        assert_eq!(
            std::fs::read_to_string(&files.pidfile)
                .expect("reads")
                .trim(),
            sleeper.id().to_string()
        );
        let group = Pid::from_raw(-i32::try_from(sleeper.id()).expect("a pid"));
        kill(group, Signal::SIGKILL).expect("kills the group");
        sleeper.wait().expect("reaps");
        assert_eq!(files.adoptable_pid(), None, "gone, and reaped");
    }
}
