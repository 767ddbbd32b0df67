//! `meridian-pgserver`: a throwaway PostgreSQL server for the lab (demo, drills, benchmarks) and
//! the tests, run from the distribution's binaries in a temporary directory. PostgreSQL refuses to run as root and tests usually run as root, so the server runs
//! as the `postgres` system user (through `runuser`) when we are root. initdb costs about a
//! second, so a test binary normally shares one server ([`PostgresServer::shared`]) and gives
//! each test its own database ([`PostgresServer::create_database`]). A watchdog shell process
//! stops the server and removes its directory once the test process is gone, because a static
//! is never dropped and a killed test runs no destructors.

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{anyhow, bail, Context};

const INSTALL_HINT: &str =
    "PostgreSQL binaries not found; install with apt-get install -y postgresql";

/// Ports picked by [`meridian_node::ports::free_loopback_port`] can be taken by someone else before the server binds.
const START_ATTEMPTS: usize = 5;

/// A running PostgreSQL server with a superuser `meridian` that trusts every local connection.
#[derive(Debug)]
pub struct PostgresServer {
    bin_dir: PathBuf,
    /// Holds `data/`, `log` and the Unix socket; owned by the user the server runs as.
    dir: PathBuf,
    port: u16,
    /// The `pg_ctl -o` options of the running server, reused by [`PostgresServer::resume`].
    options: String,
    /// Whether server-side binaries run through `runuser -u postgres` (we are root).
    as_postgres_user: bool,
    /// `Some` for owned servers, whose directory goes away on drop. The shared server's
    /// directory is removed by its watchdog instead.
    tempdir: Option<tempfile::TempDir>,
    watchdog: Mutex<Option<Child>>,
}

static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
static DATABASE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PostgresServer {
    /// The server shared by every test of this test binary, started on first use. It outlives
    /// the tests and is stopped by its watchdog when the process exits.
    ///
    /// # Panics
    /// If the server cannot be started; every later call panics with the same message.
    pub fn shared() -> &'static PostgresServer {
        let server = SHARED.get_or_init(|| {
            PostgresServer::start_inner(false).map_err(|error| format!("{error:#}"))
        });
        match server {
            Ok(server) => server,
            Err(message) => panic!("cannot start the shared PostgreSQL test server: {message}"),
        }
    }

    /// Starts a server owned by the caller; it is stopped (`pg_ctl stop -m immediate`) and its
    /// directory removed on drop.
    pub fn start() -> anyhow::Result<PostgresServer> {
        Self::start_inner(true)
    }

    fn start_inner(owned: bool) -> anyhow::Result<PostgresServer> {
        let bin_dir = find_bin_dir()?;
        let as_postgres_user = running_as_root();
        let tempdir = tempfile::Builder::new()
            .prefix("meridian-pg-")
            .tempdir()
            .context("creating the PostgreSQL temp dir")?;
        let dir = tempdir.path().to_path_buf();
        if as_postgres_user {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&dir))
            .context("giving the temp dir to the postgres user (does the user exist?)")?;
        }
        let (tempdir, dir) = if owned {
            (Some(tempdir), dir)
        } else {
            // The watchdog removes it; a TempDir in a static would never be dropped anyway.
            (None, tempdir.keep())
        };
        let mut server = PostgresServer {
            bin_dir,
            dir,
            port: 0,
            options: String::new(),
            as_postgres_user,
            tempdir,
            watchdog: Mutex::new(None),
        };
        // Until the watchdog runs, a failure must not leave a directory behind.
        let cleanup_dir = server.tempdir.is_none();
        let result = server.init_and_start();
        if let Err(error) = result {
            if cleanup_dir {
                let _ = std::fs::remove_dir_all(&server.dir);
            }
            return Err(error);
        }
        server.spawn_watchdog()?;
        tracing::info!(port = server.port, dir = %server.dir.display(), "PostgreSQL test server started");
        Ok(server)
    }

    fn init_and_start(&mut self) -> anyhow::Result<()> {
        run(self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", "meridian", "-E", "UTF8", "--locale=C"])
            // Skipping initdb's own fsync of the fresh cluster only risks the cluster itself,
            // which is throwaway; the server still runs with fsync=on.
            .arg("--no-sync"))
        .context("initdb failed")?;

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            self.port = meridian_node::ports::free_loopback_port()
                .context("picking a port for PostgreSQL")?;
            self.options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=on -c max_connections=300",
                self.port,
                self.dir.display()
            );
            let output = self
                .pg_ctl_start()
                .output()
                .context("running pg_ctl start")?;
            if output.status.success() {
                return Ok(());
            }
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            let error = anyhow!(
                "pg_ctl start failed: {}\n--- server log ---\n{}",
                describe(&output),
                tail(&log, 40)
            );
            if !log.contains("could not bind") && !log.contains("already in use") {
                return Err(error);
            }
            last_error = Some(error);
        }
        Err(last_error.unwrap_or_else(|| anyhow!("pg_ctl start failed")))
    }

    /// A shell loop that stops the server and removes its directory once this process is gone.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        const SCRIPT: &str = r#"
parent="$1"; pg_ctl="$2"; data="$3"; dir="$4"; as_postgres="$5"
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ "$as_postgres" = yes ]; then
    runuser -u postgres -- "$pg_ctl" -D "$data" stop -m immediate
else
    "$pg_ctl" -D "$data" stop -m immediate
fi
rm -rf "$dir"
"#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("meridian-pg-watchdog")
            .arg(std::process::id().to_string())
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(if self.as_postgres_user { "yes" } else { "no" })
            .current_dir(&self.dir)
            // A watchdog holding the test's stdout open would keep `cargo test | tee` waiting.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning the PostgreSQL watchdog")?;
        *self.watchdog.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://meridian@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://meridian@127.0.0.1:{}/{db}", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log file, worth printing when a test fails.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("log")
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Creates a fresh database named `<prefix>_<pid>_<n>` and returns its URL. Unique across
    /// the tests of this process and across test processes sharing nothing but the machine.
    pub fn create_database(&self, name_prefix: &str) -> anyhow::Result<String> {
        let n = DATABASE_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut prefix: String = name_prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if prefix.is_empty() || prefix.starts_with(|c: char| c.is_ascii_digit()) {
            prefix.insert(0, 'd');
        }
        let suffix = format!("_{}_{n}", std::process::id());
        // PostgreSQL truncates identifiers to 63 bytes, which could make two names collide.
        prefix.truncate(63 - suffix.len());
        let name = format!("{prefix}{suffix}");
        run(self
            .client_command("createdb")
            .args(["-h", "127.0.0.1", "-U", "meridian", "-p"])
            .arg(self.port.to_string())
            .arg(&name))
        .with_context(|| format!("creating database {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL through `psql` against database `db` and returns its unaligned output.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let output = run(self
            .client_command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args(["-U", "meridian", "-p"])
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql))
        .with_context(|| format!("psql {sql:?} on {db}"))?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Restarts the server (`pg_ctl restart -m fast`), dropping every connection; for tests of
    /// how clients survive the database going away.
    pub fn restart(&self) -> anyhow::Result<()> {
        run(self
            .pg_ctl()
            // Without -l the new server would write to our pipe and `output()` would never end.
            .arg("-l")
            .arg(self.log_file())
            .args(["-m", "fast", "-w", "-t", "60", "restart"]))
        .context("pg_ctl restart failed")?;
        Ok(())
    }

    /// Stops the server like a crash would (`pg_ctl stop -m immediate`); see [`Self::resume`].
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop().context("pg_ctl stop failed")
    }

    /// Shuts the server down cleanly (`pg_ctl stop -m fast`: sessions are ended and a shutdown
    /// checkpoint is written), the first half of what [`Self::restart`] does; [`Self::resume`]
    /// is the second, after as long an outage as the caller wants. Unlike after [`Self::stop`],
    /// the start then runs no crash recovery, which fsyncs the whole data directory first and
    /// can take many seconds on a busy disk.
    pub fn stop_fast(&self) -> anyhow::Result<()> {
        run(self.pg_ctl().args(["-m", "fast", "-w", "-t", "60", "stop"]))
            .context("pg_ctl stop -m fast failed")?;
        Ok(())
    }

    /// Starts a server stopped by [`Self::stop`] or [`Self::stop_fast`] again, on the same port
    /// and data.
    pub fn resume(&self) -> anyhow::Result<()> {
        // Only `pg_ctl restart` remembers the previous options; `start` needs them again.
        run(&mut self.pg_ctl_start()).context("pg_ctl start failed")?;
        Ok(())
    }

    /// Freezes the whole server, the postmaster and every backend, with SIGSTOP: to its clients
    /// it looks like a hung machine or storage (connections stay open, nothing answers), which
    /// no restart shows. [`Self::thaw`] resumes it.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal_server(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes a server frozen by [`Self::freeze`].
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal_server(nix::sys::signal::Signal::SIGCONT)
    }

    /// Signals the postmaster first (a stopped postmaster forks no new backends), then its
    /// children as listed in `/proc`.
    fn signal_server(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        use nix::unistd::Pid;
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?;
        let postmaster: i32 = text
            .lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("no process id in {}", pid_file.display()))?;
        nix::sys::signal::kill(Pid::from_raw(postmaster), signal)
            .with_context(|| format!("{signal} to the postmaster {postmaster}"))?;
        for child in children_of(postmaster)? {
            // A backend may exit between listing and signalling; that is fine.
            let _ = nix::sys::signal::kill(Pid::from_raw(child), signal);
        }
        Ok(())
    }

    fn pg_ctl_stop(&self) -> anyhow::Result<()> {
        run(self.pg_ctl().args(["-m", "immediate", "-w", "stop"]))?;
        Ok(())
    }

    /// `pg_ctl` on our data directory.
    fn pg_ctl(&self) -> Command {
        let mut command = self.server_command("pg_ctl");
        command.arg("-D").arg(self.data_dir());
        command
    }

    /// `pg_ctl start` with our options: only `pg_ctl restart` remembers the previous ones.
    fn pg_ctl_start(&self) -> Command {
        let mut command = self.pg_ctl();
        command
            .arg("-o")
            .arg(&self.options)
            .arg("-l")
            .arg(self.log_file())
            .args(["-w", "-t", "60", "start"]);
        command
    }

    /// A server-side binary, run as `postgres` when we are root (PostgreSQL refuses root).
    fn server_command(&self, name: &str) -> Command {
        let binary = self.bin_dir.join(name);
        let mut command = if self.as_postgres_user {
            let mut command = Command::new("runuser");
            command
                .args(["-u", "postgres", "--"])
                .arg(binary.as_os_str());
            command
        } else {
            Command::new(binary.as_os_str())
        };
        // The postgres user may not be allowed into the caller's working directory.
        command.current_dir(&self.dir).stdin(Stdio::null());
        command
    }

    /// A client binary; clients may run as root.
    fn client_command(&self, name: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(name));
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("PGCONNECT_TIMEOUT", "10");
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if let Err(error) = self.pg_ctl_stop() {
            tracing::warn!("stopping the PostgreSQL test server: {error:#}");
        }
        let watchdog = self
            .watchdog
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(mut watchdog) = watchdog {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        // `tempdir` (owned servers) is dropped after this and removes the directory.
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, else what `pg_config --bindir` says.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    if let Some((_, bin)) = candidates.pop() {
        return Ok(bin);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if output.status.success() && bin.join("initdb").is_file() {
            return Ok(bin);
        }
    }
    bail!("{INSTALL_HINT}")
}

pub fn running_as_root() -> bool {
    match std::fs::metadata("/proc/self") {
        Ok(metadata) => metadata.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
            .unwrap_or(false),
    }
}

/// Runs a command to completion; a non-zero exit is an error carrying its output.
fn run(command: &mut Command) -> anyhow::Result<Output> {
    let program = command.get_program().to_owned();
    let args: Vec<&OsStr> = command.get_args().collect();
    let rendered = format!(
        "{} {}",
        program.to_string_lossy(),
        args.iter()
            .map(|arg| arg.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = command.output().map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            anyhow!("{rendered}: not found ({INSTALL_HINT})")
        } else {
            anyhow!("{rendered}: {error}")
        }
    })?;
    if !output.status.success() {
        bail!("{rendered}: {}", describe(&output));
    }
    Ok(output)
}

fn describe(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The ids of the processes whose parent is `parent`, from `/proc/<pid>/stat`.
pub fn children_of(parent: i32) -> anyhow::Result<Vec<i32>> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses, so split after the
        // last `)`. A process that exited meanwhile has no file any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<i32>().ok());
        if ppid == Some(parent) {
            children.push(pid);
        }
    }
    Ok(children)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_binaries_or_explains() {
        match find_bin_dir() {
            Ok(bin) => assert!(bin.join("pg_ctl").is_file()),
            Err(error) => assert!(error.to_string().contains("apt-get install")),
        }
    }

    #[test]
    fn owned_server_serves_sql_and_restarts() {
        let server = PostgresServer::start().expect("start");
        let url = server.create_database("Owned-Test").expect("createdb");
        let db = url.rsplit('/').next().expect("db name");
        assert!(db.starts_with("owned_test_"), "{db}");
        assert_eq!(server.psql(db, "SELECT 1 + 1").expect("psql"), "2");
        assert_eq!(
            server.psql(db, "SHOW fsync").expect("psql"),
            "on",
            "tests must exercise durable commits"
        );
        server.restart().expect("restart");
        assert_eq!(server.psql(db, "SELECT 3").expect("psql"), "3");
        server.stop().expect("stop");
        assert!(server.psql(db, "SELECT 1").is_err());
        server.resume().expect("resume");
        assert_eq!(server.psql(db, "SELECT 4").expect("psql"), "4");
        let dir = server.dir.clone();
        drop(server);
        assert!(!dir.exists(), "dropping the server removes its directory");
    }

    #[test]
    fn shared_server_gives_distinct_databases() {
        let server = PostgresServer::shared();
        let a = server.create_database("shared").expect("createdb");
        let b = server.create_database("shared").expect("createdb");
        assert_ne!(a, b);
        assert!(std::ptr::eq(server, PostgresServer::shared()));
    }
}
