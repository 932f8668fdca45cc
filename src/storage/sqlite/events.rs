//! The event log's SQL: inserting rows, claiming dedupe keys, listing and inspecting events.

use super::StorageError;
use crate::clock::rfc3339_ms;
use crate::config::HandlerStart;
use crate::query::{EventField, EventQuery};
use crate::storage::delivery::EventRow;
use crate::storage::filter_sql::{self, Column, Dialect, Lookup, Sql};
use crate::storage::model::{EventDetail, EventRecord, HandlerAttempt, PruneKey, PruneStep};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// Appends a row to the log; `dedupe_key` is the key the event claimed, if it claimed one.
pub fn insert(
    conn: &Connection,
    row: &EventRow<'_>,
    dedupe_key: Option<&[u8; 32]>,
) -> rusqlite::Result<()> {
    let body_size = row.body.map_or(0, <[u8]>::len) as i64;
    conn.prepare_cached(
        "INSERT INTO events (id, received_ms, event_type, customer_id, revision, status, error,
                             error_field, duplicate_of, body_size, body, projected_revision,
                             source, dedupe_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        row.id,
        row.received_ms,
        row.event_type,
        row.customer_id,
        row.revision,
        row.status.as_str(),
        row.error,
        row.error_field,
        row.duplicate_of,
        body_size,
        row.body,
        row.projected_revision,
        row.source,
        dedupe_key.map(<[u8; 32]>::as_slice),
    ])?;
    if let Some(customer) = row.customer_id {
        list_by_customer(conn, customer, row.id)?;
    }
    Ok(())
}

/// Lists event `event_id` under its customer, for [`EventField::CustomerId`] filters.
pub fn list_by_customer(conn: &Connection, customer: &str, event_id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO projection.customer_events (customer_id, event_id) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
    )?
    .execute(params![customer, event_id])?;
    Ok(())
}

/// Records every customer an applied event touches.
pub fn record_customers(
    conn: &Connection,
    event_id: i64,
    customers: &[&str],
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "INSERT INTO event_customers (event_id, customer_id) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
    )?;
    for customer in customers {
        statement.execute(params![event_id, customer])?;
    }
    Ok(())
}

/// The revision the projection holds for a customer right now.
pub fn projected_revision(conn: &Connection, customer: &str) -> rusqlite::Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT revision FROM customers WHERE id = ?1")?
        .query_row([customer], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Claims a dedupe key for `event_id`; returns the event that already owns it, if any.
pub fn claim_key(conn: &Connection, key: &[u8], event_id: i64) -> rusqlite::Result<Option<i64>> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO dedupe_keys (key, event_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
        )?
        .execute(params![key, event_id])?;
    if inserted == 1 {
        return Ok(None);
    }
    conn.prepare_cached("SELECT event_id FROM dedupe_keys WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

/// Whether event `id` holds exactly `body` (not pruned, not itself a redelivery).
pub fn has_body(conn: &Connection, id: i64, body: &[u8]) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT body = ?2 FROM events WHERE id = ?1")?
        .query_row(params![id, body], |r| r.get::<_, Option<bool>>(0))
        .optional()?
        .flatten()
        .unwrap_or(false))
}

const RECORD_COLUMNS: &str = "id, received_ms, event_type, customer_id, revision, status, error";

fn record(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        id: row.get(0)?,
        received_time: rfc3339_ms(row.get(1)?),
        event_type: row.get(2)?,
        customer_id: row.get(3)?,
        revision: row.get(4)?,
        status: row.get(5)?,
        error: row.get(6)?,
    })
}

/// The event log column behind each filter field. The customer is looked up in the
/// projection file's list of events by customer: the log has no index on it.
fn column(field: &EventField) -> Column {
    Column::Named(match field {
        EventField::Id => "id",
        EventField::CustomerId => {
            return Column::Lookup(Lookup {
                key: "id",
                table: "projection.customer_events",
                listed: "event_id",
                column: "customer_id",
            });
        }
        EventField::EventType => "event_type",
        EventField::Status => "status",
        EventField::Revision => "revision",
        EventField::ReceivedTime => "received_ms",
    })
}

/// Lists events newest first; returns the page and the total matching count.
pub fn list(
    conn: &Connection,
    query: &EventQuery,
) -> Result<(Vec<EventRecord>, u64), StorageError> {
    let mut condition = Sql::new(Dialect::Sqlite, "1");
    filter_sql::and_filter(&mut condition, &query.filter, column);
    let mut values: Vec<rusqlite::types::Value> =
        condition.params.into_iter().map(Into::into).collect();
    let condition = condition.text;
    // The total and the page come from one snapshot, so that they agree under writes.
    let tx = conn.unchecked_transaction()?;
    let total: u64 = tx
        .prepare_cached(&format!("SELECT COUNT(*) FROM events WHERE {condition}"))?
        .query_row(rusqlite::params_from_iter(&values), |r| r.get(0))?;
    values.push(i64::from(query.limit).into());
    values.push(i64::from(query.offset).into());
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM events WHERE {condition} ORDER BY id DESC LIMIT ? OFFSET ?"
    );
    let rows = tx
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(&values), record)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, total))
}

pub fn detail(conn: &Connection, id: i64) -> Result<Option<EventDetail>, StorageError> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {RECORD_COLUMNS}, error_field, duplicate_of, body_size, body
             FROM events WHERE id = ?1"
        ))?
        .query_row([id], |row| {
            let body: Option<Vec<u8>> = row.get(10)?;
            Ok(EventDetail {
                record: record(row)?,
                error_field: row.get(7)?,
                duplicate_of: row.get(8)?,
                body_size: row.get(9)?,
                body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
                handlers: Vec::new(),
            })
        })
        .optional()?;
    let Some(mut detail) = found else {
        return Ok(None);
    };
    detail.handlers = conn
        .prepare_cached(
            "SELECT handler, state, attempts, last_error, next_attempt_ms
             FROM handler_deliveries WHERE event_id = ?1
             UNION ALL
             SELECT handler, 'skipped', 0, reason, skipped_ms
             FROM handler_skips WHERE event_id = ?1
             ORDER BY handler",
        )?
        .query_map([id], |row| {
            let state: String = row.get(1)?;
            let next: i64 = row.get(4)?;
            Ok(HandlerAttempt {
                handler: row.get(0)?,
                next_attempt_time: (state == "pending").then(|| rfc3339_ms(next)),
                state,
                attempts: row.get(2)?,
                last_error: row.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(detail))
}

/// The raw body of an event, for replaying it; `None` if unknown or pruned.
pub fn raw_body(conn: &Connection, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
    let found: Option<(Option<Vec<u8>>, Option<i64>)> = conn
        .prepare_cached("SELECT body, duplicate_of FROM events WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match found {
        Some((Some(body), _)) => Ok(Some(body)),
        Some((None, Some(original))) => raw_body(conn, original),
        _ => Ok(None),
    }
}

/// Looks at up to `limit` bodies received before `cutoff_ms`, after `after`, and clears those
/// nothing needs any more. A body stays while:
/// - a handler still owes its event a delivery (retrying or dead) or has not reached it yet;
/// - the projection rests on it: the event wrote a customer's current snapshot or latest
///   Experian check, or is an applied merge. `projection rebuild` replays exactly these.
///
/// Kept bodies are walked past rather than looked at again by every step, so a pass costs one
/// walk over the stored bodies however many of them stay.
pub fn prune_bodies(
    conn: &Connection,
    cutoff_ms: i64,
    handlers: &[(String, HandlerStart)],
    after: PruneKey,
    limit: i64,
) -> Result<PruneStep, StorageError> {
    let reached = super::handler_state::reached_by_all(conn, handlers)?;
    let candidates = conn
        .prepare_cached(
            "SELECT e.id, e.received_ms,
                    e.id <= ?3
                    AND e.id NOT IN (SELECT event_id FROM handler_deliveries)
                    AND NOT (e.status = 'applied' AND (e.event_type = 'customer-merged' OR EXISTS (
                        SELECT 1 FROM event_customers t JOIN customers c ON c.id = t.customer_id
                        WHERE t.event_id = e.id
                          AND (c.event_id = e.id OR c.experian_event_id = e.id))))
             FROM events e
             WHERE e.body IS NOT NULL AND e.received_ms < ?1 AND (e.received_ms, e.id) > (?4, ?5)
             ORDER BY e.received_ms, e.id LIMIT ?2",
        )?
        .query_map(params![cutoff_ms, limit, reached, after.0, after.1], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut clear = conn.prepare_cached("UPDATE events SET body = NULL WHERE id = ?1")?;
    let mut cleared = 0;
    for (id, _, prunable) in &candidates {
        if *prunable {
            cleared += clear.execute([id])? as u64;
        }
    }
    Ok(PruneStep {
        cleared,
        examined: candidates.len() as u64,
        last: candidates.last().map(|(id, received, _)| (*received, *id)),
    })
}

/// Applied events whose bodies were pruned although the projection in place rests on them
/// (pruned by an older release, or by hand): a rebuild could not reproduce it without them.
pub fn pruned_foundations(conn: &Connection) -> rusqlite::Result<Vec<i64>> {
    conn.prepare(
        "SELECT e.id FROM events e
         WHERE e.body IS NULL AND e.duplicate_of IS NULL AND e.status = 'applied'
           AND (e.event_type = 'customer-merged' OR EXISTS (
               SELECT 1 FROM event_customers t JOIN customers c ON c.id = t.customer_id
               WHERE t.event_id = e.id AND (c.event_id = e.id OR c.experian_event_id = e.id)))
         ORDER BY e.id",
    )?
    .query_map([], |r| r.get(0))?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_and_the_page_come_from_one_snapshot() {
        let db = crate::storage::sqlite::test_support::TestDb::new();
        let insert =
            "INSERT INTO events (received_ms, status, body_size) VALUES (1, 'ignored', 0);";
        db.connect().execute_batch(&insert.repeat(2)).unwrap();
        let reader = db.connect();
        db.write_at_every_step(&reader, insert);
        let filter = EventQuery {
            filter: crate::query::Filter::default(),
            limit: 1000,
            offset: 0,
        };
        let (page, total) = list(&reader, &filter).unwrap();
        assert_eq!(page.len() as u64, total);
        let (_, later) = list(&db.connect(), &filter).unwrap();
        assert!(later > total, "the writes did land meanwhile");
    }
}
