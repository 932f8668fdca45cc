//! The writer task and its group commit, on PostgreSQL.
//!
//! Deliveries queue on a bounded channel. The writer takes whatever is waiting (up to
//! `max_batch`) and records it in one transaction, then answers every request once the commit
//! returned. Every daemon's batch takes the log's advisory lock first and numbers its events
//! after the newest committed one, so ids follow commit order across daemons: a handler's
//! cursor over ids never passes an event another daemon has yet to commit. Dedupe and the
//! projection are decided by the writes themselves (unique keys, conditional upserts).
//!
//! A batch first runs without savepoints (fewer round trips). If one delivery fails for a
//! reason of its own, the batch runs again with each delivery in its own savepoint, so that
//! only that delivery fails. Conflicts between transactions (deadlocks, serialization
//! failures) run the batch again; a lost or refused connection fails the batch (every request
//! is told to retry), and the next batch takes a fresh connection: the writer never stops.

use super::log;
use super::projection::{self, Claimed};
use crate::event::Event;
use crate::handlers::projection::Encoded;
use crate::log_limit::{self, LogLimit};
use crate::storage::delivery::{
    Batch, DedupeKeys, Delivery, EventRow, Reply, answer_committed, answer_failed, touched,
};
use crate::storage::{Ingested, Status, StorageError};
use deadpool_postgres::{Object, Pool, Transaction};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Taken by every transaction that numbers events (batches, sync pages, rebuilds).
pub const LOG_LOCK: i64 = 0x7265_6269_6c6c_7902;
/// Notified with the newest id at each commit that adds events.
pub const COMMITTED_CHANNEL: &str = "rebilly_webhookd_committed";
/// Attempts of one transaction that keeps losing to concurrent ones.
pub const CONFLICT_ATTEMPTS: u32 = 5;

/// What the writer task is asked to do.
pub enum Command {
    Ingest(Box<Delivery>, Reply),
    /// Ends the writer once everything queued before it is committed.
    Stop(oneshot::Sender<()>),
}

static DELIVERY_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);

pub struct Writer {
    pub pool: Pool,
    pub max_batch: usize,
    pub committed: std::sync::Arc<watch::Sender<i64>>,
    pub ready: super::Readiness,
    /// The writer's own connection, kept from batch to batch so that deliveries never wait
    /// for one behind queries and handlers; replaced after a failure that may be its own.
    pub connection: Option<Object>,
    /// Batches failed since the last one that committed.
    pub failed_batches: u64,
}

impl Writer {
    pub async fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(command) = receiver.recv().await {
            let mut stop = None;
            match command {
                Command::Ingest(delivery, reply) => {
                    batch.push((delivery, reply));
                    while batch.len() < self.max_batch {
                        match receiver.try_recv() {
                            Ok(Command::Ingest(delivery, reply)) => batch.push((delivery, reply)),
                            Ok(Command::Stop(done)) => {
                                stop = Some(done);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_batch(&mut batch).await;
                }
                Command::Stop(done) => stop = Some(done),
            }
            if let Some(done) = stop {
                let _ = done.send(());
                return;
            }
        }
    }

    async fn commit_batch(&mut self, batch: &mut Batch) {
        let started = Instant::now();
        let deliveries: Vec<&Delivery> = batch.iter().map(|(d, _)| &**d).collect();
        let result = self.apply_batch(&deliveries).await;
        drop(deliveries);
        match result {
            Ok((answers, last_id)) => {
                answer_committed(batch, answers, last_id, started, &mut self.failed_batches);
                advance(&self.committed, last_id);
            }
            Err(error) => answer_failed(
                batch,
                &error,
                || error.for_each_request(),
                &mut self.failed_batches,
            ),
        }
    }

    #[allow(clippy::type_complexity)]
    async fn apply_batch(
        &mut self,
        batch: &[&Delivery],
    ) -> Result<(Vec<Result<Ingested, StorageError>>, i64), StorageError> {
        self.ready.wait(&self.pool).await?;
        let mut client = match self.connection.take() {
            Some(client) if !client.is_closed() => client,
            _ => self.pool.get().await?,
        };
        let result = apply_on(&mut client, batch).await;
        // Kept for the next batch unless the connection itself may be what failed.
        if !matches!(&result, Err(error) if error.is_transient()) {
            self.connection = Some(client);
        }
        result
    }
}

/// Records the batch on `client`: again with savepoints when one delivery fails for a reason
/// of its own, again as it was when PostgreSQL aborted it for a conflict.
#[allow(clippy::type_complexity)]
async fn apply_on(
    client: &mut Object,
    batch: &[&Delivery],
) -> Result<(Vec<Result<Ingested, StorageError>>, i64), StorageError> {
    let mut careful = false;
    let mut attempt = 1;
    loop {
        let mut tx = client.transaction().await?;
        match record_batch(&mut tx, batch, careful).await {
            Ok(recorded) => {
                tx.commit().await?;
                return Ok(recorded);
            }
            Err(error) => {
                drop(tx);
                if error.is_conflict() && attempt < CONFLICT_ATTEMPTS {
                    attempt += 1;
                    tokio::time::sleep(conflict_pause(attempt)).await;
                } else if !careful && !error.is_transient() {
                    careful = true;
                } else {
                    return Err(error);
                }
            }
        }
    }
}

/// A short, growing pause before a transaction that lost a conflict runs again, with jitter
/// so that the two sides do not meet again.
pub fn conflict_pause(attempt: u32) -> Duration {
    let base = 5u64 << attempt.min(6);
    Duration::from_millis(base + fastrand::u64(0..base))
}

/// Moves the committed watch forward (never back: another daemon may be ahead).
pub fn advance(committed: &watch::Sender<i64>, last_id: i64) {
    committed.send_if_modified(|newest| {
        let newer = last_id > *newest;
        if newer {
            *newest = last_id;
        }
        newer
    });
}

/// Takes the log's lock for the rest of the transaction; returns the next free event id.
/// The id is read only once the lock is held (a statement of its own), so that it counts
/// every event committed before.
pub async fn lock_log(tx: &Transaction<'_>) -> Result<i64, tokio_postgres::Error> {
    // Prepared, each is sent whole when first polled, in this order, so both go in one round
    // trip; the server still runs them one after the other, and the second takes its snapshot
    // once the first holds the lock.
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock($1)")
        .await?;
    let newest = tx
        .prepare_cached("SELECT COALESCE(MAX(id), 0)::BIGINT FROM events")
        .await?;
    let (_, newest) =
        tokio::try_join!(tx.execute(&lock, &[&LOG_LOCK]), tx.query_one(&newest, &[]))?;
    Ok(newest.get::<_, i64>(0) + 1)
}

/// Tells the other daemons (their handlers) that events up to `last_id` are committed, when
/// the transaction commits.
pub async fn notify(tx: &Transaction<'_>, last_id: i64) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_notify($1, $2)",
        &[&COMMITTED_CHANNEL, &last_id.to_string()],
    )
    .await?;
    Ok(())
}

/// Records every delivery of the batch; returns each answer and the last id used.
#[allow(clippy::type_complexity)]
async fn record_batch(
    tx: &mut Transaction<'_>,
    batch: &[&Delivery],
    careful: bool,
) -> Result<(Vec<Result<Ingested, StorageError>>, i64), StorageError> {
    let first_id = lock_log(tx).await?;
    let mut next_id = first_id;
    let mut answers = Vec::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    for delivery in batch {
        if !careful {
            let row = classified_row(tx, next_id, delivery, &rows).await?;
            answers.push(Ok(Ingested {
                event_id: next_id,
                status: row.status,
            }));
            rows.push(row);
            next_id += 1;
            continue;
        }
        let savepoint = tx.savepoint("delivery").await?;
        let recorded = match classified_row(&savepoint, next_id, delivery, &[]).await {
            Ok(row) => log::insert(&savepoint, &[&row]).await.map(|()| row),
            Err(error) => Err(error),
        };
        match recorded {
            Ok(row) => {
                savepoint.commit().await?;
                answers.push(Ok(Ingested {
                    event_id: next_id,
                    status: row.status,
                }));
                next_id += 1;
            }
            Err(error) => {
                let error = StorageError::from(error);
                if error.is_transient() || error.is_conflict() {
                    return Err(error);
                }
                savepoint.rollback().await?;
                if let Some(suppressed) = DELIVERY_FAILURES.admit() {
                    tracing::error!(error = %error, suppressed, "a delivery failed inside its batch");
                }
                answers.push(Err(error));
            }
        }
    }
    let pending: Vec<&EventRow<'_>> = rows.iter().collect();
    let last_id = next_id - 1;
    if last_id >= first_id {
        tokio::try_join!(log::insert(tx, &pending), notify(tx, last_id))?;
    }
    // An empty batch keeps the watch where it is.
    Ok((answers, last_id.max(first_id - 1)))
}

/// The log row of one delivery, once its dedupe keys are claimed and the projection applied.
/// `pending` holds the rows of the batch not yet inserted, which a duplicate may point at.
pub async fn classified_row<'a>(
    tx: &Transaction<'_>,
    id: i64,
    delivery: &'a Delivery,
    pending: &[EventRow<'_>],
) -> Result<EventRow<'a>, tokio_postgres::Error> {
    let inner = &delivery.inner;
    let mut row = EventRow::new(id, inner.received_ms, Some(&inner.body));
    match &inner.parsed {
        Err(error) => row.reject(error),
        Ok(event) => {
            row.event_type = Some(event.event_type());
            row.customer_id = event.customer_id().map(|c| c.as_str());
            row.revision = event.revision().map(|r| r.get());
            classify(
                tx,
                &mut row,
                &delivery.keys,
                event,
                &delivery.prepared,
                pending,
            )
            .await?;
            if row.status == Status::Applied {
                row.customers = touched(event);
                row.projected_revision = match event {
                    // The snapshot just written is the one projected.
                    Event::CustomerCreated(_)
                    | Event::CustomerUpdated(_)
                    | Event::CustomerSynced(_) => row.revision,
                    _ => match row.customer_id {
                        Some(customer) => log::projected_revision(tx, customer).await?,
                        None => None,
                    },
                };
            }
        }
    }
    Ok(row)
}

/// Dedupe by the delivery's one key (see [`DedupeKeys`]), then the projection.
pub async fn classify(
    tx: &Transaction<'_>,
    row: &mut EventRow<'_>,
    keys: &DedupeKeys,
    event: &Event,
    prepared: &Encoded,
    pending: &[EventRow<'_>],
) -> Result<(), tokio_postgres::Error> {
    let key = keys.key().as_slice();
    let claimed = match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            projection::claim_and_apply_snapshot(tx, key, row.id, &e.customer, prepared).await?
        }
        _ => match log::claim_key(tx, key, row.id).await? {
            Some(owner) => Claimed::Taken(owner),
            None => Claimed::Effect(projection::apply(tx, row.id, event, prepared).await?),
        },
    };
    let effect = match claimed {
        Claimed::Taken(original) => {
            row.status = Status::Duplicate;
            row.duplicate_of = Some(original);
            // When the original holds these very bytes, keeping them twice would only cost space.
            let same_bytes = match (keys, row.body) {
                (DedupeKeys::Body(_), _) => true,
                (DedupeKeys::Semantic(_), Some(body)) => {
                    match pending.iter().find(|row| row.id == original) {
                        Some(row) => row.body == Some(body),
                        None => log::has_body(tx, original, body).await?,
                    }
                }
                (DedupeKeys::Semantic(_), None) => false,
            };
            if same_bytes {
                row.body = None;
            }
            return Ok(());
        }
        Claimed::Effect(effect) => effect,
    };
    row.record_effect(effect);
    Ok(())
}
