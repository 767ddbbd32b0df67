//! A database failover played on plain PostgreSQL servers, for the tests of stores and nodes
//! that follow the writer among the hosts of a multi-host URL: a server made read-only and
//! writable again (`default_transaction_read_only` for the whole server, as a demoted primary
//! refuses writes), waiting until no transaction that began before that can still commit, and
//! copying a database from one server to another (what replication would have done) — under
//! another name first, renamed when complete, so no client ever sees half a copy.
//!
//! Statements that must run on a read-only server (the copy, the rename) carry
//! `PGOPTIONS=-c default_transaction_read_only=off`: a session's own setting wins over the
//! server's.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use meridian_pgserver::PostgresServer;

/// Lets a client session write on a server made read-only.
const WRITABLE_SESSION: &str = "-c default_transaction_read_only=off";

/// Makes the whole `server` read-only (`ALTER SYSTEM SET default_transaction_read_only = on`
/// and a reload) or writable again. Sessions pick the setting up before their next statement;
/// a transaction already running keeps what it began with (see [`wait_for_writes_to_end`]).
pub fn set_read_only(server: &PostgresServer, read_only: bool) -> anyhow::Result<()> {
    let statement = if read_only {
        "ALTER SYSTEM SET default_transaction_read_only = on"
    } else {
        "ALTER SYSTEM RESET default_transaction_read_only"
    };
    // ALTER SYSTEM runs outside a transaction block: one statement per call.
    server.psql("postgres", statement)?;
    server.psql("postgres", "SELECT pg_reload_conf()")?;
    Ok(())
}

/// Waits (up to `timeout`) until no transaction on `database` began before `server` was made
/// read-only, so nothing more can commit there: the reload reaches the backends within
/// moments, and every transaction that begins after that is read-only.
pub fn wait_for_writes_to_end(
    server: &PostgresServer,
    database: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    // Generous for a signal to reach every backend of a loaded machine.
    std::thread::sleep(Duration::from_millis(500));
    let since = server.psql("postgres", "SELECT now()")?;
    let started = Instant::now();
    loop {
        let open = server.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' \
                 AND xact_start < '{since}'::timestamptz"
            ),
        )?;
        if open == "0" {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("{open} transactions on {database} still open after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies `database` from `from` to `to`, replacing it there (either server may be
/// read-only): dumped, restored as `<database>_copy`, then renamed, so a client connecting to
/// `to` meanwhile finds no database of that name rather than a partial one.
pub fn copy_database(
    from: &PostgresServer,
    to: &PostgresServer,
    database: &str,
) -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let dump = dir.join(format!("{database}.dump"));
    let copy = format!("{database}_copy");
    client(from, "pg_dump")
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(database)
        .output_checked()?;
    drop_database(to, &copy)?;
    writable_psql(to, &format!("CREATE DATABASE \"{copy}\""))?;
    client(to, "pg_restore")
        .args(["--no-owner", "-d", &copy])
        .arg(&dump)
        .env("PGOPTIONS", WRITABLE_SESSION)
        .output_checked()?;
    drop_database(to, database)?;
    writable_psql(
        to,
        &format!("ALTER DATABASE \"{copy}\" RENAME TO \"{database}\""),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Drops `database` on `server` if it exists, ending its sessions.
pub fn drop_database(server: &PostgresServer, database: &str) -> anyhow::Result<()> {
    writable_psql(
        server,
        &format!("DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"),
    )
}

fn writable_psql(server: &PostgresServer, sql: &str) -> anyhow::Result<()> {
    client(server, "psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            sql,
        ])
        .env("PGOPTIONS", WRITABLE_SESSION)
        .output_checked()?;
    Ok(())
}

/// A client binary of `server`'s installation, pointed at it as the `meridian` superuser.
fn client(server: &PostgresServer, name: &str) -> Command {
    let mut command = Command::new(server.bin_dir().join(name));
    command
        .args(["-h", "127.0.0.1", "-U", "meridian", "-p"])
        .arg(server.port().to_string())
        .stdin(Stdio::null())
        .env("PGCONNECT_TIMEOUT", "10");
    command
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("meridian-copy-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

trait OutputChecked {
    fn output_checked(&mut self) -> anyhow::Result<Output>;
}

impl OutputChecked for Command {
    /// Runs to completion; a failure carries the program and its stderr.
    fn output_checked(&mut self) -> anyhow::Result<Output> {
        let program = Path::new(self.get_program())
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let output = self
            .output()
            .with_context(|| format!("running {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(output)
    }
}
