//! Retention: raw bodies older than `storage.retention_days` are pruned in small batches, in
//! the background, keeping each event's metadata and the projection. Small batches keep every
//! pruning transaction short, so ingest never waits long behind it.
//!
//! Two kinds of bodies outlive the retention period: those an asynchronous handler has yet to
//! deliver, and those the projection rests on (each customer's current snapshot and latest
//! Experian check, and merges), so that `projection rebuild` still reproduces the projection.

use crate::clock::now_ms;
use crate::config::{HandlerSettings, HandlerStart, StorageSettings};
use crate::storage::{StorageError, Store};
use std::time::Duration;
use tokio::sync::watch;

/// Bodies looked at per transaction.
pub const PRUNE_BATCH: i64 = 500;
const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const PRUNE_INTERVAL: Duration = Duration::from_secs(600);

/// The cut-off, in Unix milliseconds, for bodies older than `days`.
pub fn cutoff_ms(days: u64, now_ms: i64) -> i64 {
    now_ms.saturating_sub((days as i64).saturating_mul(DAY_MS))
}

/// Clears the raw bodies of events received before `cutoff_ms`, except those the asynchronous
/// `handlers` still have to deliver and those the projection rests on; returns how many.
pub async fn prune_before(
    store: &Store,
    cutoff_ms: i64,
    handlers: &[HandlerSettings],
) -> Result<u64, StorageError> {
    let handlers: Vec<(String, HandlerStart)> =
        handlers.iter().map(|h| (h.name.clone(), h.start)).collect();
    let mut total = 0;
    let mut after = (i64::MIN, i64::MIN);
    loop {
        let step = store
            .prune_bodies(cutoff_ms, handlers.clone(), after, PRUNE_BATCH)
            .await?;
        total += step.cleared;
        match step.last {
            Some(last) if step.examined == PRUNE_BATCH as u64 => after = last,
            _ => return Ok(total),
        }
        // Let deliveries queued meanwhile go first.
        tokio::task::yield_now().await;
    }
}

/// Starts the background pruner when a retention period is configured.
pub fn spawn(
    settings: &StorageSettings,
    handlers: Vec<HandlerSettings>,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let days = settings.retention_days;
    if days == 0 {
        return None;
    }
    Some(tokio::spawn(async move {
        loop {
            match prune_before(&store, cutoff_ms(days, now_ms()), &handlers).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, days, "pruned raw bodies past retention"),
                Err(error) => tracing::error!(error = %error, "pruning failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_INTERVAL) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }))
}
