//! The sync source's SQL: one page of fetched snapshots applied together with the cursor that
//! covers it, in one transaction, and the cursor read back when the next sync starts.

use super::Status;
use super::StorageError;
use super::projection::CustomerProjection;
use super::projection_db;
use super::writer;
use crate::storage::delivery::Delivery;
use crate::storage::model::SyncedPage;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

/// Applies every snapshot in order and stores `cursor` for `scope`, all or nothing.
pub fn apply_page(
    conn: &mut Connection,
    scope: &str,
    deliveries: &[Delivery],
    cursor: Option<&str>,
    now_ms: i64,
) -> Result<SyncedPage, StorageError> {
    // The page is classified against the projection: it must reflect the whole log.
    projection_db::catch_up(conn)?;
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read under the write lock, so ids stay right even if another process wrote meanwhile.
    let mut next_id: i64 =
        tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM events", [], |r| {
            r.get(0)
        })?;
    let projection = CustomerProjection;
    let mut page = SyncedPage::default();
    for delivery in deliveries {
        match writer::ingest_synced(&mut tx, &projection, next_id, delivery)? {
            Status::Applied => {
                page.applied += 1;
                next_id += 1;
            }
            Status::Rejected => {
                page.rejected += 1;
                next_id += 1;
            }
            Status::Stale | Status::Duplicate | Status::Ignored => page.stale += 1,
        }
    }
    projection_db::set_position(&tx, next_id - 1)?;
    if let Some(cursor) = cursor {
        tx.prepare_cached(
            "INSERT INTO sync_cursors (scope, cursor, updated_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (scope) DO UPDATE SET
                 cursor = excluded.cursor, updated_ms = excluded.updated_ms",
        )?
        .execute(params![scope, cursor, now_ms])?;
    }
    tx.commit()?;
    Ok(page)
}

/// The cursor the last sync of `scope` stored, if any.
pub fn cursor(conn: &Connection, scope: &str) -> Result<Option<String>, StorageError> {
    Ok(conn
        .prepare_cached("SELECT cursor FROM sync_cursors WHERE scope = ?1")?
        .query_row([scope], |r| r.get(0))
        .optional()?)
}
