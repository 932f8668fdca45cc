//! Asynchronous handler state: a cursor per handler over the event log, the events still owed
//! to a handler (retrying, parked behind an earlier event of one of their customers, or dead)
//! with the customers each holds back, and the events a handler skipped.

use super::StorageError;
use crate::config::HandlerStart;
use crate::handlers::DispatchedEvent;
use crate::storage::model::{Candidate, HandlerStats, Outcome, Work};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashSet;

/// Only applied events reach asynchronous handlers: stale, duplicate, ignored and rejected ones
/// carry nothing new.
const DISPATCHED_STATUS: &str = "applied";

const CANDIDATE_COLUMNS: &str =
    "e.id, e.event_type, e.customer_id, e.revision, e.projected_revision, e.body";

fn candidate(row: &rusqlite::Row<'_>, attempts: u32) -> rusqlite::Result<Candidate> {
    let body: Option<Vec<u8>> = row.get(5)?;
    Ok(Candidate {
        body_pruned: body.is_none(),
        attempts,
        event: DispatchedEvent {
            id: row.get(0)?,
            event_type: row.get(1)?,
            customer_id: row.get(2)?,
            revision: row.get(3)?,
            projected_revision: row.get(4)?,
            customers: Vec::new(),
            body: body.unwrap_or_default(),
        },
    })
}

/// The handler's position in the log; `None` before its first start.
pub fn cursor(conn: &Connection, handler: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT position FROM handler_cursors WHERE handler = ?1")?
        .query_row([handler], |r| r.get(0))
        .optional()
}

/// Gives a handler seen for the first time its cursor: after the newest event (`Now`) or
/// before the first (`Beginning`). A known handler keeps its cursor. Returns the cursor.
pub fn start(conn: &Connection, handler: &str, from: HandlerStart) -> rusqlite::Result<i64> {
    let position = match from {
        HandlerStart::Now => "(SELECT COALESCE(MAX(id), 0) FROM events)",
        HandlerStart::Beginning => "0",
    };
    conn.prepare_cached(&format!(
        "INSERT INTO handler_cursors (handler, position) VALUES (?1, {position})
         ON CONFLICT (handler) DO NOTHING"
    ))?
    .execute([handler])?;
    Ok(cursor(conn, handler)?.unwrap_or(0))
}

/// The newest event every one of `handlers` has passed: bodies after it may still be
/// dispatched. A handler not started yet needs nothing from before its first start if it
/// starts `Now`, and everything if it starts from the `Beginning`.
pub fn reached_by_all(
    conn: &Connection,
    handlers: &[(String, HandlerStart)],
) -> rusqlite::Result<i64> {
    let mut reached = i64::MAX;
    for (handler, from) in handlers {
        let position = match (cursor(conn, handler)?, from) {
            (Some(position), _) => position,
            (None, HandlerStart::Now) => i64::MAX,
            (None, HandlerStart::Beginning) => 0,
        };
        reached = reached.min(position);
    }
    Ok(reached)
}

/// Loads a pass of work from one read snapshot, so that the cursor, the retries, the fresh
/// events and the holds agree with each other.
pub fn load_work(
    conn: &Connection,
    handler: &str,
    now_ms: i64,
    limit: u32,
) -> Result<Work, StorageError> {
    let tx = conn.unchecked_transaction()?;
    let cursor = cursor(&tx, handler)?.unwrap_or(0);
    let mut due = tx
        .prepare_cached(&format!(
            "SELECT {CANDIDATE_COLUMNS}, d.attempts
             FROM handler_deliveries d JOIN events e ON e.id = d.event_id
             WHERE d.handler = ?1 AND d.state = 'pending' AND d.next_attempt_ms <= ?2
               AND NOT EXISTS ({EARLIER_HOLD})
             ORDER BY d.event_id LIMIT ?3"
        ))?
        .query_map(params![handler, now_ms, limit], |row| {
            candidate(row, row.get(6)?)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut fresh = tx
        .prepare_cached(&format!(
            "SELECT {CANDIDATE_COLUMNS} FROM events e
             WHERE e.id > ?1 AND e.status = ?2 ORDER BY e.id LIMIT ?3"
        ))?
        .query_map(params![cursor, DISPATCHED_STATUS, limit], |row| {
            candidate(row, 0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for candidate in due.iter_mut().chain(fresh.iter_mut()) {
        candidate.event.customers = customers_of(&tx, &candidate.event)?;
    }
    let blocked = held_among(&tx, handler, fresh.iter().flat_map(|c| &c.event.customers))?;
    Ok(Work {
        cursor,
        due,
        fresh,
        blocked,
    })
}

/// A correlated condition on an owed delivery `d`: some customer its event touches is held by
/// an earlier owed event of the same handler. `CROSS JOIN` fixes the order: the event's one or
/// two customers first, then a key lookup each, never a walk over every hold of the handler.
const EARLIER_HOLD: &str = "SELECT 1 FROM event_customers t CROSS JOIN handler_holds h
    ON h.handler = d.handler AND h.customer_id = t.customer_id AND h.event_id < t.event_id
    WHERE t.event_id = d.event_id";

/// Every customer an event touches; events logged before customers were recorded per event
/// fall back to the one customer of the log row.
fn customers_of(conn: &Connection, event: &DispatchedEvent) -> rusqlite::Result<Vec<String>> {
    let mut customers = conn
        .prepare_cached(
            "SELECT customer_id FROM event_customers WHERE event_id = ?1 ORDER BY customer_id",
        )?
        .query_map([event.id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    if customers.is_empty() {
        customers.extend(event.customer_id.clone());
    }
    Ok(customers)
}

/// Which of `customers` an owed event of `handler` holds. Only the customers of the events in
/// hand are looked up, however many customers have owed events.
fn held_among<'a>(
    conn: &Connection,
    handler: &str,
    customers: impl Iterator<Item = &'a String>,
) -> rusqlite::Result<HashSet<String>> {
    let mut lookup = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM handler_holds WHERE handler = ?1 AND customer_id = ?2)",
    )?;
    let mut seen = HashSet::new();
    let mut held = HashSet::new();
    for customer in customers {
        if seen.insert(customer) && lookup.query_row(params![handler, customer], |r| r.get(0))? {
            held.insert(customer.clone());
        }
    }
    Ok(held)
}

/// The earliest time a pending retry of this handler falls due. Events parked behind an
/// earlier owed event of one of their customers are left out, as in `load_work`: they cannot
/// run before it, and counting their (past) times made an idle worker poll in a hot loop.
pub fn next_due(conn: &Connection, handler: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(&format!(
        "SELECT MIN(d.next_attempt_ms) FROM handler_deliveries d
         WHERE d.handler = ?1 AND d.state = 'pending' AND NOT EXISTS ({EARLIER_HOLD})"
    ))?
    .query_row([handler], |r| r.get(0))
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
            Outcome::Delivered => settle(conn, handler, event)?,
            Outcome::Skipped { reason } => {
                settle(conn, handler, event)?;
                conn.prepare_cached(
                    "INSERT INTO handler_skips (handler, event_id, reason, skipped_ms)
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?
                .execute(params![handler, event.id, reason, now_ms])?;
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

/// The handler owes the event nothing more: it no longer holds its customers.
fn settle(conn: &Connection, handler: &str, event: &DispatchedEvent) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM handler_deliveries WHERE handler = ?1 AND event_id = ?2")?
        .execute(params![handler, event.id])?;
    let mut release = conn.prepare_cached(
        "DELETE FROM handler_holds WHERE handler = ?1 AND customer_id = ?2 AND event_id = ?3",
    )?;
    for customer in &event.customers {
        release.execute(params![handler, customer, event.id])?;
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
    let mut hold = conn.prepare_cached(
        "INSERT INTO handler_holds (handler, customer_id, event_id) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
    )?;
    for customer in &event.customers {
        hold.execute(params![handler, customer, event.id])?;
    }
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

pub fn stats(conn: &Connection, handler: &str) -> rusqlite::Result<HandlerStats> {
    let cursor = cursor(conn, handler)?.unwrap_or(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::test_support::TestDb;

    fn applied(conn: &Connection, id: i64, customer: &str) {
        conn.execute(
            "INSERT INTO events (id, received_ms, event_type, customer_id, status, body_size, body)
             VALUES (?1, 0, 'customer-updated', ?2, 'applied', 2, X'7B7D')",
            params![id, customer],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO event_customers (event_id, customer_id) VALUES (?1, ?2)",
            params![id, customer],
        )
        .unwrap();
    }

    #[test]
    fn a_pass_looks_up_only_the_customers_of_the_events_in_hand() {
        let db = TestDb::new();
        let conn = db.connect();
        let owed = 500;
        for id in 1..=owed {
            applied(&conn, id, &format!("cus_owed_{id}"));
        }
        let failed: Vec<(DispatchedEvent, Outcome)> = (1..=owed)
            .map(|id| {
                let customer = format!("cus_owed_{id}");
                let event = DispatchedEvent {
                    id,
                    event_type: None,
                    customer_id: Some(customer.clone()),
                    revision: None,
                    projected_revision: None,
                    customers: vec![customer],
                    body: Vec::new(),
                };
                let outcome = Outcome::Dead {
                    attempts: 1,
                    error: "down".into(),
                };
                (event, outcome)
            })
            .collect();
        record_pass(&conn, "crm", owed, &failed, 0).unwrap();
        applied(&conn, owed + 1, "cus_owed_7");
        applied(&conn, owed + 2, "cus_fresh");

        let work = load_work(&conn, "crm", 0, 10).unwrap();
        assert_eq!(work.fresh.len(), 2);
        assert_eq!(work.blocked, HashSet::from(["cus_owed_7".to_owned()]));
    }

    #[test]
    fn an_event_waits_behind_every_customer_it_touches() {
        let db = TestDb::new();
        let conn = db.connect();
        applied(&conn, 1, "cus_away");
        applied(&conn, 2, "cus_target");
        conn.execute(
            "INSERT INTO event_customers (event_id, customer_id) VALUES (2, 'cus_away')",
            [],
        )
        .unwrap();
        let work = load_work(&conn, "crm", 0, 10).unwrap();
        assert_eq!(work.fresh[1].event.customers, ["cus_away", "cus_target"]);
        let retry = |attempts| Outcome::Retry {
            attempts,
            next_attempt_ms: 0,
            error: None,
        };
        let results: Vec<_> = work
            .fresh
            .into_iter()
            .zip([retry(1), retry(0)])
            .map(|(c, o)| (c.event, o))
            .collect();
        record_pass(&conn, "crm", 2, &results, 0).unwrap();

        let work = load_work(&conn, "crm", 0, 10).unwrap();
        let due: Vec<i64> = work.due.iter().map(|c| c.event.id).collect();
        assert_eq!(
            due,
            [1],
            "the merge waits for the update of the customer merged away"
        );
        assert_eq!(next_due(&conn, "crm").unwrap(), Some(0));

        let delivered = vec![(work.due[0].event.clone(), Outcome::Delivered)];
        record_pass(&conn, "crm", 2, &delivered, 0).unwrap();
        let work = load_work(&conn, "crm", 0, 10).unwrap();
        let due: Vec<i64> = work.due.iter().map(|c| c.event.id).collect();
        assert_eq!(due, [2]);
    }

    #[test]
    fn a_new_handler_starts_where_it_is_configured_and_keeps_its_cursor() {
        let db = TestDb::new();
        let conn = db.connect();
        for id in 1..=3 {
            applied(&conn, id, "cus");
        }
        assert_eq!(start(&conn, "new", HandlerStart::Now).unwrap(), 3);
        assert_eq!(start(&conn, "replay", HandlerStart::Beginning).unwrap(), 0);
        applied(&conn, 4, "cus");
        assert_eq!(start(&conn, "new", HandlerStart::Now).unwrap(), 3);
        let handlers = [("replay".to_owned(), HandlerStart::Beginning)];
        assert_eq!(reached_by_all(&conn, &handlers).unwrap(), 0);
        let unstarted = [("later".to_owned(), HandlerStart::Now)];
        assert_eq!(reached_by_all(&conn, &unstarted).unwrap(), i64::MAX);
    }
}
