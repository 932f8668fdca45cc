//! The PostgreSQL backend, for several daemons sharing one database.
//!
//! Deliveries go to one writer task per daemon, which groups waiting deliveries into one
//! transaction (see [`writer`]); every other call draws a connection from the pool. The
//! schema is migrated on first use (so opening never blocks, and a database that is down at
//! start-up is waited for by the first call, not by the constructor). A dedicated connection
//! listens for the commits of the other daemons, so that local handlers wake up for them.

mod connection;
mod handler_state;
mod log;
mod migrations;
mod projection;
mod reads;
mod rebuild;
mod retention;
mod sync_state;
mod writer;

pub use connection::{authorities, check_url};
pub use handler_state::LEASE_MS as HANDLER_LEASE_MS;

use super::StorageError;
use super::delivery::{Delivery, submit_now, submit_waiting};
use super::model::{
    CustomerPage, EventDetail, EventRecord, HandlerStats, Ingested, NewDelivery, Outcome, PruneKey,
    PruneStep, RebuildReport, SyncedPage, Work,
};
use crate::clock::now_ms;
use crate::config::{HandlerStart, StorageSettings};
use crate::handlers::DispatchedEvent;
use crate::log_limit::{self, LogLimit};
use crate::query::{CustomerQuery, EventQuery};
use crate::sync::SyncedSnapshot;
use connection::Target;
use deadpool_postgres::{Object, Pool};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OnceCell, mpsc, oneshot, watch};
use writer::{CONFLICT_ATTEMPTS, Command, advance, conflict_pause};

/// Runs `$work` (which uses the pooled connection `$client`) again, on a fresh connection,
/// while PostgreSQL aborts it for a conflict with a concurrent transaction.
macro_rules! retry_conflicts {
    ($store:expr, $client:ident => $work:expr) => {{
        let mut attempt = 1;
        loop {
            #[allow(unused_mut)]
            let mut $client = $store.client().await?;
            match $work.await {
                Err(error) if error.is_conflict() && attempt < CONFLICT_ATTEMPTS => {
                    attempt += 1;
                    tokio::time::sleep(conflict_pause(attempt)).await;
                }
                result => break result,
            }
        }
    }};
}

/// The schema migrated once per process, before the first query; retried by the next call if
/// the database could not be reached.
#[derive(Clone, Default)]
pub struct Readiness(Arc<OnceCell<()>>);

impl Readiness {
    pub async fn wait(&self, pool: &Pool) -> Result<(), StorageError> {
        self.0
            .get_or_try_init(|| async {
                let mut client = pool.get().await?;
                migrations::migrate(&mut client).await?;
                Ok::<(), StorageError>(())
            })
            .await?;
        Ok(())
    }
}

struct Shared {
    pool: Pool,
    ready: Readiness,
    commands: mpsc::Sender<Command>,
    committed: Arc<watch::Sender<i64>>,
    /// Identifies this process among the daemons sharing the database (handler leases).
    owner: String,
    writer: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    listener: tokio::task::JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// The PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    shared: Arc<Shared>,
}

impl PgStore {
    /// Reads the connection settings and starts the writer and the commit listener. Nothing
    /// connects yet; must be called inside the Tokio runtime.
    pub fn open(settings: &StorageSettings) -> Result<Self, StorageError> {
        let target = Target::from_settings(settings)?;
        let pool = target.pool(settings)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StorageError::Settings(
                "the PostgreSQL backend runs inside the Tokio runtime".to_owned(),
            ));
        }
        let ready = Readiness::default();
        let committed = Arc::new(watch::channel(0).0);
        let (commands, receiver) = mpsc::channel(settings.queue_capacity);
        let writer = writer::Writer {
            pool: pool.clone(),
            max_batch: settings.max_batch,
            committed: committed.clone(),
            ready: ready.clone(),
            connection: None,
            failed_batches: 0,
        };
        let writer = tokio::spawn(writer.run(receiver));
        let listener = tokio::spawn(listen(
            target,
            pool.clone(),
            ready.clone(),
            committed.clone(),
        ));
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                ready,
                commands,
                committed,
                owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
                writer: std::sync::Mutex::new(Some(writer)),
                listener,
            }),
        })
    }

    /// A pooled connection to the migrated database.
    async fn client(&self) -> Result<Object, StorageError> {
        self.shared.ready.wait(&self.shared.pool).await?;
        Ok(self.shared.pool.get().await?)
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

    /// Applies a page of snapshots fetched by `sync` through the projection rules, and stores
    /// `cursor` for `scope` in the same transaction.
    pub async fn ingest_synced(
        &self,
        scope: String,
        snapshots: Vec<SyncedSnapshot>,
        cursor: Option<String>,
    ) -> Result<SyncedPage, StorageError> {
        let deliveries: Vec<Delivery> = snapshots
            .into_iter()
            .map(|snapshot| Delivery::new(snapshot.into_delivery()))
            .collect();
        let (page, last_id) = retry_conflicts!(self, client => async {
            let mut tx = client.transaction().await?;
            let applied = sync_state::apply_page(
                &mut tx, &scope, &deliveries, cursor.as_deref(), now_ms()
            ).await?;
            tx.commit().await?;
            Ok::<_, StorageError>(applied)
        })?;
        advance(&self.shared.committed, last_id);
        Ok(page)
    }

    /// The cursor the last sync of `scope` stored, if any.
    pub async fn sync_cursor(&self, scope: String) -> Result<Option<String>, StorageError> {
        let client = self.client().await?;
        sync_state::cursor(&client, &scope).await
    }

    /// Recomputes the projection from the event log; see [`rebuild`].
    pub async fn rebuild_projection(
        &self,
        skip_unparsable: bool,
    ) -> Result<RebuildReport, StorageError> {
        self.rebuild_projection_reporting(skip_unparsable, |_, _| {})
            .await
    }

    /// [`PgStore::rebuild_projection`], telling `progress` (events replayed, events to replay)
    /// as it goes.
    pub async fn rebuild_projection_reporting(
        &self,
        skip_unparsable: bool,
        progress: impl Fn(u64, u64) + Send + 'static,
    ) -> Result<RebuildReport, StorageError> {
        let mut progress = progress;
        retry_conflicts!(self, client => async {
            let tx = client.transaction().await?;
            let report = rebuild::rebuild(&tx, skip_unparsable, &mut progress).await?;
            tx.commit().await?;
            Ok::<_, StorageError>(report)
        })
    }

    /// One projected customer, as served (`None` if unknown).
    pub async fn customer(&self, id: String) -> Result<Option<serde_json::Value>, StorageError> {
        let client = self.client().await?;
        reads::customer(&client, &id).await
    }

    /// A page of listed customers.
    pub async fn customers(&self, query: CustomerQuery) -> Result<CustomerPage, StorageError> {
        let client = self.client().await?;
        reads::customers(&client, &query).await
    }

    /// A page of the event log, newest first, and the total matching the filter.
    pub async fn events(&self, query: EventQuery) -> Result<(Vec<EventRecord>, u64), StorageError> {
        let client = self.client().await?;
        reads::events(&client, &query).await
    }

    /// One event with its raw body and handler state.
    pub async fn event(&self, id: i64) -> Result<Option<EventDetail>, StorageError> {
        let client = self.client().await?;
        reads::event(&client, id).await
    }

    /// The raw body of an event (`None` if unknown or pruned).
    pub async fn raw_body(&self, id: i64) -> Result<Option<Vec<u8>>, StorageError> {
        let client = self.client().await?;
        reads::raw_body(&client, id).await
    }

    /// Gives a handler seen for the first time its starting cursor; returns its cursor.
    pub async fn start_handler(
        &self,
        handler: String,
        from: HandlerStart,
    ) -> Result<i64, StorageError> {
        retry_conflicts!(self, client => handler_state::start(&mut client, &handler, from))
    }

    /// What a handler has to do now: due retries and new events after its cursor, for the
    /// customers no other daemon is working on.
    pub async fn handler_work(&self, handler: String, limit: u32) -> Result<Work, StorageError> {
        let owner = &self.shared.owner;
        retry_conflicts!(self, client => handler_state::load_work(
            &mut client, owner, &handler, now_ms(), limit
        ))
    }

    /// Records a handler pass and moves its cursor, in one transaction.
    pub async fn record_handler_pass(
        &self,
        handler: String,
        cursor: i64,
        results: Vec<(DispatchedEvent, Outcome)>,
    ) -> Result<(), StorageError> {
        let owner = &self.shared.owner;
        retry_conflicts!(self, client => handler_state::record_pass(
            &mut client, owner, &handler, cursor, &results, now_ms()
        ))
    }

    /// Extends this daemon's lease on a handler during a pass; false once another took it.
    pub async fn renew_handler_lease(&self, handler: String) -> Result<bool, StorageError> {
        let client = self.client().await?;
        handler_state::renew_lease(&client, &self.shared.owner, &handler).await
    }

    /// When the handler's earliest retry falls due, if it has one.
    pub async fn next_handler_due(&self, handler: String) -> Result<Option<i64>, StorageError> {
        let client = self.client().await?;
        handler_state::next_due(&client, &handler).await
    }

    /// Per-handler figures for metrics.
    pub async fn handler_stats(&self, handler: String) -> Result<HandlerStats, StorageError> {
        let client = self.client().await?;
        handler_state::stats(&client, &handler).await
    }

    /// Gives a handler's dead events a fresh set of attempts; returns how many.
    pub async fn redrive(&self, handler: String) -> Result<usize, StorageError> {
        retry_conflicts!(self, client => handler_state::redrive(&mut client, &handler, now_ms()))
    }

    /// One step of a pruning pass (see `retention`).
    pub async fn prune_bodies(
        &self,
        cutoff_ms: i64,
        handlers: Vec<(String, HandlerStart)>,
        after: PruneKey,
        limit: i64,
    ) -> Result<PruneStep, StorageError> {
        retry_conflicts!(self, client => retention::prune_bodies(
            &mut client, cutoff_ms, &handlers, after, limit
        ))
    }

    /// Watches the id of the newest committed event, whichever daemon committed it.
    pub fn committed(&self) -> watch::Receiver<i64> {
        self.shared.committed.subscribe()
    }

    /// Deliveries waiting for the writer right now.
    pub fn queue_depth(&self) -> usize {
        self.shared.commands.max_capacity() - self.shared.commands.capacity()
    }

    /// Proves the database accepts a write the size of a delivery (readiness): a row of
    /// incompressible bytes inserted before the previous one is deleted, in one committed
    /// transaction.
    pub async fn probe_write(&self) -> Result<(), StorageError> {
        let mut ballast = vec![0u8; super::PROBE_BYTES as usize];
        fastrand::fill(&mut ballast);
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let id: i64 = tx
            .query_one(
                "INSERT INTO readiness_ballast (written_ms, ballast) VALUES ($1, $2)
                 RETURNING id",
                &[&now_ms(), &ballast],
            )
            .await?
            .get(0);
        tx.execute("DELETE FROM readiness_ballast WHERE id <> $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stops the writer after it has committed everything queued before this call.
    pub async fn close(&self) {
        // The handlers stopped before this: another daemon may take them over at once.
        let release = async {
            let client = self.client().await?;
            handler_state::release_leases(&client, &self.shared.owner).await
        };
        match tokio::time::timeout(Duration::from_secs(2), release).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(error = %error,
                    "handler leases not released; they lapse by themselves");
            }
            Err(_) => {
                tracing::warn!("handler leases not released in time; they lapse by themselves")
            }
        }
        let (done, stopped) = oneshot::channel();
        if self.shared.commands.send(Command::Stop(done)).await.is_ok() {
            let _ = stopped.await;
        }
        let handle = self
            .shared
            .writer
            .lock()
            .expect("writer handle lock")
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        self.shared.listener.abort();
    }
}

static LISTEN_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);

/// Pause before the listener connects again after losing its connection.
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

/// Keeps `committed` up with the commits of every daemon: LISTEN on a connection of its own,
/// and the newest id read again after each (re)connection, so that nothing notified while it
/// was away is missed.
async fn listen(target: Target, pool: Pool, ready: Readiness, committed: Arc<watch::Sender<i64>>) {
    loop {
        let outcome = listen_once(&target, &pool, &ready, &committed).await;
        if let Some(suppressed) = LISTEN_FAILURES.admit() {
            let error = outcome.err().map(|e| e.to_string());
            tracing::warn!(
                error,
                suppressed,
                "the connection listening for other daemons' commits ended; connecting again"
            );
        }
        tokio::time::sleep(RELISTEN_PAUSE).await;
    }
}

async fn listen_once(
    target: &Target,
    pool: &Pool,
    ready: &Readiness,
    committed: &watch::Sender<i64>,
) -> Result<(), StorageError> {
    ready.wait(pool).await?;
    let (client, mut connection) = target.connect_raw().await?;
    let (notes, mut received) = mpsc::unbounded_channel();
    // The connection carries the client's queries too: it is driven here until it ends.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                    if notes.send(note.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let listened = async {
        client
            .batch_execute(&format!("LISTEN {}", writer::COMMITTED_CHANNEL))
            .await?;
        advance(committed, log::last_id(&client).await?);
        Ok::<(), StorageError>(())
    }
    .await;
    if let Err(error) = listened {
        driver.abort();
        return Err(error);
    }
    while let Some(payload) = received.recv().await {
        if let Ok(id) = payload.parse() {
            advance(committed, id);
        }
    }
    drop(client);
    Ok(())
}
