//! SQL against one member's server: connecting with a bound, and the write probe that decides
//! whether a leader-key holder really is a writer. A primary that is up but cannot commit (its
//! server is down, still in recovery, or waiting for a synchronous standby in strict mode)
//! must not count as the writer, and only a real commit shows that.

use std::time::Duration;

use anyhow::{anyhow, Context};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::{ConnectOptions, Connection};

use crate::config::SUPERUSER;

/// Connecting and probing over loopback takes milliseconds; a frozen server must not hang us.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn connect_options(pg_port: u16, password: &str, db: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .host("127.0.0.1")
        .port(pg_port)
        .username(SUPERUSER)
        .password(password)
        .database(db)
        .ssl_mode(PgSslMode::Disable)
        .disable_statement_logging()
}

/// A connection to the member's server, within [`PROBE_TIMEOUT`].
pub async fn connect(pg_port: u16, password: &str, db: &str) -> anyhow::Result<PgConnection> {
    tokio::time::timeout(
        PROBE_TIMEOUT,
        PgConnection::connect_with(&connect_options(pg_port, password, db)),
    )
    .await
    .map_err(|_| anyhow!("connecting took over {PROBE_TIMEOUT:?}"))?
    .with_context(|| format!("connecting to 127.0.0.1:{pg_port}"))
}

/// `Ok(())` if the server is a primary and commits a transaction within [`PROBE_TIMEOUT`];
/// else why not. `txid_current()` assigns a transaction id, so its commit writes a commit
/// record and, in synchronous mode, waits for the synchronous standby like any write.
pub async fn commits(pg_port: u16, password: &str) -> anyhow::Result<()> {
    let probe = async {
        let mut connection = connect(pg_port, password, "postgres").await?;
        let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
            .fetch_one(&mut connection)
            .await
            .context("SELECT pg_is_in_recovery()")?;
        if in_recovery {
            return Err(anyhow!("the server is a standby (in recovery)"));
        }
        sqlx::query("SELECT txid_current()")
            .execute(&mut connection)
            .await
            .context("committing a probe transaction")?;
        let _ = connection.close().await;
        Ok(())
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .map_err(|_| anyhow!("no commit within {PROBE_TIMEOUT:?}"))?
}
