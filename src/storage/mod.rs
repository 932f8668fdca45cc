//! Storage: the event log, the dedupe keys, the projection tables and handler state, in SQLite.
//!
//! The rest of the crate sees only [`Store`]: an asynchronous interface whose writes go to one
//! writer thread (which groups waiting deliveries into one transaction) and whose reads run on
//! pooled WAL reader connections in the blocking pool. No rusqlite call ever runs on an async
//! worker thread. SQLite is the embedded backend; the methods of `Store` speak only of the
//! event model, queries and handler state, never of SQL, so they are the seam where another
//! backend (PostgreSQL is planned) would plug in.

mod connection;
mod customers;
mod events;
pub mod handler_state;
mod migrations;
mod readers;
#[cfg(test)]
mod test_support;
mod writer;

pub use customers::CustomerPage;
pub use events::{EventDetail, EventFilter, EventRecord, HandlerAttempt, PruneKey, PruneStep};
pub use migrations::MIGRATIONS;
pub use writer::RebuildReport;

use crate::clock::now_ms;
use crate::config::{HandlerStart, StorageSettings};
use crate::event::{Event, ParseError};
use crate::handlers::DispatchedEvent;
use crate::query::CustomerQuery;
use axum::body::Bytes;
use handler_state::{HandlerStats, Outcome, Work};
use readers::Readers;
use rusqlite::Connection;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use writer::{Command, Delivery, Job};

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Applied,
    Stale,
    Duplicate,
    Ignored,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 5] = [
        Self::Applied,
        Self::Stale,
        Self::Duplicate,
        Self::Ignored,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// The answer for one committed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub event_id: i64,
    pub status: Status,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the writer queue is full")]
    Overloaded,
    #[error("the storage writer has stopped")]
    WriterGone,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("cannot prepare the database folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("a blocking database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Incomplete(String),
    /// rusqlite errors are not `Clone`: a failed commit reaches every request of its batch as text.
    #[error("the batch could not be committed: {0}")]
    Commit(String),
}

/// A received body with its parse result, ready for the writer.
pub struct NewDelivery {
    pub body: Bytes,
    pub parsed: Result<Event, ParseError>,
    pub received_ms: i64,
}

struct Shared {
    commands: mpsc::Sender<Command>,
    readers: Readers,
    /// The id of the newest committed event; asynchronous handlers wait on it.
    committed: watch::Receiver<i64>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Unpacks the writer's answer; the returned delivery is dropped here, on the caller's task.
fn received(
    answer: Result<writer::Answer, oneshot::error::RecvError>,
) -> Result<Ingested, StorageError> {
    match answer {
        Ok((result, _delivery)) => result,
        Err(_) => Err(StorageError::WriterGone),
    }
}

/// The storage handle; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Opens (creating if needed) and migrates the database, then starts the writer thread.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        if let Some(parent) = settings.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let mut conn = connection::open_writer(&settings.path, settings.synchronous)?;
        MIGRATIONS.to_latest(&mut conn)?;
        let last_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
        crate::telemetry::record_log_size(last_id);
        let (committed_tx, committed) = watch::channel(last_id);
        let (commands, receiver) = mpsc::channel(settings.queue_capacity);
        let writer = writer::spawn(conn, receiver, settings.max_batch, committed_tx)?;
        Ok(Self {
            shared: Arc::new(Shared {
                commands,
                readers: Readers::new(settings.path.clone()),
                committed,
                writer: std::sync::Mutex::new(Some(writer)),
            }),
        })
    }

    /// Stores a delivery and applies it to the projection; answers once the commit is durable.
    /// A full queue is answered at once with [`StorageError::Overloaded`].
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StorageError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Ingest(Box::new(Delivery::new(delivery)), reply);
        self.shared
            .commands
            .try_send(command)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => StorageError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => StorageError::WriterGone,
            })?;
        received(answer.await)
    }

    /// Queues a delivery, waiting for room instead of refusing (offline replay). Deliveries
    /// queued one after the other keep their order; the returned future yields the answer.
    pub async fn enqueue(
        &self,
        delivery: NewDelivery,
    ) -> Result<impl Future<Output = Result<Ingested, StorageError>> + use<>, StorageError> {
        let (reply, answer) = oneshot::channel();
        let command = Command::Ingest(Box::new(Delivery::new(delivery)), reply);
        self.shared
            .commands
            .send(command)
            .await
            .map_err(|_| StorageError::WriterGone)?;
        Ok(async move { received(answer.await) })
    }

    /// Runs `work` in its own write transaction on the writer thread.
    async fn write<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<R, StorageError> + Send + 'static,
    {
        self.on_writer(move |conn| {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let value = work(&tx)?;
            tx.commit()?;
            Ok(value)
        })
        .await
    }

    /// Runs `work` on the writer's own connection, between batches.
    async fn on_writer<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<R, StorageError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn: &mut Connection| {
            let _ = reply.send(work(conn));
        });
        self.shared
            .commands
            .send(Command::Job(job))
            .await
            .map_err(|_| StorageError::WriterGone)?;
        answer.await.map_err(|_| StorageError::WriterGone)?
    }

    /// Runs `work` on a pooled read-only connection in the blocking pool.
    async fn read<R, F>(&self, work: F) -> Result<R, StorageError>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R, StorageError> + Send + 'static,
    {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.readers.with(work)).await?
    }

    /// Recomputes the projection from the event log; see `writer::rebuild_projection`.
    pub async fn rebuild_projection(
        &self,
        skip_unparsable: bool,
    ) -> Result<RebuildReport, StorageError> {
        self.on_writer(move |conn| writer::rebuild_projection(conn, skip_unparsable))
            .await
    }

    /// One projected customer, as served (`None` if unknown).
    pub async fn customer(&self, id: String) -> Result<Option<serde_json::Value>, StorageError> {
        self.read(move |conn| customers::customer(conn, &id)).await
    }

    /// A page of listed customers.
    pub async fn customers(&self, query: CustomerQuery) -> Result<CustomerPage, StorageError> {
        self.read(move |conn| customers::list(conn, &query)).await
    }

    /// A page of the event log, newest first, and the total matching the filter.
    pub async fn events(
        &self,
        filter: EventFilter,
    ) -> Result<(Vec<EventRecord>, u64), StorageError> {
        self.read(move |conn| events::list(conn, &filter)).await
    }

    /// One event with its raw body and handler state.
    pub async fn event(&self, id: i64) -> Result<Option<EventDetail>, StorageError> {
        self.read(move |conn| events::detail(conn, id)).await
    }

    /// The raw body of an event (`None` if unknown or pruned).
    pub async fn raw_body(&self, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
        self.read(move |conn| events::raw_body(conn, id)).await
    }

    /// Gives a handler seen for the first time its starting cursor; returns its cursor.
    pub async fn start_handler(
        &self,
        handler: String,
        from: HandlerStart,
    ) -> Result<i64, StorageError> {
        self.write(move |tx| Ok(handler_state::start(tx, &handler, from)?))
            .await
    }

    /// What a handler has to do now: due retries and new events after its cursor.
    pub async fn handler_work(&self, handler: String, limit: u32) -> Result<Work, StorageError> {
        let now = now_ms();
        self.read(move |conn| handler_state::load_work(conn, &handler, now, limit))
            .await
    }

    /// Records a handler pass and moves its cursor, in one transaction.
    pub async fn record_handler_pass(
        &self,
        handler: String,
        cursor: i64,
        results: Vec<(DispatchedEvent, Outcome)>,
    ) -> Result<(), StorageError> {
        self.write(move |tx| {
            handler_state::record_pass(tx, &handler, cursor, &results, now_ms())?;
            Ok(())
        })
        .await
    }

    /// When the handler's earliest retry falls due, if it has one.
    pub async fn next_handler_due(&self, handler: String) -> Result<Option<i64>, StorageError> {
        self.read(move |conn| Ok(handler_state::next_due(conn, &handler)?))
            .await
    }

    pub async fn handler_stats(&self, handler: String) -> Result<HandlerStats, StorageError> {
        self.read(move |conn| Ok(handler_state::stats(conn, &handler)?))
            .await
    }

    /// Gives a handler's dead events a fresh set of attempts; returns how many.
    pub async fn redrive(&self, handler: String) -> Result<usize, StorageError> {
        self.write(move |tx| Ok(handler_state::redrive(tx, &handler, now_ms())?))
            .await
    }

    /// One step of a pruning pass: looks at up to `limit` bodies received before `cutoff_ms`
    /// (after `after`) and clears those that neither `handlers` nor the projection still need.
    pub async fn prune_bodies(
        &self,
        cutoff_ms: i64,
        handlers: Vec<(String, HandlerStart)>,
        after: PruneKey,
        limit: i64,
    ) -> Result<PruneStep, StorageError> {
        self.write(move |tx| events::prune_bodies(tx, cutoff_ms, &handlers, after, limit))
            .await
    }

    /// Watches the id of the newest committed event.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.shared.committed.clone()
    }

    /// Deliveries waiting for the writer right now.
    pub fn queue_depth(&self) -> usize {
        self.shared.commands.max_capacity() - self.shared.commands.capacity()
    }

    /// Proves the database accepts a write (readiness).
    pub async fn probe_write(&self) -> Result<(), StorageError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO probe (id, checked_ms) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_ms = excluded.checked_ms",
                [crate::clock::now_ms()],
            )?;
            Ok(())
        })
        .await
    }

    /// Stops the writer after it has committed everything queued before this call.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        let stop: Job = Box::new(move |_conn: &mut Connection| {
            let _ = reply.send(());
        });
        if self.shared.commands.send(Command::Stop(stop)).await.is_ok() {
            let _ = done.await;
        }
        let handle = self
            .shared
            .writer
            .lock()
            .expect("writer handle lock")
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}
