//! `meridian-pgserver`: a throwaway PostgreSQL server for the lab (demo, drills, benchmarks) and
//! the tests, run from the distribution's binaries in a temporary directory. PostgreSQL refuses to run as root and tests usually run as root, so the server runs
//! as the `postgres` system user (through `runuser`) when we are root. initdb and a start cost
//! two to three seconds, so tests share one server ([`PostgresServer::shared`]) and each test
//! takes a database of its own ([`PostgresServer::create_database`]): under nextest, which runs
//! every test in a process of its own, one server serves the whole run; under `cargo test`, one
//! per test binary. A watchdog shell process stops the server and removes its directory once
//! the run (or the test process) is gone, because a static is never dropped and a killed test
//! runs no destructors.
//!
//! Every server is ready to be a streaming-replication primary (see [`REPLICATION_SETTINGS`]);
//! [`replication`] builds standbys of it, makes them synchronous, reads `pg_stat_replication`
//! and promotes them, so tests and the lab can run a real replicated cluster.

mod replication;

pub use replication::{
    ApplicationName, ReplicationError, StandbyStatus, SyncState, SynchronousStandbys,
    WalSenderState,
};

use std::ffi::OsStr;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

const INSTALL_HINT: &str =
    "PostgreSQL binaries not found; install with apt-get install -y postgresql";

/// Ports picked by [`meridian_node::ports::free_loopback_port`] can be taken by someone else before the server binds.
const START_ATTEMPTS: usize = 5;

/// The role standbys replicate as (`LOGIN REPLICATION`, no superuser).
const REPLICATION_ROLE: &str = "replicator";

/// Appended to every server's `postgresql.conf`, so any server can be a primary and its base
/// backups (which copy the file) make standbys. Most equal PostgreSQL 15's defaults and are
/// spelled out because replication depends on them; the others bound or speed up replication.
const REPLICATION_SETTINGS: &str = "
# Written by meridian-pgserver: ready to be a streaming-replication primary or standby.
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# Every standby streams through a slot, so a stopped standby can catch up from where it was;
# the slot may not keep more than this, so a standby gone for good cannot fill the disk.
max_slot_wal_keep_size = 1GB
# A standby reports its replay position every second (not 10 s), so replay lag reads are fresh.
wal_receiver_status_interval = 1s
# A standby whose link broke (a partition, a primary restart) retries after 200 ms, not 5 s.
wal_retrieve_retry_interval = 200ms
";

/// The whole `pg_hba.conf`: a throwaway server trusts loopback, and only the replication role
/// may open replication connections.
const ACCESS_RULES: &str = "\
# Written by meridian-pgserver: a throwaway server trusts every loopback connection.
local   all           all                          trust
host    all           all           127.0.0.1/32   trust
local   replication   replicator                   trust
host    replication   replicator    127.0.0.1/32   trust
";

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
    /// Whose end the watchdog waits for.
    watch: Watch,
    /// The name a standby streams under (`None` for a server started as a primary).
    application_name: Option<ApplicationName>,
}

/// Whose end stops a server and removes its directory (by its watchdog, or its drop).
#[derive(Debug)]
enum Watch {
    /// The process that started it.
    Process,
    /// The test run's: the nextest process that runs every test process, and the lock file
    /// its test processes start the server under.
    Run { runner: u32, lock_file: PathBuf },
}

/// The nextest run this process belongs to, if any, reduced to characters safe in a path.
fn nextest_run_id() -> Option<String> {
    let run = std::env::var("NEXTEST_RUN_ID").ok()?;
    let run: String = run
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!run.is_empty()).then_some(run)
}

static SHARED: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
static DATABASE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PostgresServer {
    /// The server shared by every test of this nextest run (`NEXTEST_RUN_ID`), or of this test
    /// binary elsewhere, started on first use. It outlives the tests and is stopped by its
    /// watchdog when the run (or the process) ends. Tests must treat it as shared: create a
    /// database, never stop, restart or freeze it (start an owned server for that).
    ///
    /// # Panics
    /// If the server cannot be started; every later call panics with the same message.
    pub fn shared() -> &'static PostgresServer {
        let server = SHARED.get_or_init(|| {
            let server = match nextest_run_id() {
                Some(run) => PostgresServer::shared_by_run(&run),
                None => PostgresServer::start_inner(false),
            };
            server.map_err(|error| format!("{error:#}"))
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
        let server = Self::unstarted(owned)?;
        let server = server.launch(
            |server| server.init_cluster(),
            |server| server.create_replication_role(),
        )?;
        tracing::info!(server = %server, "PostgreSQL test server started");
        Ok(server)
    }

    /// The run's server: the first test process of the run starts it in a directory named
    /// after the run, under a file lock, and writes its port there; the others find the port
    /// and use it. Its watchdog waits for nextest (the parent of every test process), not for
    /// the test that happened to start it. A server found gone (a test killed it, against the
    /// rules above) is replaced rather than failing every later test.
    fn shared_by_run(run: &str) -> anyhow::Result<PostgresServer> {
        let dir = std::env::temp_dir().join(format!("meridian-pg-run-{run}"));
        let lock_path = dir.with_extension("lock");
        let lock = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        // Held until this returns: the processes of the run start one server between them.
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let port_file = dir.join("port");
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|port| port.trim().parse::<u16>().ok())
        {
            let found = Self::found(dir.clone(), port)?;
            let address = found.address();
            if std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok() {
                return Ok(found);
            }
            tracing::warn!(%address, "the run's shared PostgreSQL server is gone; starting another");
            // Dropping it stops whatever is left of it.
            drop(found);
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut server = Self::unstarted_in(dir, None)?;
        server.watch = Watch::Run {
            runner: std::os::unix::process::parent_id(),
            lock_file: lock_path,
        };
        let server = server.launch(
            |server| server.init_cluster(),
            |server| server.create_replication_role(),
        )?;
        std::fs::write(&port_file, server.port.to_string())
            .with_context(|| format!("writing {}", port_file.display()))?;
        tracing::info!(server = %server, run, "PostgreSQL server of the test run started");
        Ok(server)
    }

    /// The run's server as another process started it. Nothing of it is this process's to
    /// stop: a static is never dropped, and `shared_by_run` drops it only when it is gone.
    fn found(dir: PathBuf, port: u16) -> anyhow::Result<PostgresServer> {
        let mut server = Self::in_dir(dir, None)?;
        server.port = port;
        Ok(server)
    }

    /// A server that does not run yet: the binaries found and an empty temp dir owned by the
    /// user the server will run as.
    fn unstarted(owned: bool) -> anyhow::Result<PostgresServer> {
        let tempdir = tempfile::Builder::new()
            .prefix("meridian-pg-")
            .tempdir()
            .context("creating the PostgreSQL temp dir")?;
        let dir = tempdir.path().to_path_buf();
        if owned {
            Self::unstarted_in(dir, Some(tempdir))
        } else {
            // The watchdog removes it; a TempDir in a static would never be dropped anyway.
            Self::unstarted_in(tempdir.keep(), None)
        }
    }

    /// A server that does not run yet in the existing directory `dir`, given to the user the
    /// server will run as.
    fn unstarted_in(
        dir: PathBuf,
        tempdir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<PostgresServer> {
        let server = Self::in_dir(dir, tempdir)?;
        if server.as_postgres_user {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(&server.dir))
            .context("giving the temp dir to the postgres user (does the user exist?)")?;
        }
        Ok(server)
    }

    /// The server of directory `dir` as this process starts out knowing it: no port, no
    /// watchdog yet, and one (if launched) that waits for this process.
    fn in_dir(dir: PathBuf, tempdir: Option<tempfile::TempDir>) -> anyhow::Result<PostgresServer> {
        Ok(PostgresServer {
            bin_dir: find_bin_dir()?,
            dir,
            port: 0,
            options: String::new(),
            as_postgres_user: running_as_root(),
            tempdir,
            watchdog: Mutex::new(None),
            watch: Watch::Process,
            application_name: None,
        })
    }

    /// Fills the data directory (`prepare`), starts the server on a free port, runs `started`
    /// against it, and only then hands it to a watchdog. Until the watchdog runs, a failure
    /// must not leave a server or a directory behind.
    fn launch(
        mut self,
        prepare: impl FnOnce(&Self) -> anyhow::Result<()>,
        started: impl FnOnce(&Self) -> anyhow::Result<()>,
    ) -> anyhow::Result<PostgresServer> {
        let result = prepare(&self)
            .and_then(|()| self.start_on_free_port())
            .and_then(|()| started(&self))
            .and_then(|()| self.spawn_watchdog());
        if let Err(error) = result {
            let leftover = self.tempdir.is_none().then(|| self.dir.clone());
            // Drop stops the server if it runs; an owned temp dir goes with it.
            drop(self);
            if let Some(dir) = leftover {
                let _ = std::fs::remove_dir_all(dir);
            }
            return Err(error);
        }
        Ok(self)
    }

    /// `initdb`, then the settings and access rules that let any server become a primary or a
    /// standby (see [`REPLICATION_SETTINGS`]).
    fn init_cluster(&self) -> anyhow::Result<()> {
        run(self
            .server_command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-A", "trust", "-U", "meridian", "-E", "UTF8", "--locale=C"])
            // Skipping initdb's own fsync of the fresh cluster only risks the cluster itself,
            // which is throwaway; the server still runs with fsync=on.
            .arg("--no-sync"))
        .with_context(|| format!("initdb failed for {self}"))?;
        self.append_to_data_file("postgresql.conf", REPLICATION_SETTINGS)?;
        self.write_data_file("pg_hba.conf", ACCESS_RULES)?;
        Ok(())
    }

    /// The role standbys connect as; only it may open replication connections (`ACCESS_RULES`).
    fn create_replication_role(&self) -> anyhow::Result<()> {
        self.psql(
            "postgres",
            &format!("CREATE ROLE {REPLICATION_ROLE} WITH LOGIN REPLICATION"),
        )
        .with_context(|| format!("creating the replication role on {self}"))?;
        Ok(())
    }

    /// Starts the prepared data directory on a port nobody holds, retrying when another process
    /// took the port between picking and binding.
    fn start_on_free_port(&mut self) -> anyhow::Result<()> {
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
                "pg_ctl start failed for {self}: {}\n--- server log ---\n{}",
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

    /// Writes `contents` to a file in the data directory, owned by the server's user.
    fn write_data_file(&self, name: &str, contents: &str) -> anyhow::Result<()> {
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.give_to_server_user(&path)
    }

    /// Appends `contents` to a file in the data directory, owned by the server's user.
    fn append_to_data_file(&self, name: &str, contents: &str) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.data_dir().join(name);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.write_all(contents.as_bytes())
            .with_context(|| format!("appending to {}", path.display()))?;
        self.give_to_server_user(&path)
    }

    /// A file we (root) wrote belongs to `postgres`, like the directory holding it, so that the
    /// server may rewrite it (`ALTER SYSTEM`) or remove it (`standby.signal` on promotion).
    fn give_to_server_user(&self, path: &Path) -> anyhow::Result<()> {
        if !self.as_postgres_user {
            return Ok(());
        }
        let owner = std::fs::metadata(&self.dir)
            .with_context(|| format!("reading the owner of {}", self.dir.display()))?;
        std::os::unix::fs::chown(path, Some(owner.uid()), Some(owner.gid()))
            .with_context(|| format!("giving {} to the postgres user", path.display()))
    }

    /// A shell loop that stops the server and removes its directory once this process is gone.
    fn spawn_watchdog(&self) -> anyhow::Result<()> {
        const SCRIPT: &str = r#"
parent="$1"; pg_ctl="$2"; data="$3"; dir="$4"; as_postgres="$5"; lock_file="$6"
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
if [ "$as_postgres" = yes ]; then
    runuser -u postgres -- "$pg_ctl" -D "$data" stop -m immediate
else
    "$pg_ctl" -D "$data" stop -m immediate
fi
rm -rf "$dir"
[ -z "$lock_file" ] || rm -f "$lock_file"
"#;
        let (watched, lock_file) = match &self.watch {
            Watch::Process => (std::process::id(), PathBuf::new()),
            Watch::Run { runner, lock_file } => (*runner, lock_file.clone()),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("meridian-pg-watchdog")
            .arg(watched.to_string())
            .arg(self.bin_dir.join("pg_ctl"))
            .arg(self.data_dir())
            .arg(&self.dir)
            .arg(if self.as_postgres_user { "yes" } else { "no" })
            .arg(lock_file)
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

    /// `127.0.0.1:PORT`, where the server listens (and what a standby or a proxy connects to).
    pub fn address(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The name this server streams under if it was started as a standby
    /// ([`Self::start_standby`]); it keeps the name after a promotion.
    pub fn application_name(&self) -> Option<&ApplicationName> {
        self.application_name.as_ref()
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
        run(&mut self.pg_ctl_start()).with_context(|| {
            let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
            format!(
                "pg_ctl start of {self} failed\n--- server log ---\n{}",
                tail(&log, 20)
            )
        })?;
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

    /// Crashes the server: SIGKILL to the postmaster and every process it forked, at once, as
    /// a lost machine would. Unlike [`Self::stop`] (`-m immediate`, which still tells the
    /// backends to quit and lets the postmaster exit cleanly), nobody gets to finish anything:
    /// no backend answers a commit it had not answered yet, no WAL sender sends another byte.
    /// [`Self::resume`] starts it again with crash recovery.
    pub fn kill9(&self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let postmaster = self.postmaster_pid()?;
        // Listed before the kill: once the postmaster is gone its children belong to init.
        let children = children_of(postmaster)?;
        kill(Pid::from_raw(postmaster), Signal::SIGKILL)
            .with_context(|| format!("SIGKILL to the postmaster {postmaster} of {self}"))?;
        for &child in &children {
            // A backend may exit between listing and signalling; that is fine.
            let _ = kill(Pid::from_raw(child), Signal::SIGKILL);
        }
        // A start must not find a killed backend still attached to the shared memory.
        for pid in std::iter::once(postmaster).chain(children) {
            wait_until_dead(pid).with_context(|| format!("killing {self}"))?;
        }
        // The postmaster was orphaned when pg_ctl exited, and an init that does not reap (as in
        // some containers) leaves it a zombie: PostgreSQL's lock-file checks would then take
        // the pid in its lock files for a live server and refuse to start. It is dead, so its
        // lock files (data directory and Unix socket) are stale.
        if process_state(postmaster) == Some('Z') {
            let socket_lock = self.dir.join(format!(".s.PGSQL.{}.lock", self.port));
            for lock in [self.data_dir().join("postmaster.pid"), socket_lock] {
                match std::fs::remove_file(&lock) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => {
                        return Err(error)
                            .with_context(|| format!("removing the stale {}", lock.display()))
                    }
                }
            }
        }
        tracing::info!(server = %self, "PostgreSQL killed with SIGKILL");
        Ok(())
    }

    /// Signals the postmaster first (a stopped postmaster forks no new backends), then its
    /// children as listed in `/proc`.
    fn signal_server(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        use nix::unistd::Pid;
        let postmaster = self.postmaster_pid()?;
        nix::sys::signal::kill(Pid::from_raw(postmaster), signal)
            .with_context(|| format!("{signal} to the postmaster {postmaster} of {self}"))?;
        for child in children_of(postmaster)? {
            // A backend may exit between listing and signalling; that is fine.
            let _ = nix::sys::signal::kill(Pid::from_raw(child), signal);
        }
        Ok(())
    }

    /// The postmaster's process id, from the first line of `postmaster.pid`.
    fn postmaster_pid(&self) -> anyhow::Result<i32> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {} (is {self} running?)", pid_file.display()))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .with_context(|| format!("no process id in {}", pid_file.display()))
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

impl fmt::Display for PostgresServer {
    /// How errors and logs name a server: where it listens and where its data is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL on 127.0.0.1:{}", self.port)?;
        if let Some(name) = &self.application_name {
            write!(f, " (standby {name})")?;
        }
        write!(f, " with data in {}", self.data_dir().display())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // No pid file: the server never started (a failed launch), so there is nothing to stop.
        if self.data_dir().join("postmaster.pid").exists() {
            if let Err(error) = self.pg_ctl_stop() {
                tracing::warn!("stopping the PostgreSQL test server: {error:#}");
            }
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

/// How long a SIGKILLed process may take to die.
const DEATH_TIMEOUT: Duration = Duration::from_secs(10);

/// The state letter of process `pid` from `/proc/<pid>/stat` (`Z` for a zombie), `None` if there
/// is no such process.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`; comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until process `pid` is gone or a zombie (dead, not yet reaped).
fn wait_until_dead(pid: i32) -> anyhow::Result<()> {
    let started = Instant::now();
    while !matches!(process_state(pid), None | Some('Z')) {
        if started.elapsed() > DEATH_TIMEOUT {
            bail!("process {pid} still alive {DEATH_TIMEOUT:?} after SIGKILL");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
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
    fn owned_server_serves_sql_restarts_and_survives_kill9() {
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
        server.kill9().expect("kill -9");
        assert!(server.psql(db, "SELECT 1").is_err(), "alive after kill -9");
        server
            .resume()
            .expect("resume after kill -9 (crash recovery)");
        assert_eq!(server.psql(db, "SELECT 5").expect("psql"), "5");
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

    /// What two test processes of one nextest run do (here two calls stand for them, as each
    /// process calls it once): the second finds the first's server; a server found gone is
    /// replaced, not reported to every later test.
    #[test]
    fn the_processes_of_a_run_share_one_server_and_replace_a_dead_one() {
        let run = format!("selftest-{}", std::process::id());
        let first = PostgresServer::shared_by_run(&run).expect("the first process starts it");
        let second = PostgresServer::shared_by_run(&run).expect("the second one finds it");
        assert_eq!(first.port(), second.port());
        assert!(
            second.watchdog.lock().expect("lock").is_none(),
            "nothing to watch twice"
        );
        let a = first.create_database("run").expect("createdb");
        let b = second.create_database("run").expect("createdb");
        assert_ne!(a, b);
        second.psql("postgres", "SELECT 1").expect("both reach it");

        // A test broke the rules and stopped it: the next process starts another.
        first.pg_ctl_stop().expect("stopped");
        let third = PostgresServer::shared_by_run(&run).expect("a new one is started");
        assert_eq!(
            third
                .psql("postgres", "SELECT 1")
                .expect("it serves")
                .trim(),
            "1"
        );
        third.pg_ctl_stop().expect("stopped");
        // All three name one data directory, so no drop may stop "its" server; the watchdogs
        // remove the directory and the lock when the run ends.
        for server in [first, second, third] {
            std::mem::forget(server);
        }
    }
}
