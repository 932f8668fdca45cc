//! Scheduled reconciliation inside `serve`: an incremental sync every `sync.interval_seconds`,
//! one at a time, in a background task. Its pages go through the writer between delivery
//! batches, a few hundred snapshots per transaction, so deliveries never wait behind a whole
//! sync; shutdown stops it between requests without losing anything (each page is committed
//! with its cursor).

use super::{RebillyClient, SyncOptions};
use crate::config::Settings;
use crate::progress::Progress;
use crate::storage::Store;
use tokio::sync::watch;

/// Pages applied by the scheduled sync are at most this large, so that the writer's
/// transaction for one page stays short beside live deliveries.
const SCHEDULED_PAGE_SIZE: u32 = 200;

/// Starts the scheduled sync when `sync.interval_seconds` is not 0.
pub fn spawn(
    settings: &Settings,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = settings.sync.interval()?;
    let (client, mut options) = match super::prepare(settings, false) {
        Ok(prepared) => prepared,
        Err(error) => {
            tracing::error!(error = %error, "scheduled sync disabled");
            return None;
        }
    };
    options.page_size = options.page_size.min(SCHEDULED_PAGE_SIZE);
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = run_once(&store, &client, &options) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }))
}

async fn run_once(store: &Store, client: &RebillyClient, options: &SyncOptions) {
    let (summary, error) = super::run(store, client, options, &Progress::hidden()).await;
    match error {
        None => tracing::info!(
            fetched = summary.fetched,
            applied = summary.applied,
            stale = summary.stale,
            seconds = summary.seconds,
            "scheduled sync done"
        ),
        Some(error) => tracing::error!(
            error = %error,
            fetched = summary.fetched,
            applied = summary.applied,
            "scheduled sync failed; the next run resumes where it stopped"
        ),
    }
}
