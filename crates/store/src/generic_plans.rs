//! Test support: how PostgreSQL plans a store's reads once a connection has settled on a
//! *generic* plan (from a prepared statement's sixth execution, when that looks no dearer) on
//! tables that were never analysed — a fresh database, or one whose statistics a restart lost.
//! Such a plan is chosen without the parameters' values and on guessed row counts, so a
//! condition that reads well with statistics can become a scan of a whole table that slows
//! with every row (the sequencer's read of recipients did, after a database restart). Each
//! store's tests fill its tables and hold its hot reads to their indexes through [`assert_indexed`].

use std::future::Future;

use sqlx::{Connection, PgConnection};

use crate::{StorageConfig, StoreError};

/// A fresh database `name` on the shared test server, its schema made by `open` (a store's
/// constructor; the store is dropped), and one connection to it, for the test to fill.
pub(crate) async fn migrated_database<Store, Opened>(
    name: &str,
    open: impl FnOnce(StorageConfig) -> Opened,
) -> PgConnection
where
    Opened: Future<Output = Result<Store, StoreError>>,
{
    let url = meridian_testkit::PostgresServer::shared()
        .create_database(name)
        .expect("create database");
    let store = open(StorageConfig::Postgres {
        url: url.clone(),
        max_connections: 2,
    })
    .await
    .expect("open the store");
    drop(store);
    PgConnection::connect(&url).await.expect("connect")
}

/// One read as the store sends it: a name for `PREPARE`, its parameters' types, its text and
/// values to `EXPLAIN` it with.
pub(crate) struct Read<'a> {
    pub name: &'a str,
    pub parameter_types: &'a str,
    pub sql: String,
    pub arguments: &'a str,
}

/// Asserts that no read's generic plan scans any of `tables` whole.
pub(crate) async fn assert_indexed(
    connection: &mut PgConnection,
    reads: &[Read<'_>],
    tables: &[&str],
) {
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *connection)
        .await
        .expect("force generic plans");
    for read in reads {
        let Read {
            name,
            parameter_types,
            sql,
            arguments,
        } = read;
        sqlx::raw_sql(&format!("PREPARE {name}({parameter_types}) AS {sql}"))
            .execute(&mut *connection)
            .await
            .unwrap_or_else(|error| panic!("prepare {name}: {error}"));
        let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE {name}({arguments})"))
            .fetch_all(&mut *connection)
            .await
            .unwrap_or_else(|error| panic!("explain {name}: {error}"));
        let plan = plan.join("\n");
        for table in tables {
            assert!(
                !plan.contains(&format!("Seq Scan on {table} ")),
                "{name} reads all of {table}:\n{plan}"
            );
        }
    }
}
