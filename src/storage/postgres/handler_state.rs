//! Asynchronous handler state on PostgreSQL, shared by every daemon: cursors, owed events,
//! holds, skips, and the lease that lets one daemon at a time work a handler's events.
//!
//! `owner` identifies the calling daemon (unique per process).

use crate::config::HandlerStart;
use crate::handlers::DispatchedEvent;
use crate::storage::StorageError;
use crate::storage::model::{HandlerStats, Outcome, Work};
use tokio_postgres::Client;

pub async fn start(
    client: &mut Client,
    handler: &str,
    from: HandlerStart,
) -> Result<i64, StorageError> {
    let _ = (client, handler, from);
    Err(StorageError::Incomplete(
        "handler_state::start is not written yet".into(),
    ))
}

pub async fn load_work(
    client: &mut Client,
    owner: &str,
    handler: &str,
    now_ms: i64,
    limit: u32,
) -> Result<Work, StorageError> {
    let _ = (client, owner, handler, now_ms, limit);
    Err(StorageError::Incomplete(
        "handler_state::load_work is not written yet".into(),
    ))
}

pub async fn record_pass(
    client: &mut Client,
    owner: &str,
    handler: &str,
    cursor: i64,
    results: &[(DispatchedEvent, Outcome)],
    now_ms: i64,
) -> Result<(), StorageError> {
    let _ = (client, owner, handler, cursor, results, now_ms);
    Err(StorageError::Incomplete(
        "handler_state::record_pass is not written yet".into(),
    ))
}

pub async fn next_due(client: &Client, handler: &str) -> Result<Option<i64>, StorageError> {
    let _ = (client, handler);
    Err(StorageError::Incomplete(
        "handler_state::next_due is not written yet".into(),
    ))
}

pub async fn stats(client: &Client, handler: &str) -> Result<HandlerStats, StorageError> {
    let _ = (client, handler);
    Err(StorageError::Incomplete(
        "handler_state::stats is not written yet".into(),
    ))
}

pub async fn redrive(
    client: &mut Client,
    handler: &str,
    now_ms: i64,
) -> Result<usize, StorageError> {
    let _ = (client, handler, now_ms);
    Err(StorageError::Incomplete(
        "handler_state::redrive is not written yet".into(),
    ))
}
