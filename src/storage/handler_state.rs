//! Asynchronous handler state: a cursor per handler over the event log, and the events still
//! owed to a handler (retrying, parked behind an earlier event of the same customer, or dead).

use super::StorageError;
use crate::handlers::DispatchedEvent;
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;

/// Only applied events reach asynchronous handlers: stale, duplicate, ignored and rejected ones
/// carry nothing new.
const DISPATCHED_STATUS: &str = "applied";

/// An event owed to a handler, with the attempts already made.
#[derive(Debug, Clone)]
pub struct Owed {
    pub event: DispatchedEvent,
    pub attempts: u32,
}

/// What one pass of a handler found to do.
#[derive(Debug, Default)]
pub struct Work {
    pub cursor: i64,
    /// Retries whose time has come, the oldest event of each customer only.
    pub due: Vec<Owed>,
    /// New events after the cursor.
    pub fresh: Vec<DispatchedEvent>,
    /// Customers with an owed event: their new events must queue behind it.
    pub blocked: HashSet<String>,
}

fn dispatched(row: &rusqlite::Row<'_>) -> rusqlite::Result<DispatchedEvent> {
    Ok(DispatchedEvent {
        id: row.get(0)?,
        event_type: row.get(1)?,
        customer_id: row.get(2)?,
        revision: row.get(3)?,
        body: row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
    })
}

pub fn cursor(conn: &Connection, handler: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT position FROM handler_cursors WHERE handler = ?1")?
        .query_row([handler], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

pub fn load_work(
    conn: &Connection,
    handler: &str,
    now_ms: i64,
    limit: u32,
) -> Result<Work, StorageError> {
    let cursor = cursor(conn, handler)?;
    let due = conn
        .prepare_cached(
            "SELECT e.id, e.event_type, e.customer_id, e.revision, e.body, d.attempts
             FROM handler_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.handler = ?1 AND d.state = 'pending' AND d.next_attempt_ms <= ?2
               AND NOT EXISTS (
                   SELECT 1 FROM handler_deliveries o
                   WHERE o.handler = d.handler AND o.customer_id = d.customer_id
                     AND o.event_id < d.event_id)
             ORDER BY d.event_id LIMIT ?3",
        )?
        .query_map(params![handler, now_ms, limit], |row| {
            Ok(Owed {
                event: dispatched(row)?,
                attempts: row.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let fresh = conn
        .prepare_cached(
            "SELECT id, event_type, customer_id, revision, body FROM events
             WHERE id > ?1 AND status = ?2 ORDER BY id LIMIT ?3",
        )?
        .query_map(params![cursor, DISPATCHED_STATUS, limit], dispatched)?
        .collect::<Result<Vec<_>, _>>()?;
    let blocked = conn
        .prepare_cached(
            "SELECT DISTINCT customer_id FROM handler_deliveries
             WHERE handler = ?1 AND customer_id IS NOT NULL",
        )?
        .query_map([handler], |r| r.get(0))?
        .collect::<Result<HashSet<String>, _>>()?;
    Ok(Work {
        cursor,
        due,
        fresh,
        blocked,
    })
}

/// The earliest time a pending retry of this handler falls due. Events parked behind an
/// earlier owed event of their customer are left out, as in `load_work`: they cannot run before
/// it, and counting their (past) times made an idle worker poll in a hot loop.
pub fn next_due(conn: &Connection, handler: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MIN(d.next_attempt_ms) FROM handler_deliveries d
         WHERE d.handler = ?1 AND d.state = 'pending'
           AND NOT EXISTS (
               SELECT 1 FROM handler_deliveries o
               WHERE o.handler = d.handler AND o.customer_id = d.customer_id
                 AND o.event_id < d.event_id)",
    )?
    .query_row([handler], |r| r.get(0))
}

/// What happened to one event during a pass.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Failed or parked: try again at `next_attempt_ms`.
    Retry {
        attempts: u32,
        next_attempt_ms: i64,
        error: Option<String>,
    },
    Dead {
        attempts: u32,
        error: String,
    },
}

/// Records the results of a pass and moves the cursor, in one transaction.
pub fn record_pass(
    conn: &Connection,
    handler: &str,
    cursor: i64,
    results: &[(DispatchedEvent, Outcome)],
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO handler_cursors (handler, position) VALUES (?1, ?2)
         ON CONFLICT (handler) DO UPDATE SET position = MAX(position, excluded.position)",
    )?
    .execute(params![handler, cursor])?;
    for (event, outcome) in results {
        match outcome {
            Outcome::Delivered => {
                conn.prepare_cached(
                    "DELETE FROM handler_deliveries WHERE handler = ?1 AND event_id = ?2",
                )?
                .execute(params![handler, event.id])?;
            }
            Outcome::Retry {
                attempts,
                next_attempt_ms,
                error,
            } => upsert(
                conn,
                handler,
                event,
                "pending",
                *attempts,
                *next_attempt_ms,
                error.as_deref(),
                now_ms,
            )?,
            Outcome::Dead { attempts, error } => upsert(
                conn,
                handler,
                event,
                "dead",
                *attempts,
                now_ms,
                Some(error),
                now_ms,
            )?,
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn upsert(
    conn: &Connection,
    handler: &str,
    event: &DispatchedEvent,
    state: &str,
    attempts: u32,
    next_attempt_ms: i64,
    error: Option<&str>,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO handler_deliveries
             (handler, event_id, customer_id, state, attempts, next_attempt_ms, last_error, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (handler, event_id) DO UPDATE SET
             state = excluded.state, attempts = excluded.attempts,
             next_attempt_ms = excluded.next_attempt_ms,
             last_error = COALESCE(excluded.last_error, last_error),
             updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        handler,
        event.id,
        event.customer_id,
        state,
        attempts,
        next_attempt_ms,
        error,
        now_ms
    ])?;
    Ok(())
}

/// Gives every dead event of `handler` a fresh set of attempts; returns how many.
pub fn redrive(conn: &Connection, handler: &str, now_ms: i64) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "UPDATE handler_deliveries SET state = 'pending', attempts = 0, next_attempt_ms = ?2,
                updated_ms = ?2
         WHERE handler = ?1 AND state = 'dead'",
    )?
    .execute(params![handler, now_ms])
}

/// Per-handler figures for metrics: events not yet passed, pending retries, dead events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandlerStats {
    pub behind: u64,
    pub pending: u64,
    pub dead: u64,
}

pub fn stats(conn: &Connection, handler: &str) -> rusqlite::Result<HandlerStats> {
    let cursor = cursor(conn, handler)?;
    let behind: u64 = conn
        .prepare_cached("SELECT COUNT(*) FROM events WHERE id > ?1 AND status = ?2")?
        .query_row(params![cursor, DISPATCHED_STATUS], |r| r.get(0))?;
    let (pending, dead): (u64, u64) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(state = 'pending'), 0), COALESCE(SUM(state = 'dead'), 0)
             FROM handler_deliveries WHERE handler = ?1",
        )?
        .query_row([handler], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(HandlerStats {
        behind,
        pending,
        dead,
    })
}
