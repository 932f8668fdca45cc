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
use super::events;
use super::projection::CustomerProjection;
use super::projection_db;
use super::{Ingested, NewDelivery, Status, StorageError};
use crate::event::Event;
use crate::handlers::projection::Encoded;
use crate::log_limit::{self, LogLimit};
use crate::storage::delivery::{
    Batch, DedupeKeys, Delivery, EventRow, Reply, SYNC_SOURCE, answer_committed, answer_failed,
    touched,
};
use rusqlite::{Connection, TransactionBehavior};
use std::time::Instant;
use tokio::sync::{mpsc, watch};

pub type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Each answer of a committed batch, and the id of its last event.
type Applied = (Vec<Result<Ingested, StorageError>>, i64);

/// How the deliveries of one batch are kept apart inside its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    Together,
    EachDelivery,
}

/// What the writer thread is asked to do.
pub enum Command {
    Ingest(Box<Delivery>, Reply),
    /// Runs on the writer's connection, in its own transaction.
    Job(Job),
    /// Runs, then ends the writer.
    Stop(Job),
}

/// Failed batches and failed deliveries, each logged at most once per interval.
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
                projection_level: true,
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
    /// Whether the projection is known to reflect the whole log. A failed batch may have
    /// committed the log but not the projection, and a job may have done the same; either
    /// leaves this false until the next batch has made sure.
    projection_level: bool,
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
                    self.projection_level = false;
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

    fn commit_batch(&mut self, batch: &mut Batch) {
        let started = Instant::now();
        match self.apply_batch(batch) {
            Ok((answers, last_id)) => {
                answer_committed(batch, answers, last_id, started, &mut self.failed_batches);
                self.committed.send_replace(last_id);
            }
            Err(error) => {
                answer_failed(
                    batch,
                    &error,
                    || StorageError::commit(&error),
                    &mut self.failed_batches,
                );
                self.projection_level = false;
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
    /// The batch first runs straight through; only when a delivery fails is it run again with a
    /// savepoint around each delivery, so that the one that fails is rolled back alone. (A
    /// savepoint copies every page a delivery changes before changing it: paying that on every
    /// delivery cost more than the deliveries' own writes.)
    fn apply_batch(&mut self, batch: &[(Box<Delivery>, Reply)]) -> rusqlite::Result<Applied> {
        if !self.projection_level {
            projection_db::catch_up(&mut self.conn)?;
            self.projection_level = true;
        }
        match self.run_batch(batch, Isolation::Together)? {
            Some(applied) => Ok(applied),
            None => Ok(self
                .run_batch(batch, Isolation::EachDelivery)?
                .expect("a batch run with savepoints answers every delivery")),
        }
    }

    /// One run of the batch in one transaction. Together, it gives up (`None`, nothing written)
    /// at the first delivery that fails; each in its own savepoint, that delivery's answer is
    /// its error.
    fn run_batch(
        &mut self,
        batch: &[(Box<Delivery>, Reply)],
        isolation: Isolation,
    ) -> rusqlite::Result<Option<Applied>> {
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
            let result = match isolation {
                Isolation::Together => ingest_one(&tx, &self.projection, next_id, delivery),
                Isolation::EachDelivery => {
                    let savepoint = tx.savepoint()?;
                    let result = ingest_one(&savepoint, &self.projection, next_id, delivery);
                    if result.is_ok() {
                        savepoint.commit()?;
                    }
                    // Dropping the savepoint otherwise rolls the delivery back.
                    result
                }
            };
            match result {
                Ok(ingested) => {
                    next_id += 1;
                    answers.push(Ok(ingested));
                }
                // A full disk or an I/O error can make SQLite roll back the whole transaction:
                // the batch fails with that cause.
                Err(error) if tx.is_autocommit() => return Err(error),
                Err(_) if isolation == Isolation::Together => return Ok(None),
                Err(error) => {
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
        projection_db::set_position(&tx, next_id - 1)?;
        // The log commits (and syncs) first, then the projection, unsynced.
        tx.commit()?;
        Ok(Some((answers, next_id - 1)))
    }

    /// Leaves both files checkpointed, and the projection synced and marked clean.
    fn checkpoint(&self) {
        if let Err(error) = projection_db::end_run(&self.conn) {
            tracing::warn!(error = %error, "syncing the projection on the way out failed");
        }
        if let Err(error) = self
            .conn
            .query_row("PRAGMA main.wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
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
    events::insert(conn, &row, claimed_key(&row, delivery))?;
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
    let mut row = classified_row(&savepoint, projection, id, delivery)?;
    if matches!(row.status, Status::Applied | Status::Rejected) {
        row.source = SYNC_SOURCE;
        events::insert(&savepoint, &row, claimed_key(&row, delivery))?;
        savepoint.commit()?;
    }
    // Dropping the savepoint otherwise rolls back its dedupe claims.
    Ok(row.status)
}

/// The dedupe key the event of `row` claimed: every event that parsed claims its key, and is a
/// duplicate when another owns it already.
fn claimed_key<'a>(row: &EventRow<'_>, delivery: &'a Delivery) -> Option<&'a [u8; 32]> {
    (delivery.inner.parsed.is_ok() && row.status != Status::Duplicate).then(|| delivery.keys.key())
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
        Err(error) => row.reject(error),
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
                row.customers = touched(event);
                events::record_customers(conn, id, &row.customers)?;
                if let Some(customer) = row.customer_id {
                    row.projected_revision = events::projected_revision(conn, customer)?;
                }
            }
        }
    }
    Ok(row)
}

fn classify(
    conn: &Connection,
    projection: &CustomerProjection,
    row: &mut EventRow<'_>,
    keys: &DedupeKeys,
    event: &Event,
    prepared: &Encoded,
) -> rusqlite::Result<()> {
    if let Some(original) = events::claim_key(conn, keys.key(), row.id)? {
        row.status = Status::Duplicate;
        row.duplicate_of = Some(original);
        // When the original holds these very bytes, keeping them twice would only cost space.
        let same_bytes = match (keys, row.body) {
            (DedupeKeys::Body(_), _) => true,
            (DedupeKeys::Semantic(_), Some(body)) => events::has_body(conn, original, body)?,
            (DedupeKeys::Semantic(_), None) => false,
        };
        if same_bytes {
            row.body = None;
        }
        return Ok(());
    }
    row.record_effect(projection.apply(conn, row.id, event, prepared)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(body: &str) -> Delivery {
        let body = body.as_bytes().to_vec();
        Delivery::new(NewDelivery {
            parsed: crate::event::parse(&body),
            body: body.into(),
            received_ms: 1,
        })
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_customer_event_claims_one_key_and_a_byte_identical_redelivery_keeps_no_body() {
        let db = super::super::test_support::TestDb::new();
        let conn = db.connect();
        let rev = |revision: i64, name: &str| {
            format!(
                r#"{{"eventType":"customer-updated","customerId":"c","_embedded":{{"customer":{{"id":"c","revision":{revision},"firstName":"{name}"}}}}}}"#
            )
        };
        let first = delivery(&rev(1, "a"));
        let applied = ingest_one(&conn, &CustomerProjection, 1, &first).unwrap();
        assert_eq!(applied.status, Status::Applied);
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM dedupe_keys"), 1);

        let again = delivery(&rev(1, "a"));
        assert_eq!(
            ingest_one(&conn, &CustomerProjection, 2, &again)
                .unwrap()
                .status,
            Status::Duplicate
        );
        let other_bytes = delivery(&rev(1, "b"));
        assert_eq!(
            ingest_one(&conn, &CustomerProjection, 3, &other_bytes)
                .unwrap()
                .status,
            Status::Duplicate
        );
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM dedupe_keys"), 1);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE duplicate_of = 1 AND body IS NULL AND id = 2"
            ),
            1,
            "the same bytes are not kept twice"
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM events WHERE duplicate_of = 1 AND body IS NOT NULL AND id = 3"
            ),
            1,
            "other bytes for the same revision are kept"
        );
    }
}
