//! Operator actions shared by the admin endpoints and the command line: replaying a stored
//! event, redriving a handler's dead events, rebuilding the projection, pruning raw bodies.

use crate::auth::AuthenticatedBody;
use crate::clock::now_ms;
use crate::ingest::{Pipeline, Receipt};
use crate::storage::{StorageError, Store, handler_state, raw_body};
use serde_json::{Value, json};

/// Runs a stored body through the pipeline again as a new delivery. The revision and dedupe
/// rules apply as to any delivery: replaying an applied event answers `duplicate`, replaying a
/// rejection that a newer version can parse applies it. `None` if unknown or pruned.
pub async fn replay_event(pipeline: &Pipeline, id: i64) -> Result<Option<Receipt>, StorageError> {
    let body = pipeline
        .store()
        .read(move |conn| raw_body(conn, id))
        .await?;
    match body {
        None => Ok(None),
        Some((body, _received)) => {
            let body = AuthenticatedBody::from_operator(body.into());
            let answer = pipeline.enqueue(body).await?;
            Ok(Some(answer.await?))
        }
    }
}

pub fn replay_report(original: i64, receipt: &Receipt) -> Value {
    json!({
        "replayOf": original,
        "eventId": receipt.event_id,
        "status": receipt.status.as_str(),
        "error": receipt.rejection.as_ref().map(ToString::to_string),
    })
}

/// Gives a handler's dead events a fresh set of attempts; returns how many.
pub async fn redrive(store: &Store, handler: String) -> Result<usize, StorageError> {
    store
        .write(move |tx| Ok(handler_state::redrive(tx, &handler, now_ms())?))
        .await
}
