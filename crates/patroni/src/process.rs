//! The processes behind a cluster: finding the packaged programs, running them as `postgres`
//! when we are root, killing a member like a lost machine, and the watchdog that cleans up
//! after a test process that died without running destructors.
//!
//! Every process we spawn leads its own process group, so one `killpg` takes it and whatever
//! it forked. PostgreSQL is different: Patroni starts the postmaster in a session of its own
//! (so that it survives Patroni restarts) and every postmaster child makes itself a group
//! leader, so a server is killed by stopping the postmaster (it then forks nothing more),
//! listing its children and killing them all.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::PatroniError;

/// The file in a process's directory that names its process group, for the watchdog.
pub const PGID_FILE: &str = "process.pgid";

/// The user server-side programs run as: `postgres` when we are root (PostgreSQL refuses root),
/// else ourselves.
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    ids: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
}

impl RunAs {
    pub fn detect() -> anyhow::Result<Self> {
        if !meridian_pgserver::running_as_root() {
            return Ok(Self { ids: None });
        }
        let user = nix::unistd::User::from_name("postgres")
            .context("looking up the postgres user")?
            .context("no postgres user (is the postgresql package installed?)")?;
        Ok(Self {
            ids: Some((user.uid, user.gid)),
        })
    }

    /// Ourselves, whoever we are: for programs that do not mind root (etcd, the watchdog).
    pub fn unprivileged() -> Self {
        Self { ids: None }
    }

    pub fn is_postgres(&self) -> bool {
        self.ids.is_some()
    }

    /// Gives `path` (recursively) to the server user, so that it can write there.
    pub fn own(&self, path: &Path) -> anyhow::Result<()> {
        let Some((uid, gid)) = self.ids else {
            return Ok(());
        };
        let mut stack = vec![path.to_path_buf()];
        while let Some(path) = stack.pop() {
            nix::unistd::chown(&path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
            if path.is_dir() {
                for entry in std::fs::read_dir(&path)? {
                    stack.push(entry?.path());
                }
            }
        }
        Ok(())
    }

    /// `program` as the server user, in its own process group, output appended to `log`.
    pub fn command(&self, program: &Path, dir: &Path, log: &Path) -> anyhow::Result<Command> {
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(program);
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .process_group(0);
        if let Some((uid, gid)) = self.ids {
            // std drops the supplementary groups when a root parent sets the uid.
            command
                .uid(uid.as_raw())
                .gid(gid.as_raw())
                .env("HOME", dir)
                .env("USER", "postgres")
                .env("LOGNAME", "postgres");
        }
        Ok(command)
    }
}

/// The full path of `program` on `PATH`.
pub fn find_program(program: &'static str) -> Result<PathBuf, PatroniError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or(PatroniError::NotInstalled { program })
}

/// Spawns `command` and records its process group in `dir` for the watchdog.
pub fn spawn_recorded(command: &mut Command, dir: &Path) -> anyhow::Result<Child> {
    let child = command
        .spawn()
        .with_context(|| format!("spawning {:?}", command.get_program()))?;
    // The child leads its own group (`process_group(0)`), so its pid is the group id.
    std::fs::write(dir.join(PGID_FILE), child.id().to_string())
        .context("recording the process group")?;
    Ok(child)
}

/// SIGKILL to the whole process group `child` leads, then reaps it.
pub fn kill_group(child: &mut Child, dir: &Path) {
    let pgid = Pid::from_raw(child.id() as i32);
    // Fails only if the group is gone already, which is what we want.
    let _ = signal::killpg(pgid, Signal::SIGKILL);
    let _ = child.wait();
    let _ = std::fs::remove_file(dir.join(PGID_FILE));
}

/// The postmaster's pid from `postmaster.pid`, if a server may be running on `data_dir`.
pub fn postmaster_pid(data_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    // A stale file names a process that is gone, or (after pid reuse) not a postgres.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim() == "postgres").then_some(pid)
}

/// Kills the server on `data_dir` and every process it forked at once, like a lost machine.
pub fn kill_server(data_dir: &Path) -> anyhow::Result<()> {
    let Some(postmaster) = postmaster_pid(data_dir) else {
        return Ok(());
    };
    let postmaster = Pid::from_raw(postmaster);
    // Stopped, it forks no new backend between the listing and the kill.
    signal::kill(postmaster, Signal::SIGSTOP).context("SIGSTOP to the postmaster")?;
    let children = meridian_pgserver::children_of(postmaster.as_raw());
    // Killed even if the listing failed: a stopped postmaster must not be left behind.
    let _ = signal::kill(postmaster, Signal::SIGKILL);
    for &child in children.as_deref().unwrap_or_default() {
        let _ = signal::kill(Pid::from_raw(child), Signal::SIGKILL);
    }
    children
        .map(|_| ())
        .context("listing the server's processes (the postmaster was killed)")
}

/// Stops the server on `data_dir` the quick clean way: SIGQUIT is PostgreSQL's immediate
/// shutdown, after which the postmaster ends its children and frees its shared memory. Bounded:
/// whatever is left after `timeout` is killed.
pub fn stop_server(data_dir: &Path, timeout: Duration) {
    let Some(postmaster) = postmaster_pid(data_dir) else {
        return;
    };
    let _ = signal::kill(Pid::from_raw(postmaster), Signal::SIGQUIT);
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if postmaster_pid(data_dir).is_none() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill_server(data_dir);
}

/// A shell loop that, once this process is gone, kills every recorded process group under
/// `dir` (one level deep), stops every PostgreSQL server in `dir/*/data` and removes `dir`.
/// A static is never dropped and a killed test runs no destructors; this runs anyway.
pub fn spawn_watchdog(dir: &Path, bin_dir: Option<&Path>, run_as: RunAs) -> anyhow::Result<Child> {
    const SCRIPT: &str = r#"
parent="$1"; dir="$2"; pg_ctl="$3"; as_postgres="$4"
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
for f in "$dir"/process.pgid "$dir"/*/process.pgid; do
    [ -f "$f" ] && kill -s KILL -- "-$(cat "$f")" 2>/dev/null
done
for data in "$dir"/*/data; do
    [ -f "$data/postmaster.pid" ] || continue
    if [ "$as_postgres" = yes ]; then
        runuser -u postgres -- "$pg_ctl" -D "$data" stop -m immediate
    else
        "$pg_ctl" -D "$data" stop -m immediate
    fi
done
rm -rf "$dir"
"#;
    Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("meridian-patroni-watchdog")
        .arg(std::process::id().to_string())
        .arg(dir)
        .arg(bin_dir.map(|dir| dir.join("pg_ctl")).unwrap_or_default())
        .arg(if run_as.is_postgres() { "yes" } else { "no" })
        // A watchdog holding the test's stdout open would keep `cargo test | tee` waiting.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning the watchdog")
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
