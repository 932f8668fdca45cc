//! Operator actions shared by the admin endpoints and the command line that are more than one
//! storage call: replaying a stored event and reporting it.

use crate::auth::AuthenticatedBody;
use crate::ingest::{Pipeline, Receipt};
use crate::storage::StorageError;
use serde_json::{Value, json};

/// Runs a stored body through the pipeline again as a new delivery. The revision and dedupe
/// rules apply as to any delivery: replaying an applied event answers `duplicate`, replaying a
/// rejection that a newer version can parse applies it. `None` if unknown or pruned.
pub async fn replay_event(pipeline: &Pipeline, id: i64) -> Result<Option<Receipt>, StorageError> {
    match pipeline.store().raw_body(id).await? {
        None => Ok(None),
        Some(body) => {
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
