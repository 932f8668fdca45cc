//! Versioned schema migrations for PostgreSQL, recorded in `schema_migrations`.
//!
//! Every daemon migrates at start-up. The whole run is one transaction under a transaction-level
//! advisory lock, so that daemons starting at once take turns: the first applies what is
//! missing, the others then find nothing left to do. A migration that has been released is
//! never edited; a change goes into a new file with the next number.

use crate::clock::now_ms;
use crate::storage::StorageError;
use tokio_postgres::Client;

/// The migrations in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "0001_schema.sql",
        include_str!("migrations/0001_schema.sql"),
    ),
    (
        2,
        "0002_handler_leases.sql",
        include_str!("migrations/0002_handler_leases.sql"),
    ),
    (
        3,
        "0003_customer_list_order.sql",
        include_str!("migrations/0003_customer_list_order.sql"),
    ),
];

/// Taken for the migration run alone; the other advisory locks of the backend use other keys.
const MIGRATION_LOCK: i64 = 0x7265_6269_6c6c_7901;

/// Applies every migration the database has not run yet; returns how many ran.
pub async fn migrate(client: &mut Client) -> Result<usize, StorageError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // The second daemon to start would otherwise be told, as a notice, that the table exists.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_ms BIGINT NOT NULL
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut ran = 0;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_ms) VALUES ($1, $2, $3)",
            &[version, name, &now_ms()],
        )
        .await?;
        tracing::info!(migration = name, "PostgreSQL schema migrated");
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_follow_the_file_names_in_order() {
        for (i, (version, name, _)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1);
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }
}
