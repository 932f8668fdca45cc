//! Storage: the event log, the dedupe keys, the customer projection and handler state.
//!
//! The rest of the crate sees only [`Store`], an asynchronous interface that speaks of the event
//! model, queries and handler state, never of SQL. It is the seam between the daemon and its
//! backends, chosen by `storage.backend`: SQLite, embedded, is the default (`sqlite`);
//! PostgreSQL (`postgres`) lets several daemons share one database. No SQL lives outside this
//! module.

mod customer_view;
mod delivery;
mod error;
mod filter_sql;
mod model;
pub mod postgres;
pub mod sqlite;

/// Re-exported where the log and the writer have always named it.
pub use crate::outcome::Status;
pub use error::StorageError;
pub use model::{
    Candidate, CustomerPage, EventDetail, EventRecord, HandlerAttempt, HandlerStats, Ingested,
    NewDelivery, Outcome, PruneKey, PruneStep, RebuildReport, SyncedPage, Work,
};

use crate::config::{HandlerStart, StorageBackend, StorageSettings};
use crate::handlers::DispatchedEvent;
use crate::query::{CustomerQuery, EventQuery};
use crate::sync::SyncedSnapshot;
use postgres::PgStore;
use sqlite::SqliteStore;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::watch;

/// How long a daemon's hold on a handler lasts unless renewed (see
/// [`Store::renew_handler_lease`]).
pub const HANDLER_LEASE: std::time::Duration =
    std::time::Duration::from_millis(postgres::HANDLER_LEASE_MS as u64);

/// Bytes the readiness probe writes, so that readiness fails no later than deliveries do when
/// the disk or SQLite's cap runs out (slightly earlier under the cap, which only warns sooner).
/// A delivery of the fixtures (2 to 4 KiB bodies) appends 7 to 16 pages to SQLite's WAL in a
/// database of 4 KiB pages (the event row and its indexes, the dedupe key, the customer and its
/// indexes), about 28 KB in one of the 1 KiB pages new databases take; 48 KiB of ballast plus
/// the pages its insert and delete touch are as much as the heaviest of them.
pub(crate) const PROBE_BYTES: i64 = 48 * 1024;

/// The answer to a queued delivery, awaited later (see [`Store::enqueue`]).
pub type PendingIngest = Pin<Box<dyn Future<Output = Result<Ingested, StorageError>> + Send>>;

/// The storage handle; cheap to clone. Each method runs on the configured backend.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

/// Runs the same call on whichever backend the store holds.
macro_rules! on_backend {
    ($store:expr, $backend:ident => $call:expr) => {
        match &$store.backend {
            Backend::Sqlite($backend) => $call,
            Backend::Postgres($backend) => $call,
        }
    };
}

impl Store {
    /// Opens the configured backend: SQLite is created if needed and migrated at once;
    /// PostgreSQL connects and migrates on first use (inside the Tokio runtime).
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        let backend = match settings.backend {
            StorageBackend::Sqlite => Backend::Sqlite(SqliteStore::open(settings)?),
            StorageBackend::Postgres => Backend::Postgres(PgStore::open(settings)?),
        };
        Ok(Self { backend })
    }

    /// Stores a delivery and applies it to the projection; answers once the commit is durable.
    /// A full queue is answered at once with [`StorageError::Overloaded`].
    pub async fn ingest(&self, delivery: NewDelivery) -> Result<Ingested, StorageError> {
        on_backend!(self, b => b.ingest(delivery).await)
    }

    /// Queues a delivery, waiting for room instead of refusing (offline replay). Deliveries
    /// queued one after the other keep their order; the returned future yields the answer.
    pub async fn enqueue(&self, delivery: NewDelivery) -> Result<PendingIngest, StorageError> {
        on_backend!(self, b => Ok(Box::pin(b.enqueue(delivery).await?)))
    }

    /// Applies a page of snapshots fetched by `sync` through the projection rules, and stores
    /// `cursor` for `scope` in the same transaction. Only snapshots that change the projection,
    /// or cannot be used, are recorded in the log (with the sync source).
    pub async fn ingest_synced(
        &self,
        scope: String,
        snapshots: Vec<SyncedSnapshot>,
        cursor: Option<String>,
    ) -> Result<SyncedPage, StorageError> {
        on_backend!(self, b => b.ingest_synced(scope, snapshots, cursor).await)
    }

    /// The cursor the last sync of `scope` stored, if any.
    pub async fn sync_cursor(&self, scope: String) -> Result<Option<String>, StorageError> {
        on_backend!(self, b => b.sync_cursor(scope).await)
    }

    /// Recomputes the projection from the event log.
    pub async fn rebuild_projection(
        &self,
        skip_unparsable: bool,
    ) -> Result<RebuildReport, StorageError> {
        self.rebuild_projection_reporting(skip_unparsable, |_, _| {})
            .await
    }

    /// [`Store::rebuild_projection`], telling `progress` (events replayed, events to replay)
    /// as it goes.
    pub async fn rebuild_projection_reporting(
        &self,
        skip_unparsable: bool,
        progress: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<RebuildReport, StorageError> {
        on_backend!(self, b => b.rebuild_projection_reporting(skip_unparsable, progress).await)
    }

    /// One projected customer, as served (`None` if unknown).
    pub async fn customer(&self, id: String) -> Result<Option<serde_json::Value>, StorageError> {
        on_backend!(self, b => b.customer(id).await)
    }

    /// A page of listed customers.
    pub async fn customers(&self, query: CustomerQuery) -> Result<CustomerPage, StorageError> {
        on_backend!(self, b => b.customers(query).await)
    }

    /// A page of the event log, newest first, and the total matching the filter.
    pub async fn events(&self, query: EventQuery) -> Result<(Vec<EventRecord>, u64), StorageError> {
        on_backend!(self, b => b.events(query).await)
    }

    /// One event with its raw body and handler state.
    pub async fn event(&self, id: i64) -> Result<Option<EventDetail>, StorageError> {
        on_backend!(self, b => b.event(id).await)
    }

    /// The raw body of an event (`None` if unknown or pruned).
    pub async fn raw_body(&self, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
        on_backend!(self, b => b.raw_body(id).await)
    }

    /// Gives a handler seen for the first time its starting cursor; returns its cursor.
    pub async fn start_handler(
        &self,
        handler: String,
        from: HandlerStart,
    ) -> Result<i64, StorageError> {
        on_backend!(self, b => b.start_handler(handler, from).await)
    }

    /// What a handler has to do now: due retries and new events after its cursor.
    pub async fn handler_work(&self, handler: String, limit: u32) -> Result<Work, StorageError> {
        on_backend!(self, b => b.handler_work(handler, limit).await)
    }

    /// Records a handler pass and moves its cursor, in one transaction.
    pub async fn record_handler_pass(
        &self,
        handler: String,
        cursor: i64,
        results: Vec<(DispatchedEvent, Outcome)>,
    ) -> Result<(), StorageError> {
        on_backend!(self, b => b.record_handler_pass(handler, cursor, results).await)
    }

    /// Keeps this daemon's hold on a handler during a long pass: with several daemons on one
    /// database, one at a time works a handler, under a lease of [`HANDLER_LEASE`]. False once
    /// another daemon has taken the handler over. A SQLite database has one daemon.
    pub async fn renew_handler_lease(&self, handler: String) -> Result<bool, StorageError> {
        match &self.backend {
            Backend::Sqlite(_) => Ok(true),
            Backend::Postgres(backend) => backend.renew_handler_lease(handler).await,
        }
    }

    /// When the handler's earliest retry falls due, if it has one.
    pub async fn next_handler_due(&self, handler: String) -> Result<Option<i64>, StorageError> {
        on_backend!(self, b => b.next_handler_due(handler).await)
    }

    /// Per-handler figures for metrics.
    pub async fn handler_stats(&self, handler: String) -> Result<HandlerStats, StorageError> {
        on_backend!(self, b => b.handler_stats(handler).await)
    }

    /// Gives a handler's dead events a fresh set of attempts; returns how many.
    pub async fn redrive(&self, handler: String) -> Result<usize, StorageError> {
        on_backend!(self, b => b.redrive(handler).await)
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
        on_backend!(self, b => b.prune_bodies(cutoff_ms, handlers, after, limit).await)
    }

    /// Watches the id of the newest committed event.
    pub fn committed(&self) -> watch::Receiver<i64> {
        on_backend!(self, b => b.committed())
    }

    /// Deliveries waiting for the writer right now.
    pub fn queue_depth(&self) -> usize {
        on_backend!(self, b => b.queue_depth())
    }

    /// Proves the storage accepts a write the size of a delivery (readiness).
    pub async fn probe_write(&self) -> Result<(), StorageError> {
        on_backend!(self, b => b.probe_write().await)
    }

    /// Stops the writer after it has committed everything queued before this call.
    pub async fn close(&self) {
        on_backend!(self, b => b.close().await)
    }
}
