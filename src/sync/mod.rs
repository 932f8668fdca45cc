//! `sync`: reads every customer from Rebilly's Customers API and applies each snapshot to the
//! projection under the same revision rules as a webhook delivery.
//!
//! The walk goes by a high-water mark, never by deep offsets: pages are sorted by `updatedTime`
//! (then id) and filtered with `updatedTime:MARK..`, so a repeated sync reads only what changed
//! and a collection that changes during the walk is neither skipped nor repeated. Many
//! customers may share one `updatedTime`: the mark is inclusive, an offset is used only within
//! the mark's own timestamp, consecutive pages overlap by one customer to prove that nothing
//! moved before the offset, and customers already applied at the mark are skipped. The
//! [`Cursor`] is stored with the page it covers, in one transaction.
//!
//! [`SyncedSnapshot`] is the only way into the sync source of the event log, and only the
//! Rebilly client builds one, from an API answer: a webhook body can never claim that source.

pub mod client;
mod cursor;
pub mod schedule;

pub use client::{ApiError, RebillyClient};
pub use cursor::{Cursor, Item, PageRequest, Step};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::event::{self, CUSTOMER_SYNCED};
use crate::progress::Progress;
use crate::storage::{NewDelivery, StorageError, Store, SyncedPage};
use crate::telemetry;
use axum::body::Bytes;
use serde::Serialize;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

/// A customer snapshot as Rebilly's API returned it, wrapped as a `customer-synced` body.
pub struct SyncedSnapshot {
    body: Bytes,
    item: Item,
}

impl SyncedSnapshot {
    /// Only the client calls this, with a resource from an authenticated API answer.
    fn from_api(resource: Value) -> Self {
        let item = Item {
            id: resource
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            updated: resource
                .get("updatedTime")
                .and_then(Value::as_str)
                .map(str::to_owned),
            revision: resource.get("revision").and_then(Value::as_i64),
        };
        let customer_id = resource.get("id").cloned().unwrap_or(Value::Null);
        let envelope = json!({
            "eventType": CUSTOMER_SYNCED,
            "customerId": customer_id,
            "_embedded": {"customer": resource},
        });
        let body = serde_json::to_vec(&envelope).expect("a JSON value serializes");
        Self {
            body: body.into(),
            item,
        }
    }

    pub fn item(&self) -> &Item {
        &self.item
    }

    /// The delivery storage records with the sync source.
    pub(crate) fn into_delivery(self) -> NewDelivery {
        let parsed = event::parse_synced(&self.body);
        NewDelivery {
            body: self.body,
            parsed,
            received_ms: now_ms(),
        }
    }
}

/// Which account the cursor belongs to: another URL or organization starts from scratch.
pub fn scope(settings: &Settings) -> String {
    format!(
        "{}#{}",
        settings.rebilly.api_url.trim_end_matches('/'),
        settings.rebilly.organization_id
    )
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("the stored sync cursor cannot be read ({0}); run `sync --full`")]
    Cursor(String),
    #[error("the customer list kept changing under the walk ({0} restarts); try again")]
    Unsettled(u32),
}

/// Restarts of the mark's group allowed in one run before giving up.
const MAX_RESTARTS: u32 = 1000;

/// What a sync did; printed as JSON by the command.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub mode: &'static str,
    /// True when every page was fetched and applied.
    pub complete: bool,
    pub pages: u64,
    /// Customers read from the API, overlaps included.
    pub fetched: u64,
    /// Snapshots that changed the projection (recorded as `customer-synced` events).
    pub applied: u64,
    /// Snapshots the projection already held at that revision or newer, or merged away.
    pub stale: u64,
    /// Customers the API listed that could not be used (recorded as `rejected`).
    pub rejected: u64,
    /// Times the walk re-read the mark's timestamp because the list changed under it.
    pub restarts: u32,
    pub seconds: f64,
    pub customers_per_second: f64,
    /// The high-water mark where this run stopped (`updatedTime`).
    pub mark: Option<String>,
    pub error: Option<String>,
}

impl Summary {
    fn record(&mut self, page: SyncedPage) {
        self.applied += page.applied;
        self.stale += page.stale;
        self.rejected += page.rejected;
    }

    fn detail(&self) -> String {
        format!(
            "pages {}, applied {}, stale {}, rejected {}",
            self.pages, self.applied, self.stale, self.rejected
        )
    }
}

/// How to run one sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub scope: String,
    pub full: bool,
    pub page_size: u32,
    /// How far before the mark an incremental run starts reading again, in seconds.
    pub look_back_seconds: u64,
}

type Applying = Pin<Box<dyn Future<Output = Result<SyncedPage, StorageError>> + Send>>;

/// Runs one sync to the end of the list, or until the first error that retries cannot cure.
/// The summary tells how far it went either way; the cursor stored with each applied page
/// lets the next run resume there.
pub async fn run(
    store: &Store,
    client: &RebillyClient,
    options: &SyncOptions,
    progress: &Progress,
) -> (Summary, Option<SyncError>) {
    let started = Instant::now();
    let mut summary = Summary {
        mode: if options.full { "full" } else { "incremental" },
        ..Summary::default()
    };
    let result = walk(store, client, options, progress, &mut summary).await;
    summary.seconds = started.elapsed().as_secs_f64();
    if summary.seconds > 0.0 {
        summary.customers_per_second = (summary.fetched as f64 / summary.seconds).round();
    }
    summary.complete = result.is_ok();
    summary.error = result.as_ref().err().map(ToString::to_string);
    telemetry::record_sync(&summary);
    if summary.complete {
        progress.finish(summary.fetched, &summary.detail());
    } else {
        progress.abandon();
    }
    (summary, result.err())
}

async fn walk(
    store: &Store,
    client: &RebillyClient,
    options: &SyncOptions,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), SyncError> {
    let mut cursor = if options.full {
        Cursor::default()
    } else {
        match store.sync_cursor(options.scope.clone()).await? {
            None => Cursor::default(),
            Some(text) => Cursor::decode(&text).map_err(SyncError::Cursor)?,
        }
    };
    // Customers may have joined the mark's timestamp since the last run (when the mark was
    // "now"), and the list may have caught up with changes older than the mark: read the
    // look-back window again (unchanged snapshots leave no trace).
    cursor.look_back(options.look_back_seconds);
    summary.mark = cursor.mark().map(str::to_owned);
    // Page N is applied while page N+1 is fetched: the next request depends only on what was
    // fetched, and pages are still applied one after the other, in order.
    let mut applying: Option<Applying> = None;
    loop {
        let request = cursor.request(options.page_size);
        let fetched = match applying.take() {
            Some(apply) => {
                let (fetched, applied) = tokio::join!(client.fetch(&request), apply);
                summary.record(applied?);
                progress.update(summary.fetched, &summary.detail());
                fetched?
            }
            None => client.fetch(&request).await?,
        };
        summary.pages += 1;
        summary.fetched += fetched.customers.len() as u64;
        if summary.pages == 1
            && let Some(total) = fetched.total
        {
            progress.set_total(total);
        }
        let snapshots: Vec<SyncedSnapshot> = fetched
            .customers
            .into_iter()
            .map(SyncedSnapshot::from_api)
            .collect();
        let items: Vec<&Item> = snapshots.iter().map(SyncedSnapshot::item).collect();
        match cursor.advance(&request, &items) {
            Step::Restart => {
                summary.restarts += 1;
                if summary.restarts > MAX_RESTARTS {
                    return Err(SyncError::Unsettled(summary.restarts));
                }
            }
            Step::Next { apply, done } => {
                let mut keep = vec![false; snapshots.len()];
                for index in apply {
                    keep[index] = true;
                }
                let fresh: Vec<SyncedSnapshot> = snapshots
                    .into_iter()
                    .zip(keep)
                    .filter_map(|(snapshot, keep)| keep.then_some(snapshot))
                    .collect();
                summary.mark = cursor.mark().map(str::to_owned);
                let store = store.clone();
                let scope = options.scope.clone();
                let encoded = cursor.encode();
                applying = Some(Box::pin(async move {
                    store.ingest_synced(scope, fresh, Some(encoded)).await
                }));
                if done {
                    break;
                }
            }
        }
    }
    if let Some(apply) = applying {
        summary.record(apply.await?);
        progress.update(summary.fetched, &summary.detail());
    }
    Ok(())
}

/// The client and options for `settings`, or the key that is missing.
pub fn prepare(settings: &Settings, full: bool) -> Result<(RebillyClient, SyncOptions), ApiError> {
    let client = RebillyClient::new(&settings.rebilly, &settings.sync)?;
    let options = SyncOptions {
        scope: scope(settings),
        full,
        page_size: settings.sync.page_size,
        look_back_seconds: settings.sync.look_back_seconds,
    };
    Ok((client, options))
}
