//! Retention on PostgreSQL: clearing bodies that neither a handler nor the projection needs.

use crate::config::HandlerStart;
use crate::storage::StorageError;
use crate::storage::model::{PruneKey, PruneStep};
use tokio_postgres::Client;

pub async fn prune_bodies(
    client: &mut Client,
    cutoff_ms: i64,
    handlers: &[(String, HandlerStart)],
    after: PruneKey,
    limit: i64,
) -> Result<PruneStep, StorageError> {
    let _ = (client, cutoff_ms, handlers, after, limit);
    Err(StorageError::Incomplete(
        "retention::prune_bodies is not written yet".into(),
    ))
}
