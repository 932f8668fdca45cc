//! Recomputing the projection and the dedupe keys from the event log on PostgreSQL, with the
//! same rules and guarantees as SQLite's rebuild (see `sqlite::writer::rebuild_projection`):
//! every stored body replayed in id order (commit order, across daemons) through the live
//! rules, statuses left as history, keys of pruned events kept, all or nothing. It holds the
//! log's lock throughout, so no daemon records an event in the middle of it.

use super::writer::{classify, lock_log};
use crate::storage::StorageError;
use crate::storage::delivery::prepare;
use crate::storage::delivery::{EventRow, parse_stored};
use crate::storage::model::RebuildReport;
use deadpool_postgres::Transaction;

/// Events replayed between two progress reports.
const PROGRESS_EVERY: u64 = 1024;
/// Bodies read per query, so that memory stays bounded whatever the log's size.
const PAGE: i64 = 512;

pub async fn rebuild(
    tx: &Transaction<'_>,
    skip_unparsable: bool,
    progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RebuildReport, StorageError> {
    lock_log(tx).await?;
    let missing = pruned_foundations(tx).await?;
    RebuildReport::check_foundations(&missing)?;
    tx.batch_execute(
        "DELETE FROM customers;
         DELETE FROM dedupe_keys WHERE event_id IN (SELECT id FROM events WHERE body IS NOT NULL);",
    )
    .await?;
    let to_replay: i64 = tx
        .query_one(
            "SELECT COUNT(*) FROM events WHERE body IS NOT NULL AND status <> 'rejected'",
            &[],
        )
        .await?
        .get(0);
    let to_replay = to_replay as u64;
    let mut report = RebuildReport::default();
    progress(0, to_replay);
    let mut after = i64::MIN;
    loop {
        let rows = tx
            .query(
                "SELECT id, body, source FROM events
                 WHERE body IS NOT NULL AND status <> 'rejected' AND id > $1
                 ORDER BY id LIMIT $2",
                &[&after, &PAGE],
            )
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.get(0);
        for row in rows {
            let id: i64 = row.get(0);
            let body: Vec<u8> = row.get(1);
            let source: String = row.get(2);
            let Ok(event) = parse_stored(&body, &source) else {
                report.skipped_unparsable.push(id);
                continue;
            };
            let (keys, prepared) = prepare(&body, Some(&event));
            let mut scratch = EventRow::new(id, 0, None);
            classify(tx, &mut scratch, &keys, &event, &prepared, &[]).await?;
            report.replayed += 1;
            if report.replayed % PROGRESS_EVERY == 0 {
                progress(report.replayed, to_replay);
            }
        }
    }
    progress(report.replayed, to_replay);
    report.checked(skip_unparsable)
}

/// Applied events whose bodies were pruned although the projection in place rests on them: a
/// rebuild could not reproduce it without them.
async fn pruned_foundations(tx: &Transaction<'_>) -> Result<Vec<i64>, StorageError> {
    Ok(tx
        .query(
            "SELECT e.id FROM events e
             WHERE e.body IS NULL AND e.duplicate_of IS NULL AND e.status = 'applied'
               AND (e.event_type = 'customer-merged' OR EXISTS (
                   SELECT 1 FROM event_customers t JOIN customers c ON c.id = t.customer_id
                   WHERE t.event_id = e.id
                     AND (c.event_id = e.id OR c.experian_event_id = e.id)))
             ORDER BY e.id",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
