//! The SQLite backend: the event log, the dedupe keys and handler state in one embedded
//! database file, and the customer projection derived from it in a second file beside it
//! (`projection_db` says why and how they are kept level).
//!
//! Writes go to one writer thread (which groups waiting deliveries into one transaction);
//! reads run on pooled WAL reader connections in the blocking pool. No rusqlite call ever runs
//! on an async worker thread.

mod checkpointer;
mod connection;
mod customers;
mod events;
mod handler_state;
mod migrations;
mod projection;
mod projection_db;
mod readers;
mod sync_state;
#[cfg(test)]
mod test_support;
mod writer;

pub use migrations::MIGRATIONS;
pub use projection_db::path_of as projection_path;

use super::delivery::{Delivery, submit_now, submit_waiting};
use super::model::{
    CustomerPage, EventDetail, EventRecord, HandlerStats, Ingested, NewDelivery, Outcome, PruneKey,
    PruneStep, RebuildReport, SyncedPage, Work,
};
use super::{PROBE_BYTES, Status, StorageError};
use crate::clock::now_ms;
use crate::config::{HandlerStart, StorageSettings};
use crate::handlers::DispatchedEvent;
use crate::query::{CustomerQuery, EventQuery};
use crate::sync::SyncedSnapshot;
use readers::Readers;
use rusqlite::Connection;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot, watch};
use writer::{Command, Job};

struct Shared {
    commands: mpsc::Sender<Command>,
    readers: Readers,
    /// The id of the newest committed event; asynchronous handlers wait on it.
    committed: watch::Receiver<i64>,
    /// The writer, then the checkpointer (which ends once the writer has).
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

/// The SQLite store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the database, then starts the writer thread.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        if let Some(parent) = settings.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let options = connection::WriterOptions::new(settings);
        let mut conn = connection::open_writer(&options)?;
        projection_db::prepare_schema(&conn)?;
        MIGRATIONS.to_latest(&mut conn)?;
        projection_db::begin_run(&conn)?;
        projection_db::catch_up(&mut conn)?;
        let last_id: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?;
        crate::telemetry::record_log_size(last_id);
        let (committed_tx, committed) = watch::channel(last_id);
        let (commands, receiver) = mpsc::channel(settings.queue_capacity);
        let checkpointer = checkpointer::spawn(options.clone(), committed.clone())?;
        let writer = writer::spawn(
            writer::Setup {
                conn,
                options,
                max_batch: settings.max_batch,
                committed: committed_tx,
            },
            receiver,
        )?;
        Ok(Self {
            shared: Arc::new(Shared {
                commands,
                readers: Readers::new(settings.path.clone()),
                committed,
                threads: std::sync::Mutex::new(vec![writer, checkpointer]),
            }),
        })
    }

    /// Stores a delivery and applies it to the projection; answers once the commit is durable.
    /// A full queue is answered at once with [`StorageError::Overloaded`].
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StorageError> {
        submit_now(&self.shared.commands, delivery, Command::Ingest).await
    }

    /// Queues a delivery, waiting for room instead of refusing (offline replay). Deliveries
    /// queued one after the other keep their order; the returned future yields the answer.
    pub async fn enqueue(
        &self,
        delivery: NewDelivery,
    ) -> Result<impl Future<Output = Result<Ingested, StorageError>> + use<>, StorageError> {
        submit_waiting(&self.shared.commands, delivery, Command::Ingest).await
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

    /// Applies a page of snapshots fetched by `sync` through the projection rules, and stores
    /// `cursor` for `scope` in the same transaction. Only a [`SyncedSnapshot`] reaches the sync
    /// source. Only snapshots that change the projection, or cannot be used, are recorded in
    /// the log (with the sync source).
    pub async fn ingest_synced(
        &self,
        scope: String,
        snapshots: Vec<SyncedSnapshot>,
        cursor: Option<String>,
    ) -> Result<SyncedPage, StorageError> {
        // Parsing, hashing and encoding happen here, on the caller's task, not on the writer.
        let deliveries: Vec<Delivery> = snapshots
            .into_iter()
            .map(|snapshot| Delivery::new(snapshot.into_delivery()))
            .collect();
        self.on_writer(move |conn| {
            sync_state::apply_page(conn, &scope, &deliveries, cursor.as_deref(), now_ms())
        })
        .await
    }

    /// The cursor the last sync of `scope` stored, if any.
    pub async fn sync_cursor(&self, scope: String) -> Result<Option<String>, StorageError> {
        self.read(move |conn| sync_state::cursor(conn, &scope))
            .await
    }

    /// Recomputes the projection from the event log; see `projection_db::rebuild`.
    pub async fn rebuild_projection(
        &self,
        skip_unparsable: bool,
    ) -> Result<RebuildReport, StorageError> {
        self.rebuild_projection_reporting(skip_unparsable, |_, _| {})
            .await
    }

    /// [`SqliteStore::rebuild_projection`], telling `progress` (events replayed, events to replay)
    /// as it goes, from the writer thread.
    pub async fn rebuild_projection_reporting(
        &self,
        skip_unparsable: bool,
        progress: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<RebuildReport, StorageError> {
        self.on_writer(move |conn| projection_db::rebuild(conn, skip_unparsable, &progress))
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
    pub async fn events(&self, query: EventQuery) -> Result<(Vec<EventRecord>, u64), StorageError> {
        self.read(move |conn| events::list(conn, &query)).await
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

    /// Proves the database accepts a write the size of a delivery (readiness): a row of
    /// [`PROBE_BYTES`] inserted before the previous one is deleted, in one committed
    /// transaction, so that it needs fresh pages and WAL space as a delivery does. Rewriting a
    /// small row in place succeeded on a disk too full for any delivery.
    pub async fn probe_write(&self) -> Result<(), StorageError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO readiness_ballast (written_ms, ballast) VALUES (?1, randomblob(?2))",
                (now_ms(), PROBE_BYTES),
            )?;
            let id = tx.last_insert_rowid();
            tx.execute("DELETE FROM readiness_ballast WHERE id != ?1", [id])?;
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
        let threads =
            std::mem::take(&mut *self.shared.threads.lock().expect("thread handles lock"));
        for thread in threads {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use axum::body::Bytes;
    use rusqlite::ffi;

    fn sqlite(code: std::ffi::c_int) -> StorageError {
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    #[test]
    fn storage_conditions_that_pass_are_transient_and_defects_are_not() {
        for code in [
            ffi::SQLITE_FULL,
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_BUSY,
            ffi::SQLITE_BUSY_SNAPSHOT,
            ffi::SQLITE_LOCKED,
            ffi::SQLITE_NOMEM,
            ffi::SQLITE_CANTOPEN,
            ffi::SQLITE_READONLY,
        ] {
            assert!(sqlite(code).is_transient(), "code {code}");
        }
        for code in [
            ffi::SQLITE_CONSTRAINT,
            ffi::SQLITE_CONSTRAINT_UNIQUE,
            ffi::SQLITE_CORRUPT,
            ffi::SQLITE_NOTADB,
            ffi::SQLITE_MISMATCH,
            ffi::SQLITE_MISUSE,
            ffi::SQLITE_TOOBIG,
            ffi::SQLITE_ERROR,
        ] {
            assert!(!sqlite(code).is_transient(), "code {code}");
        }
        assert!(!StorageError::Sqlite(rusqlite::Error::QueryReturnedNoRows).is_transient());
        assert!(StorageError::Overloaded.is_transient());
        assert!(StorageError::WriterGone.is_transient());
        assert!(!StorageError::Incomplete("pruned".into()).is_transient());
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(StorageError::Io(full).is_transient());
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(!StorageError::Io(denied).is_transient());
    }

    #[test]
    fn a_failed_commit_keeps_the_code_that_classifies_it() {
        let full = rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_FULL), None);
        let error = StorageError::commit(&full);
        assert!(error.is_transient());
        assert!(error.to_string().contains("full"), "{error}");
        let constraint =
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_CONSTRAINT), None);
        assert!(!StorageError::commit(&constraint).is_transient());
    }

    fn capped_settings(dir: &std::path::Path, max_size_bytes: u64) -> StorageSettings {
        StorageSettings {
            backend: crate::config::StorageBackend::Sqlite,
            path: dir.join("capped.db"),
            url: None,
            password: None,
            max_connections: 1,
            connect_timeout_seconds: 1,
            tls_ca_file: None,
            synchronous: Synchronous::Normal,
            queue_capacity: 64,
            max_batch: 16,
            retention_days: 0,
            max_size_bytes,
        }
    }

    #[tokio::test]
    async fn a_transaction_left_open_on_the_writer_is_rolled_back_before_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&capped_settings(dir.path(), 0)).unwrap();
        // As a commit that failed half-way can leave it: inside a transaction with a write.
        store
            .on_writer(|conn| {
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     INSERT INTO readiness_ballast (written_ms, ballast) VALUES (0, x'00');",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let ingested = store
            .ingest(delivery(1))
            .await
            .expect("the writer recovered");
        assert_eq!(ingested.status, Status::Applied);
        let left: i64 = store
            .read(|conn| {
                Ok(conn.query_row("SELECT COUNT(*) FROM readiness_ballast", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(
            left, 0,
            "the half-done write was rolled back, not committed"
        );
        store.close().await;
    }

    /// A customer snapshot of about 8 KiB, so that each revision needs fresh pages.
    fn delivery(revision: i64) -> NewDelivery {
        let notes = format!("{revision:08}").repeat(1024);
        let body = serde_json::to_vec(&serde_json::json!({
            "eventType": "customer-updated",
            "customerId": "cus_full",
            "_embedded": {"customer": {"id": "cus_full", "revision": revision,
                "customFields": {"notes": notes}}}
        }))
        .unwrap();
        NewDelivery {
            parsed: crate::event::parse(&body),
            body: Bytes::from(body),
            received_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn a_full_database_fails_deliveries_and_the_probe_then_both_recover_once_room_is_freed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&capped_settings(dir.path(), 1024 * 1024)).unwrap();
        let mut acknowledged = Vec::new();
        let mut revision = 1;
        let error = loop {
            match store.ingest(delivery(revision)).await {
                Ok(ingested) => acknowledged.push(ingested.event_id),
                Err(error) => break error,
            }
            revision += 1;
            assert!(revision < 1000, "the cap was never reached");
        };
        assert!(error.is_transient(), "{error}");
        assert!(acknowledged.len() > 10, "{}", acknowledged.len());
        // Full: the writer keeps refusing, and readiness says so, however often it is asked.
        for _ in 0..3 {
            assert!(store.ingest(delivery(revision)).await.is_err());
            let probe = store
                .probe_write()
                .await
                .expect_err("a full database is not ready");
            assert!(probe.is_transient(), "{probe}");
        }

        // Pruning the superseded bodies puts their pages on the free list.
        let step = store
            .prune_bodies(now_ms() + 1, Vec::new(), (i64::MIN, i64::MIN), 10_000)
            .await
            .unwrap();
        assert!(step.cleared > 5, "{step:?}");

        store.probe_write().await.expect("ready again");
        let ingested = store.ingest(delivery(revision)).await.expect("flows again");
        assert_eq!(ingested.status, Status::Applied);
        for id in acknowledged {
            assert!(store.event(id).await.unwrap().is_some(), "event {id} lost");
        }
        let customer = store.customer("cus_full".into()).await.unwrap().unwrap();
        assert_eq!(customer["revision"], revision);
        store.close().await;
    }
}
