//! The schema migrations, embedded in the binary: one [`Migrator`] per dialect over the SQL files
//! under `migrations/<dialect>/`, which `build.rs` lists (see there for why not `sqlx::migrate!`).
//! SQLite's runs on a node's file when its pool opens; PostgreSQL's on whichever server a
//! search finds to be the writer.

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration file, as `build.rs` found it.
pub(crate) struct MigrationFile {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

pub(crate) static SQLITE_MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE_FILES));
pub(crate) static POSTGRES_MIGRATOR: LazyLock<Migrator> =
    LazyLock::new(|| migrator(POSTGRES_FILES));

/// The migrator `sqlx::migrate!` would build over the same files: the checksum (of the SQL
/// text) is what sqlx compares with a database's applied migrations, so databases migrated by
/// earlier builds stay valid.
fn migrator(files: &'static [MigrationFile]) -> Migrator {
    let migrations = files
        .iter()
        .map(|file| {
            Migration::new(
                file.version,
                Cow::Borrowed(file.description),
                MigrationType::Simple,
                Cow::Borrowed(file.sql),
                file.sql.starts_with("-- no-transaction"),
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is on disk now, read the way sqlx's own resolver reads it.
    fn on_disk(dialect: &str) -> Vec<(i64, String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(dialect);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("the migrations directory")
            .map(|entry| {
                let path = entry.expect("a directory entry").path();
                let name = path
                    .file_name()
                    .expect("a file")
                    .to_string_lossy()
                    .to_string();
                let (version, rest) = name.split_once('_').expect("<version>_<description>");
                let description = rest.trim_end_matches(".sql").replace('_', " ");
                let sql = std::fs::read_to_string(&path).expect("readable");
                (
                    version.parse().expect("an integer version"),
                    description,
                    sql,
                )
            })
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_file_is_embedded_in_version_order_with_its_checksum() {
        for (dialect, migrator) in [
            ("sqlite", &*SQLITE_MIGRATOR),
            ("postgres", &*POSTGRES_MIGRATOR),
        ] {
            let files = on_disk(dialect);
            assert!(!files.is_empty(), "{dialect}: no migrations found");
            let embedded: Vec<_> = migrator
                .iter()
                .map(|m| (m.version, m.description.to_string(), m.sql.to_string()))
                .collect();
            assert_eq!(
                embedded, files,
                "{dialect}: the binary embeds what is on disk"
            );
            for migration in migrator.iter() {
                let expected = Migration::new(
                    migration.version,
                    migration.description.clone(),
                    MigrationType::Simple,
                    migration.sql.clone(),
                    false,
                );
                assert_eq!(migration.checksum, expected.checksum);
                assert!(
                    !migration.no_tx,
                    "{dialect}: every migration runs in a transaction"
                );
            }
        }
    }

    /// 0012 rebuilds `participant_transactions` on SQLite (it cannot drop a UNIQUE constraint
    /// in place): a database written before it keeps every row and column through the
    /// upgrade, and its index on `committed_at`; a transaction id may repeat after it.
    #[tokio::test]
    async fn the_transactions_table_rebuilt_by_0012_keeps_its_rows() {
        use crate::participant::rows::TransactionRow;
        use sqlx::Connection;
        let dir = tempfile::tempdir().expect("temp dir");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("upgrade.db"))
            .create_if_missing(true);
        let mut db = sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("open");
        let before_0012 = SQLITE_FILES
            .iter()
            .position(|file| file.version >= 12)
            .expect("0012 exists");
        migrator(&SQLITE_FILES[..before_0012])
            .run(&mut db)
            .await
            .expect("the migrations before 0012");
        async fn insert(
            db: &mut sqlx::SqliteConnection,
            row: &TransactionRow,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(
                "INSERT INTO participant_transactions (ledger_offset, transaction_id, \
                 request_id, user_id, command_id, informees, tree, committed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(row.0)
            .bind(&row.1)
            .bind(row.2)
            .bind(&row.3)
            .bind(&row.4)
            .bind(&row.5)
            .bind(&row.6)
            .bind(row.7)
            .execute(db)
            .await
            .map(drop)
        }
        let rows: Vec<TransactionRow> = vec![
            (
                1,
                "tx-1".into(),
                10,
                Some("alice".into()),
                Some("cmd-1".into()),
                r#"["alice"]"#.into(),
                "{}".into(),
                Some(11),
            ),
            (
                2,
                "tx-2".into(),
                20,
                None,
                None,
                r#"["bob"]"#.into(),
                r#"{"roots":[]}"#.into(),
                None,
            ),
        ];
        let same_id_again: TransactionRow = (
            3,
            "tx-1".into(),
            30,
            None,
            None,
            "[]".into(),
            "{}".into(),
            None,
        );
        for row in &rows {
            insert(&mut db, row).await.expect("a row in the old table");
        }
        insert(&mut db, &same_id_again)
            .await
            .expect_err("before 0012 a transaction id is unique");

        SQLITE_MIGRATOR.run(&mut db).await.expect("0012 on top");

        let kept: Vec<TransactionRow> = sqlx::query_as(
            "SELECT ledger_offset, transaction_id, request_id, user_id, command_id, informees, \
             tree, committed_at FROM participant_transactions ORDER BY ledger_offset",
        )
        .fetch_all(&mut db)
        .await
        .expect("the rebuilt table");
        assert_eq!(kept, rows);
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE type = 'index' \
             AND tbl_name = 'participant_transactions' ORDER BY name",
        )
        .fetch_all(&mut db)
        .await
        .expect("indexes");
        assert_eq!(indexes, ["participant_transactions_committed"]);
        insert(&mut db, &same_id_again)
            .await
            .expect("after 0012 a transaction id may repeat");
    }
}
