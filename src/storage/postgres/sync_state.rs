//! The sync source on PostgreSQL: one page of fetched snapshots applied together with the
//! cursor that covers it, in one transaction, and the cursor read back when the next sync
//! starts.

use super::log;
use super::writer::{classified_row, lock_log, notify};
use crate::storage::delivery::Delivery;
use crate::storage::delivery::SYNC_SOURCE;
use crate::storage::model::SyncedPage;
use crate::storage::{Status, StorageError};
use deadpool_postgres::Transaction;

/// Applies every snapshot in order and stores `cursor` for `scope`, all or nothing; returns
/// what became of the snapshots and the newest event id once committed.
///
/// Each snapshot runs in its own savepoint and leaves a row only when it changed the
/// projection (or could not be used): a snapshot the projection already holds is `stale` and
/// its savepoint (its dedupe claims) is rolled back, so that repeated syncs do not fill the
/// log. A rebuild stays equal to live, as such a snapshot would be stale there too.
pub async fn apply_page(
    tx: &mut Transaction<'_>,
    scope: &str,
    deliveries: &[Delivery],
    cursor: Option<&str>,
    now_ms: i64,
) -> Result<(SyncedPage, i64), StorageError> {
    let first_id = lock_log(tx).await?;
    let mut next_id = first_id;
    let mut page = SyncedPage::default();
    for delivery in deliveries {
        let savepoint = tx.savepoint("snapshot").await?;
        let mut row = classified_row(&savepoint, next_id, delivery, &[]).await?;
        match row.status {
            Status::Applied | Status::Rejected => {
                if row.status == Status::Applied {
                    page.applied += 1;
                } else {
                    page.rejected += 1;
                }
                row.source = SYNC_SOURCE;
                log::insert(&savepoint, &[&row]).await?;
                savepoint.commit().await?;
                next_id += 1;
            }
            Status::Stale | Status::Duplicate | Status::Ignored => {
                page.stale += 1;
                savepoint.rollback().await?;
            }
        }
    }
    if let Some(cursor) = cursor {
        let statement = tx
            .prepare_cached(
                "INSERT INTO sync_cursors (scope, cursor, updated_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (scope) DO UPDATE SET
                     cursor = excluded.cursor, updated_ms = excluded.updated_ms",
            )
            .await?;
        tx.execute(&statement, &[&scope, &cursor, &now_ms]).await?;
    }
    let last_id = next_id - 1;
    if next_id > first_id {
        notify(tx, last_id).await?;
    }
    Ok((page, last_id))
}

/// The cursor the last sync of `scope` stored, if any.
pub async fn cursor(
    client: &tokio_postgres::Client,
    scope: &str,
) -> Result<Option<String>, StorageError> {
    Ok(client
        .query_opt(
            "SELECT cursor FROM sync_cursors WHERE scope = $1",
            &[&scope],
        )
        .await?
        .map(|row| row.get(0)))
}
