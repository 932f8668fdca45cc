//! Asynchronous handler state on PostgreSQL, shared by every daemon: cursors, owed events,
//! holds, skips, and the lease that lets one daemon at a time work a handler's events.
//!
//! `owner` identifies the calling daemon (unique per process).
//!
//! The lease is what keeps two daemons off the same customer's events: only the daemon that
//! holds a handler's lease loads work for it, and a pass's results count only while it still
//! holds it. The holder renews it with every pass and during long ones (an idle worker looks
//! for work at least once a second). A daemon that stops renewing (killed, cut off from the
//! database) loses it after [`LEASE_MS`]; one that stops cleanly gives it up at once. The next
//! daemon to look takes the handler over from the recorded cursor and owed events, so nothing
//! the stopped daemon had in hand is stranded: it is delivered again.

use crate::config::HandlerStart;
use crate::handlers::DispatchedEvent;
use crate::storage::StorageError;
use crate::storage::model::{Candidate, HandlerStats, Outcome, Work};
use std::collections::{HashMap, HashSet};
use tokio_postgres::{Client, GenericClient, IsolationLevel, Row};

/// How long a lease lasts without renewal. A worker renews it during its passes well before
/// then, and stops a pass whose lease it could not renew in time.
pub const LEASE_MS: i64 = 15_000;

/// The database's clock in Unix milliseconds: leases are compared on one clock, whatever the
/// clocks of the daemons' machines say.
const DB_NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Only applied events reach asynchronous handlers: stale, duplicate, ignored and rejected ones
/// carry nothing new.
const DISPATCHED_STATUS: &str = "applied";

const CANDIDATE_COLUMNS: &str =
    "e.id, e.event_type, e.customer_id, e.revision, e.projected_revision, e.body";

fn candidate(row: &Row, attempts: u32) -> Result<Candidate, tokio_postgres::Error> {
    let body: Option<Vec<u8>> = row.try_get(5)?;
    Ok(Candidate {
        body_pruned: body.is_none(),
        attempts,
        event: DispatchedEvent {
            id: row.try_get(0)?,
            event_type: row.try_get(1)?,
            customer_id: row.try_get(2)?,
            revision: row.try_get(3)?,
            projected_revision: row.try_get(4)?,
            customers: Vec::new(),
            body: body.unwrap_or_default(),
        },
    })
}

/// The handler's position in the log; `None` before its first start.
pub async fn cursor(
    client: &impl GenericClient,
    handler: &str,
) -> Result<Option<i64>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT position FROM handler_cursors WHERE handler = $1",
            &[&handler],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose()
}

/// Gives a handler seen for the first time its cursor: after the newest event (`Now`) or
/// before the first (`Beginning`). A known handler keeps its cursor, whichever daemon started
/// it first. Returns the cursor.
pub async fn start(
    client: &mut Client,
    handler: &str,
    from: HandlerStart,
) -> Result<i64, StorageError> {
    let position = match from {
        HandlerStart::Now => "(SELECT COALESCE(MAX(id), 0) FROM events)",
        HandlerStart::Beginning => "0",
    };
    client
        .execute(
            &format!(
                "INSERT INTO handler_cursors (handler, position) VALUES ($1, {position})
                 ON CONFLICT (handler) DO NOTHING"
            ),
            &[&handler],
        )
        .await?;
    Ok(cursor(client, handler).await?.unwrap_or(0))
}

/// The newest event every one of `handlers` has passed: bodies after it may still be
/// dispatched. A handler not started yet needs nothing from before its first start if it
/// starts `Now`, and everything if it starts from the `Beginning`.
pub async fn reached_by_all(
    client: &impl GenericClient,
    handlers: &[(String, HandlerStart)],
) -> Result<i64, tokio_postgres::Error> {
    let names: Vec<&str> = handlers.iter().map(|(name, _)| name.as_str()).collect();
    let positions: HashMap<String, i64> = client
        .query(
            "SELECT handler, position FROM handler_cursors WHERE handler = ANY($1)",
            &[&names],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    Ok(handlers
        .iter()
        .map(|(handler, from)| match (positions.get(handler), from) {
            (Some(position), _) => *position,
            (None, HandlerStart::Now) => i64::MAX,
            (None, HandlerStart::Beginning) => 0,
        })
        .min()
        .unwrap_or(i64::MAX))
}

/// Takes or renews the handler's lease for `owner`; false while another daemon holds it.
/// The conditional update is atomic: of two daemons taking a lapsed lease at once, the second
/// waits for the first's row lock, then finds the lease held and takes nothing.
async fn take_lease(client: &Client, owner: &str, handler: &str) -> Result<bool, StorageError> {
    let statement = format!(
        "UPDATE handler_cursors SET lease_owner = $2, lease_until_ms = {DB_NOW_MS} + $3
         WHERE handler = $1
           AND (lease_owner = $2 OR lease_owner IS NULL OR lease_until_ms < {DB_NOW_MS})"
    );
    if client
        .execute(&statement, &[&handler, &owner, &LEASE_MS])
        .await?
        == 1
    {
        return Ok(true);
    }
    // A handler never started has no row to hold a lease: it starts before the first event.
    let created = client
        .execute(
            "INSERT INTO handler_cursors (handler, position) VALUES ($1, 0)
             ON CONFLICT (handler) DO NOTHING",
            &[&handler],
        )
        .await?;
    Ok(created == 1
        && client
            .execute(&statement, &[&handler, &owner, &LEASE_MS])
            .await?
            == 1)
}

/// Extends `owner`'s lease on the handler, during a pass; false once another daemon has taken
/// it over (the pass must stop: its results would not count).
pub async fn renew_lease(
    client: &Client,
    owner: &str,
    handler: &str,
) -> Result<bool, StorageError> {
    let renewed = client
        .execute(
            &format!(
                "UPDATE handler_cursors SET lease_until_ms = {DB_NOW_MS} + $3
                 WHERE handler = $1 AND lease_owner = $2"
            ),
            &[&handler, &owner, &LEASE_MS],
        )
        .await?;
    Ok(renewed == 1)
}

/// Gives up every lease `owner` holds, for a daemon that stops: another daemon takes its
/// handlers over at its next look instead of once the leases lapse. Returns how many.
pub async fn release_leases(client: &Client, owner: &str) -> Result<u64, StorageError> {
    Ok(client
        .execute(
            "UPDATE handler_cursors SET lease_owner = NULL, lease_until_ms = 0
             WHERE lease_owner = $1",
            &[&owner],
        )
        .await?)
}

/// Loads a pass of work for the daemon `owner` from one read snapshot, so that the cursor,
/// the retries, the fresh events and the holds agree with each other. Empty while another
/// daemon holds the handler's lease.
pub async fn load_work(
    client: &mut Client,
    owner: &str,
    handler: &str,
    now_ms: i64,
    limit: u32,
) -> Result<Work, StorageError> {
    if !take_lease(client, owner, handler).await? {
        return Ok(Work::default());
    }
    let limit = i64::from(limit);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let cursor = cursor(&tx, handler).await?.unwrap_or(0);
    let mut due = Vec::new();
    for row in tx
        .query(
            &format!(
                "SELECT {CANDIDATE_COLUMNS}, d.attempts
                 FROM handler_deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.handler = $1 AND d.state = 'pending' AND d.next_attempt_ms <= $2
                   AND NOT EXISTS ({EARLIER_HOLD})
                 ORDER BY d.event_id LIMIT $3"
            ),
            &[&handler, &now_ms, &limit],
        )
        .await?
    {
        let attempts: i32 = row.try_get(6)?;
        due.push(candidate(&row, u32::try_from(attempts).unwrap_or(0))?);
    }
    let mut fresh = Vec::new();
    for row in tx
        .query(
            &format!(
                "SELECT {CANDIDATE_COLUMNS} FROM events e
                 WHERE e.id > $1 AND e.status = $2 ORDER BY e.id LIMIT $3"
            ),
            &[&cursor, &DISPATCHED_STATUS, &limit],
        )
        .await?
    {
        fresh.push(candidate(&row, 0)?);
    }
    fill_customers(&tx, due.iter_mut().chain(fresh.iter_mut())).await?;
    let blocked = held_among(&tx, handler, fresh.iter().flat_map(|c| &c.event.customers)).await?;
    tx.commit().await?;
    Ok(Work {
        cursor,
        due,
        fresh,
        blocked,
    })
}

/// A correlated condition on an owed delivery `d`: some customer its event touches is held by
/// an earlier owed event of the same handler.
const EARLIER_HOLD: &str = "SELECT 1 FROM event_customers t JOIN handler_holds h
    ON h.handler = d.handler AND h.customer_id = t.customer_id AND h.event_id < t.event_id
    WHERE t.event_id = d.event_id";

/// Every customer each event touches, in one query; events logged before customers were
/// recorded per event fall back to the one customer of the log row.
async fn fill_customers<'a>(
    client: &impl GenericClient,
    candidates: impl Iterator<Item = &'a mut Candidate>,
) -> Result<(), tokio_postgres::Error> {
    let candidates: Vec<&mut Candidate> = candidates.collect();
    let ids: Vec<i64> = candidates.iter().map(|c| c.event.id).collect();
    let mut customers: HashMap<i64, Vec<String>> = HashMap::new();
    for row in client
        .query(
            "SELECT event_id, customer_id FROM event_customers WHERE event_id = ANY($1)
             ORDER BY event_id, customer_id COLLATE \"C\"",
            &[&ids],
        )
        .await?
    {
        customers
            .entry(row.try_get(0)?)
            .or_default()
            .push(row.try_get(1)?);
    }
    for candidate in candidates {
        let event = &mut candidate.event;
        event.customers = customers
            .remove(&event.id)
            .unwrap_or_else(|| event.customer_id.iter().cloned().collect());
    }
    Ok(())
}

/// Which of `customers` an owed event of `handler` holds. Only the customers of the events in
/// hand are looked up, however many customers have owed events.
async fn held_among<'a>(
    client: &impl GenericClient,
    handler: &str,
    customers: impl Iterator<Item = &'a String>,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let customers: Vec<&String> = customers.collect::<HashSet<_>>().into_iter().collect();
    if customers.is_empty() {
        return Ok(HashSet::new());
    }
    client
        .query(
            "SELECT DISTINCT customer_id FROM handler_holds
             WHERE handler = $1 AND customer_id = ANY($2)",
            &[&handler, &customers],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect()
}

/// The earliest time a pending retry of this handler falls due. Events parked behind an
/// earlier owed event of one of their customers are left out, as in `load_work`: they cannot
/// run before it. While a daemon holds the lease, retries already due are its to run: the
/// answer is then `None`, so that the others look again at their idle pace instead of
/// polling in a hot loop while the holder works.
pub async fn next_due(client: &Client, handler: &str) -> Result<Option<i64>, StorageError> {
    let row = client
        .query_one(
            &format!(
                "SELECT CASE
                     WHEN due.at <= {DB_NOW_MS} AND EXISTS (
                         SELECT 1 FROM handler_cursors
                         WHERE handler = $1 AND lease_until_ms >= {DB_NOW_MS})
                     THEN NULL ELSE due.at END
                 FROM (SELECT MIN(d.next_attempt_ms) AS at FROM handler_deliveries d
                       WHERE d.handler = $1 AND d.state = 'pending'
                         AND NOT EXISTS ({EARLIER_HOLD})) due"
            ),
            &[&handler],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// What one pass leaves for one event: the last outcome recorded for it wins.
enum Settlement<'a> {
    /// Nothing more is owed; with the reason when the event was skipped.
    Settled(Option<&'a str>),
    Owed {
        state: &'static str,
        attempts: u32,
        next_attempt_ms: i64,
        error: Option<&'a str>,
    },
}

fn settlement(outcome: &Outcome, now_ms: i64) -> Settlement<'_> {
    match outcome {
        Outcome::Delivered => Settlement::Settled(None),
        Outcome::Skipped { reason } => Settlement::Settled(Some(reason)),
        Outcome::Retry {
            attempts,
            next_attempt_ms,
            error,
        } => Settlement::Owed {
            state: "pending",
            attempts: *attempts,
            next_attempt_ms: *next_attempt_ms,
            error: error.as_deref(),
        },
        Outcome::Dead { attempts, error } => Settlement::Owed {
            state: "dead",
            attempts: *attempts,
            next_attempt_ms: now_ms,
            error: Some(error),
        },
    }
}

/// Records the results of a pass and moves the cursor, in one transaction, only while
/// `owner` still holds the handler's lease. A daemon that lost it records nothing: the
/// holder delivers those events again (at least once), and this daemon's results could
/// otherwise undo the holder's.
pub async fn record_pass(
    client: &mut Client,
    owner: &str,
    handler: &str,
    cursor: i64,
    results: &[(DispatchedEvent, Outcome)],
    now_ms: i64,
) -> Result<(), StorageError> {
    let tx = client.transaction().await?;
    // The row lock taken here holds off any daemon taking the lease until this commits.
    let held = tx
        .execute(
            &format!(
                "UPDATE handler_cursors
                 SET position = GREATEST(position, $3), lease_until_ms = {DB_NOW_MS} + $4
                 WHERE handler = $1 AND lease_owner = $2"
            ),
            &[&handler, &owner, &cursor, &LEASE_MS],
        )
        .await?;
    if held != 1 {
        return Err(StorageError::LeaseLost(handler.to_owned()));
    }
    let mut last: HashMap<i64, (&DispatchedEvent, Settlement<'_>)> = HashMap::new();
    for (event, outcome) in results {
        last.insert(event.id, (event, settlement(outcome, now_ms)));
    }
    let mut pass = PassRows::default();
    for (event, settlement) in last.into_values() {
        pass.add(event, settlement);
    }
    pass.write(&tx, handler, now_ms).await?;
    tx.commit().await?;
    Ok(())
}

/// A pass's changes as columns, written with one statement per table.
#[derive(Default)]
struct PassRows<'a> {
    settled: Vec<i64>,
    skipped: Vec<i64>,
    skip_reasons: Vec<&'a str>,
    owed: Vec<i64>,
    owed_customer: Vec<Option<&'a str>>,
    owed_state: Vec<&'static str>,
    owed_attempts: Vec<i32>,
    owed_next: Vec<i64>,
    owed_error: Vec<Option<&'a str>>,
    hold_customers: Vec<&'a str>,
    hold_events: Vec<i64>,
}

impl<'a> PassRows<'a> {
    fn add(&mut self, event: &'a DispatchedEvent, settlement: Settlement<'a>) {
        match settlement {
            Settlement::Settled(reason) => {
                self.settled.push(event.id);
                if let Some(reason) = reason {
                    self.skipped.push(event.id);
                    self.skip_reasons.push(reason);
                }
            }
            Settlement::Owed {
                state,
                attempts,
                next_attempt_ms,
                error,
            } => {
                self.owed.push(event.id);
                self.owed_customer.push(event.customer_id.as_deref());
                self.owed_state.push(state);
                self.owed_attempts
                    .push(i32::try_from(attempts).unwrap_or(i32::MAX));
                self.owed_next.push(next_attempt_ms);
                self.owed_error.push(error);
                for customer in &event.customers {
                    self.hold_customers.push(customer);
                    self.hold_events.push(event.id);
                }
            }
        }
    }

    async fn write(
        &self,
        client: &impl GenericClient,
        handler: &str,
        now_ms: i64,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.settled.is_empty() {
            // The handler owes these events nothing more: they no longer hold their customers.
            client
                .execute(
                    "DELETE FROM handler_deliveries WHERE handler = $1 AND event_id = ANY($2)",
                    &[&handler, &self.settled],
                )
                .await?;
            client
                .execute(
                    "DELETE FROM handler_holds WHERE handler = $1 AND event_id = ANY($2)",
                    &[&handler, &self.settled],
                )
                .await?;
        }
        if !self.skipped.is_empty() {
            client
                .execute(
                    "INSERT INTO handler_skips (handler, event_id, reason, skipped_ms)
                     SELECT $1, u.event_id, u.reason, $4
                     FROM UNNEST($2::BIGINT[], $3::TEXT[]) AS u (event_id, reason)
                     ON CONFLICT DO NOTHING",
                    &[&handler, &self.skipped, &self.skip_reasons, &now_ms],
                )
                .await?;
        }
        if !self.owed.is_empty() {
            client
                .execute(
                    "INSERT INTO handler_deliveries (handler, event_id, customer_id, state,
                         attempts, next_attempt_ms, last_error, updated_ms)
                     SELECT $1, u.event_id, u.customer_id, u.state, u.attempts,
                            u.next_attempt_ms, u.last_error, $8
                     FROM UNNEST($2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::INTEGER[],
                                 $6::BIGINT[], $7::TEXT[])
                          AS u (event_id, customer_id, state, attempts, next_attempt_ms,
                                last_error)
                     ON CONFLICT (handler, event_id) DO UPDATE SET
                         state = excluded.state, attempts = excluded.attempts,
                         next_attempt_ms = excluded.next_attempt_ms,
                         last_error = COALESCE(excluded.last_error, handler_deliveries.last_error),
                         updated_ms = excluded.updated_ms",
                    &[
                        &handler,
                        &self.owed,
                        &self.owed_customer,
                        &self.owed_state,
                        &self.owed_attempts,
                        &self.owed_next,
                        &self.owed_error,
                        &now_ms,
                    ],
                )
                .await?;
        }
        if !self.hold_events.is_empty() {
            client
                .execute(
                    "INSERT INTO handler_holds (handler, customer_id, event_id)
                     SELECT $1, u.customer_id, u.event_id
                     FROM UNNEST($2::TEXT[], $3::BIGINT[]) AS u (customer_id, event_id)
                     ON CONFLICT DO NOTHING",
                    &[&handler, &self.hold_customers, &self.hold_events],
                )
                .await?;
        }
        Ok(())
    }
}

/// Gives every dead event of `handler` a fresh set of attempts; returns how many. Whichever
/// daemon holds the lease runs them.
pub async fn redrive(
    client: &mut Client,
    handler: &str,
    now_ms: i64,
) -> Result<usize, StorageError> {
    let redriven = client
        .execute(
            "UPDATE handler_deliveries SET state = 'pending', attempts = 0, next_attempt_ms = $2,
                    updated_ms = $2
             WHERE handler = $1 AND state = 'dead'",
            &[&handler, &now_ms],
        )
        .await?;
    Ok(usize::try_from(redriven).unwrap_or(usize::MAX))
}

pub async fn stats(client: &Client, handler: &str) -> Result<HandlerStats, StorageError> {
    let row = client
        .query_one(
            "SELECT
                 (SELECT COUNT(*) FROM events
                  WHERE status = $2 AND id > COALESCE(
                      (SELECT position FROM handler_cursors WHERE handler = $1), 0)),
                 (SELECT COUNT(*) FROM handler_deliveries WHERE handler = $1 AND state = 'pending'),
                 (SELECT COUNT(*) FROM handler_deliveries WHERE handler = $1 AND state = 'dead')",
            &[&handler, &DISPATCHED_STATUS],
        )
        .await?;
    let count = |at: usize| -> Result<u64, tokio_postgres::Error> {
        Ok(u64::try_from(row.try_get::<_, i64>(at)?).unwrap_or(0))
    };
    Ok(HandlerStats {
        behind: count(0)?,
        pending: count(1)?,
        dead: count(2)?,
    })
}
