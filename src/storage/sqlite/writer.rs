//! The single writer thread and its group commit.
//!
//! Deliveries queue on a bounded channel. The writer takes whatever is waiting (up to
//! `max_batch`), runs each delivery in its own savepoint inside one transaction, commits once,
//! and only then answers every request. An idle writer starts on the first delivery at once: no
//! request waits for a timer. A delivery that fails rolls back its savepoint alone.
//!
//! When storage fails (a full disk, a database capped at `storage.max_size_bytes`, an I/O
//! error), every request of the batch gets the error and nothing is acknowledged; the writer
//! makes sure its connection is usable again (reopening it if need be) and takes the next
//! batch as usual, so deliveries flow again as soon as the storage does. Its error lines are
//! rate-limited: the log is often on the very disk that is full.

use super::connection::{self, WriterOptions};
use super::events::{self, EventRow};
use super::projection::CustomerProjection;
use super::{Ingested, NewDelivery, RebuildReport, Status, StorageError};
use crate::event::{Event, ParseError};
use crate::handlers::projection::{Effect, Encoded};
use crate::log_limit::{self, LogLimit};
use crate::telemetry;
use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha256};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};

pub type Job = Box<dyn FnOnce(&mut Connection) + Send>;
/// The answer travels back with the delivery itself, so that the delivery's memory (the parsed
/// event, the body) is freed on the request's task instead of on the busy writer thread.
pub type Answer = (Result<Ingested, StorageError>, Box<Delivery>);
type Reply = oneshot::Sender<Answer>;

pub enum Command {
    Ingest(Box<Delivery>, Reply),
    /// Runs on the writer's connection, in its own transaction.
    Job(Job),
    /// Runs, then ends the writer.
    Stop(Job),
}

/// A delivery with everything that needs no database (hashes, encoded snapshots) computed on
/// the request's own task, so that the single writer thread spends its time on SQLite.
pub struct Delivery {
    pub(in crate::storage) inner: NewDelivery,
    pub(in crate::storage) keys: DedupeKeys,
    pub(in crate::storage) prepared: Encoded,
}

impl Delivery {
    pub fn new(inner: NewDelivery) -> Self {
        let (keys, prepared) = prepare(&inner.body, inner.parsed.as_ref().ok());
        Self {
            inner,
            keys,
            prepared,
        }
    }
}

pub(in crate::storage) fn prepare(body: &[u8], event: Option<&Event>) -> (DedupeKeys, Encoded) {
    let keys = DedupeKeys {
        body: Sha256::digest(body).into(),
        semantic: event.and_then(semantic_key),
    };
    let prepared = event.map(Encoded::of).unwrap_or_default();
    (keys, prepared)
}

/// Dedupe keys are SHA-256 digests: of the body, and of the (type, customer, revision) text.
pub(in crate::storage) struct DedupeKeys {
    pub(in crate::storage) body: [u8; 32],
    pub(in crate::storage) semantic: Option<[u8; 32]>,
}

/// The key that makes a second event of the same type, customer and revision a duplicate.
/// Experian checks have none: each one is kept.
fn semantic_key(event: &Event) -> Option<[u8; 32]> {
    let text = match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            let revision = e.customer.revision?;
            format!(
                "{}\n{}\n{}",
                event.event_type(),
                e.customer.id,
                revision.get()
            )
        }
        // A customer is merged away once: the duplicated id alone identifies the merge.
        Event::CustomerMerged(e) => format!("{}\n{}", event.event_type(), e.duplicated.id),
        Event::ExperianCheckPerformed(_) | Event::Other { .. } => return None,
    };
    Some(Sha256::digest(text.as_bytes()).into())
}

/// Failed batches and failed deliveries, each logged at most once per interval.
static BATCH_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);
static DELIVERY_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);
static REOPEN_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);

/// What the writer thread starts with.
pub struct Setup {
    /// The migrated connection.
    pub conn: Connection,
    /// How to open it again.
    pub options: WriterOptions,
    pub max_batch: usize,
    pub committed: watch::Sender<i64>,
}

pub fn spawn(
    setup: Setup,
    receiver: mpsc::Receiver<Command>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || {
            Writer {
                conn: setup.conn,
                options: setup.options,
                max_batch: setup.max_batch,
                committed: setup.committed,
                projection: CustomerProjection,
                failed_batches: 0,
            }
            .run(receiver)
        })
}

struct Writer {
    conn: Connection,
    options: WriterOptions,
    max_batch: usize,
    committed: watch::Sender<i64>,
    projection: CustomerProjection,
    /// Batches failed since the last one that committed.
    failed_batches: u64,
}

impl Writer {
    fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(command) = receiver.blocking_recv() {
            let mut after_batch = None;
            match command {
                Command::Ingest(delivery, reply) => {
                    batch.push((delivery, reply));
                    while batch.len() < self.max_batch {
                        match receiver.try_recv() {
                            Ok(Command::Ingest(delivery, reply)) => batch.push((delivery, reply)),
                            Ok(other) => {
                                after_batch = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(&mut batch);
                }
                other => after_batch = Some(other),
            }
            match after_batch {
                Some(Command::Job(job)) => {
                    job(&mut self.conn);
                    self.recover();
                }
                Some(Command::Stop(job)) => {
                    job(&mut self.conn);
                    break;
                }
                Some(Command::Ingest(..)) | None => {}
            }
        }
        self.checkpoint();
    }

    fn commit_batch(&mut self, batch: &mut Vec<(Box<Delivery>, Reply)>) {
        let started = Instant::now();
        let size = batch.len();
        match self.apply_batch(batch) {
            Ok((answers, last_id)) => {
                telemetry::record_batch(size, started.elapsed());
                telemetry::record_log_size(last_id);
                for ((delivery, reply), answer) in batch.drain(..).zip(answers) {
                    let _ = reply.send((answer, delivery));
                }
                self.committed.send_replace(last_id);
                if self.failed_batches > 0 {
                    tracing::info!(
                        failed_batches = self.failed_batches,
                        "the database accepts writes again"
                    );
                    self.failed_batches = 0;
                }
            }
            Err(error) => {
                self.failed_batches += 1;
                if let Some(suppressed) = BATCH_FAILURES.admit() {
                    tracing::error!(
                        error = %error,
                        batch = size,
                        suppressed,
                        "writer batch failed to commit; none of its deliveries was acknowledged"
                    );
                }
                for (delivery, reply) in batch.drain(..) {
                    let _ = reply.send((Err(StorageError::commit(&error)), delivery));
                }
                self.recover();
            }
        }
    }

    /// Leaves the connection ready for the next batch. A failed statement or commit normally
    /// ends its transaction (rusqlite rolls back on drop), but after a full disk or an I/O
    /// error SQLite may keep one open; it is rolled back here, and a connection that cannot
    /// even do that is replaced by a new one.
    fn recover(&mut self) {
        if self.conn.is_autocommit() {
            return;
        }
        if self.conn.execute_batch("ROLLBACK").is_ok() && self.conn.is_autocommit() {
            return;
        }
        match connection::open_writer(&self.options) {
            Ok(conn) => {
                tracing::warn!(
                    "the writer's connection was stuck in a failed transaction; reopened it"
                );
                self.conn = conn;
            }
            Err(error) => {
                if let Some(suppressed) = REOPEN_FAILURES.admit() {
                    tracing::error!(
                        error = %error,
                        suppressed,
                        "the writer's connection could not be reopened; trying again with the \
                         next batch"
                    );
                }
            }
        }
    }

    /// Runs every delivery of the batch in one transaction; returns each answer and the last id.
    #[allow(clippy::type_complexity)]
    fn apply_batch(
        &mut self,
        batch: &[(Box<Delivery>, Reply)],
    ) -> rusqlite::Result<(Vec<Result<Ingested, StorageError>>, i64)> {
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read under the write lock, so ids stay right even if another process wrote meanwhile.
        let mut next_id: i64 =
            tx.query_row("SELECT COALESCE(MAX(id), 0) + 1 FROM events", [], |r| {
                r.get(0)
            })?;
        let mut answers = Vec::with_capacity(batch.len());
        for (delivery, _) in batch {
            let mut savepoint = tx.savepoint()?;
            match ingest_one(&savepoint, &self.projection, next_id, delivery) {
                Ok(ingested) => {
                    savepoint.commit()?;
                    next_id += 1;
                    answers.push(Ok(ingested));
                }
                // A full disk or an I/O error can make SQLite roll back the whole transaction,
                // savepoints and all: the batch fails with that cause, not with the savepoint
                // it took along.
                Err(error) if savepoint.is_autocommit() => return Err(error),
                Err(error) => {
                    savepoint.rollback()?;
                    if let Some(suppressed) = DELIVERY_FAILURES.admit() {
                        tracing::error!(
                            error = %error,
                            suppressed,
                            "a delivery failed inside its batch"
                        );
                    }
                    answers.push(Err(StorageError::Sqlite(error)));
                }
            }
        }
        tx.commit()?;
        Ok((answers, next_id - 1))
    }

    fn checkpoint(&self) {
        if let Err(error) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %error, "final WAL checkpoint failed");
        }
    }
}

/// One delivery: dedupe by constraint, apply to the projection, record in the log.
fn ingest_one(
    conn: &Connection,
    projection: &CustomerProjection,
    id: i64,
    delivery: &Delivery,
) -> rusqlite::Result<Ingested> {
    let row = classified_row(conn, projection, id, delivery)?;
    events::insert(conn, &row)?;
    Ok(Ingested {
        event_id: id,
        status: row.status,
    })
}

/// One snapshot fetched by `sync`, in its own savepoint of the page's transaction. It runs the
/// same dedupe and projection rules as a delivery, but leaves a row only when it changed the
/// projection (or could not be used): a snapshot the projection already holds is `stale` and
/// leaves nothing, so that repeated syncs do not fill the log. Rebuild stays equal to live,
/// because such a snapshot would be stale at the same point of a rebuild too.
pub(super) fn ingest_synced(
    tx: &mut rusqlite::Transaction<'_>,
    projection: &CustomerProjection,
    id: i64,
    delivery: &Delivery,
) -> rusqlite::Result<Status> {
    let savepoint = tx.savepoint()?;
    let row = classified_row(&savepoint, projection, id, delivery)?;
    if matches!(row.status, Status::Applied | Status::Rejected) {
        events::insert(&savepoint, &row)?;
        events::mark_synced(&savepoint, id)?;
        savepoint.commit()?;
    }
    // Dropping the savepoint otherwise rolls back its dedupe claims.
    Ok(row.status)
}

/// The log row of one delivery, once its dedupe keys are claimed and the projection applied.
fn classified_row<'a>(
    conn: &Connection,
    projection: &CustomerProjection,
    id: i64,
    delivery: &'a Delivery,
) -> rusqlite::Result<EventRow<'a>> {
    let NewDelivery {
        body,
        parsed,
        received_ms,
    } = &delivery.inner;
    let mut row = EventRow::new(id, *received_ms, Some(body));
    match parsed {
        Err(error) => reject(&mut row, error),
        Ok(event) => {
            row.event_type = Some(event.event_type());
            row.customer_id = event.customer_id().map(|c| c.as_str());
            row.revision = event.revision().map(|r| r.get());
            classify(
                conn,
                projection,
                &mut row,
                &delivery.keys,
                event,
                &delivery.prepared,
            )?;
            if row.status == Status::Applied {
                events::record_customers(conn, id, &touched(event))?;
                if let Some(customer) = row.customer_id {
                    row.projected_revision = events::projected_revision(conn, customer)?;
                }
            }
        }
    }
    Ok(row)
}

/// Every customer an event touches, each once: handlers hold the event behind all of them.
pub(in crate::storage) fn touched(event: &Event) -> Vec<&str> {
    let mut customers: Vec<&str> = match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            vec![e.customer.id.as_str()]
        }
        Event::CustomerMerged(e) => std::iter::once(e.duplicated.id.as_str())
            .chain(std::iter::once(e.target_id.as_str()))
            .chain(e.target.iter().map(|t| t.id.as_str()))
            .collect(),
        Event::ExperianCheckPerformed(e) => std::iter::once(e.customer_id.as_str())
            .chain(e.customer.iter().map(|c| c.id.as_str()))
            .collect(),
        Event::Other { .. } => Vec::new(),
    };
    customers.sort_unstable();
    customers.dedup();
    customers
}

fn reject(row: &mut EventRow<'_>, error: &ParseError) {
    row.status = Status::Rejected;
    row.error = Some(error.to_string());
    row.error_field = error.field().map(str::to_owned);
}

fn classify(
    conn: &Connection,
    projection: &CustomerProjection,
    row: &mut EventRow<'_>,
    keys: &DedupeKeys,
    event: &Event,
    prepared: &Encoded,
) -> rusqlite::Result<()> {
    if let Some(original) = events::claim_key(conn, &keys.body, row.id)? {
        row.status = Status::Duplicate;
        row.duplicate_of = Some(original);
        // The original holds these very bytes; keeping them twice would only cost space.
        row.body = None;
        return Ok(());
    }
    if let Some(key) = &keys.semantic
        && let Some(original) = events::claim_key(conn, key, row.id)?
    {
        row.status = Status::Duplicate;
        row.duplicate_of = Some(original);
        return Ok(());
    }
    row.status = match projection.apply(conn, row.id, event, prepared)? {
        Effect::Applied => Status::Applied,
        Effect::Stale(reason) => {
            row.error = reason;
            Status::Stale
        }
        Effect::NotHandled => Status::Ignored,
    };
    Ok(())
}

/// Events replayed between two progress reports of a rebuild.
const REBUILD_PROGRESS_EVERY: u64 = 1024;

/// Recomputes the projection and the dedupe keys from the event log alone, replaying every
/// stored body in arrival order through the same rules as live ingest. Statuses in the log are
/// history and stay as they are.
///
/// Retention keeps every body the projection rests on (see `events::prune_bodies`), so the
/// replay reproduces the live projection: each customer's current snapshot, latest Experian
/// check and merge are among the replayed bodies, and an older body that was pruned had been
/// superseded by one of them. (This holds because rule 2 orders one customer's snapshots
/// totally when they all carry revisions, as Rebilly's do, or all lack them; a history mixing
/// both is not transitive, and pruning its middle could let a rebuild order it differently.)
/// Dedupe keys owned by pruned events cannot be recomputed, so they
/// are kept as they are: a redelivery of a pruned event stays a duplicate. A body that no
/// longer parses fails the rebuild (nothing changes) unless `skip_unparsable` allows leaving
/// it out; either way its id is reported.
/// `progress` is told (events replayed, events to replay) as the replay goes.
pub fn rebuild_projection(
    conn: &mut Connection,
    skip_unparsable: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<RebuildReport, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let missing = events::pruned_foundations(&tx)?;
    if !missing.is_empty() {
        return Err(StorageError::Incomplete(format!(
            "the projection rests on the bodies of events {} and they were pruned; it cannot be \
             rebuilt",
            id_list(&missing)
        )));
    }
    tx.execute_batch(
        "DELETE FROM customers;
         DELETE FROM dedupe_keys WHERE event_id IN (SELECT id FROM events WHERE body IS NOT NULL);",
    )?;
    let projection = CustomerProjection;
    let mut report = RebuildReport::default();
    let to_replay: u64 = tx.query_row(
        "SELECT COUNT(*) FROM events WHERE body IS NOT NULL AND status != 'rejected'",
        [],
        |r| r.get(0),
    )?;
    progress(0, to_replay);
    {
        let mut statement = tx.prepare(
            "SELECT id, body, source FROM events
             WHERE body IS NOT NULL AND status != 'rejected' ORDER BY id",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let body: Vec<u8> = row.get(1)?;
            let source: String = row.get(2)?;
            let parsed = if source == events::SYNC_SOURCE {
                crate::event::parse_synced(&body)
            } else {
                crate::event::parse(&body)
            };
            let Ok(event) = parsed else {
                report.skipped_unparsable.push(id);
                continue;
            };
            let (keys, prepared) = prepare(&body, Some(&event));
            let mut scratch = EventRow::new(id, 0, None);
            classify(&tx, &projection, &mut scratch, &keys, &event, &prepared)?;
            report.replayed += 1;
            if report.replayed % REBUILD_PROGRESS_EVERY == 0 {
                progress(report.replayed, to_replay);
            }
        }
    }
    progress(report.replayed, to_replay);
    if !report.skipped_unparsable.is_empty() && !skip_unparsable {
        // Dropping the transaction rolls back: the projection stays as it was.
        return Err(StorageError::Incomplete(format!(
            "the stored bodies of events {} no longer parse; nothing was changed (rebuild \
             with --skip-unparsable to leave them out)",
            id_list(&report.skipped_unparsable)
        )));
    }
    tx.commit()?;
    Ok(report)
}

/// Event ids for a message: all of them, as an operator needs each to look it up.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experian_checks_have_no_semantic_key_but_customer_events_do() {
        let created = crate::event::parse(
            br#"{"eventType":"customer-created","customerId":"c","_embedded":{"customer":{"id":"c","revision":2}}}"#,
        )
        .unwrap();
        let check = crate::event::parse(
            br#"{"eventType":"experian-check-performed","customerId":"c","outcome":1,"_embedded":{"customer":{"id":"c","revision":2}}}"#,
        )
        .unwrap();
        assert!(semantic_key(&created).is_some());
        assert_eq!(semantic_key(&check), None);
        let (keys, _) = prepare(b"abc", None);
        assert_eq!(
            keys.body[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256 of the body"
        );
    }
}
