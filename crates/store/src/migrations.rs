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
}
