//! The event log's SQL: inserting rows, claiming dedupe keys, listing and inspecting events.

use super::{Status, StorageError};
use crate::clock::rfc3339_ms;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::Serialize;

/// One row of the event log as the writer records it.
pub struct EventRow<'a> {
    pub id: i64,
    pub received_ms: i64,
    pub event_type: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub revision: Option<i64>,
    pub status: Status,
    pub error: Option<String>,
    pub error_field: Option<String>,
    pub duplicate_of: Option<i64>,
    pub body: Option<&'a [u8]>,
}

impl<'a> EventRow<'a> {
    /// A row not yet classified: `rejected` until the writer decides otherwise.
    pub fn new(id: i64, received_ms: i64, body: Option<&'a [u8]>) -> Self {
        Self {
            id,
            received_ms,
            event_type: None,
            customer_id: None,
            revision: None,
            status: Status::Rejected,
            error: None,
            error_field: None,
            duplicate_of: None,
            body,
        }
    }
}

pub fn insert(conn: &Connection, row: &EventRow<'_>) -> rusqlite::Result<()> {
    let body_size = row.body.map_or(0, <[u8]>::len) as i64;
    conn.prepare_cached(
        "INSERT INTO events (id, received_ms, event_type, customer_id, revision, status, error,
                             error_field, duplicate_of, body_size, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
    ])?;
    Ok(())
}

/// The `source` of events fetched by `sync`; every other event is a webhook delivery.
pub const SYNC_SOURCE: &str = "sync";

/// Marks a just-inserted event as fetched by `sync`.
pub fn mark_synced(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE events SET source = ?2 WHERE id = ?1")?
        .execute(params![id, SYNC_SOURCE])?;
    Ok(())
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

/// An event as the query API lists it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub id: i64,
    pub received_time: String,
    pub event_type: Option<String>,
    pub customer_id: Option<String>,
    pub revision: Option<i64>,
    pub status: String,
    pub error: Option<String>,
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

/// Filters of `GET /events` and `events list`.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub customer_id: Option<String>,
    pub status: Option<Status>,
    pub event_type: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// Lists events newest first; returns the page and the total matching count.
pub fn list(
    conn: &Connection,
    filter: &EventFilter,
) -> Result<(Vec<EventRecord>, u64), StorageError> {
    let mut clauses = Vec::new();
    let mut values: Vec<&dyn rusqlite::ToSql> = Vec::new();
    let status = filter.status.map(Status::as_str);
    if let Some(customer) = &filter.customer_id {
        clauses.push("customer_id = ?");
        values.push(customer);
    }
    if let Some(status) = &status {
        clauses.push("status = ?");
        values.push(status);
    }
    if let Some(event_type) = &filter.event_type {
        clauses.push("event_type = ?");
        values.push(event_type);
    }
    let condition = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let total: u64 = conn
        .prepare_cached(&format!("SELECT COUNT(*) FROM events {condition}"))?
        .query_row(values.as_slice(), |r| r.get(0))?;
    let limit = i64::from(filter.limit);
    let offset = i64::from(filter.offset);
    values.push(&limit);
    values.push(&offset);
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM events {condition} ORDER BY id DESC LIMIT ? OFFSET ?"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement
        .query_map(values.as_slice(), record)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok((rows, total))
}

/// One asynchronous handler's state for one event.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HandlerAttempt {
    pub handler: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_time: Option<String>,
}

/// Everything known about one event: its record, raw body and handler state.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    #[serde(flatten)]
    pub record: EventRecord,
    pub error_field: Option<String>,
    pub duplicate_of: Option<i64>,
    pub body_size: i64,
    /// The raw body as text (lossy if it was not UTF-8); null once pruned.
    pub body: Option<String>,
    pub handlers: Vec<HandlerAttempt>,
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
             FROM handler_deliveries WHERE event_id = ?1 ORDER BY handler",
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

/// Clears up to `limit` raw bodies received before `cutoff_ms`. A body stays while a handler
/// still owes its event a delivery (retrying or dead) or has not reached it yet.
pub fn prune_bodies(
    conn: &Connection,
    cutoff_ms: i64,
    handlers: &[String],
    limit: i64,
) -> Result<u64, StorageError> {
    let mut reached = i64::MAX;
    for handler in handlers {
        reached = reached.min(super::handler_state::cursor(conn, handler)?);
    }
    let cleared = conn
        .prepare_cached(
            "UPDATE events SET body = NULL WHERE id IN (
                 SELECT id FROM events
                 WHERE body IS NOT NULL AND received_ms < ?1 AND id <= ?2
                   AND id NOT IN (SELECT event_id FROM handler_deliveries)
                 LIMIT ?3)",
        )?
        .execute(params![cutoff_ms, reached, limit])?;
    Ok(cleared as u64)
}
