//! Retention on PostgreSQL: clearing bodies that neither a handler nor the projection needs.

use super::handler_state::reached_by_all;
use crate::config::HandlerStart;
use crate::storage::StorageError;
use crate::storage::model::{PruneKey, PruneStep};
use tokio_postgres::Client;

/// Looks at up to `limit` bodies received before `cutoff_ms`, after `after`, and clears those
/// nothing needs any more. A body stays while:
/// - a handler still owes its event a delivery (retrying or dead) or has not reached it yet;
/// - the projection rests on it: the event wrote a customer's current snapshot or latest
///   Experian check, or is an applied merge. `projection rebuild` replays exactly these.
///
/// Whether a body is still needed is decided again by the statement that clears it, so a
/// daemon that moves a handler or the projection meanwhile never loses a body it needs.
/// Kept bodies are walked past rather than looked at again by every step.
pub async fn prune_bodies(
    client: &mut Client,
    cutoff_ms: i64,
    handlers: &[(String, HandlerStart)],
    after: PruneKey,
    limit: i64,
) -> Result<PruneStep, StorageError> {
    let reached = reached_by_all(&*client, handlers).await?;
    let candidates: Vec<(i64, i64)> = client
        .query(
            "SELECT e.id, e.received_ms FROM events e
             WHERE e.body IS NOT NULL AND e.received_ms < $1
               AND (e.received_ms, e.id) > ($3, $4)
             ORDER BY e.received_ms, e.id LIMIT $2",
            &[&cutoff_ms, &limit, &after.0, &after.1],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<_, tokio_postgres::Error>>()?;
    let ids: Vec<i64> = candidates.iter().map(|(id, _)| *id).collect();
    let cleared = if ids.is_empty() {
        0
    } else {
        client
            .execute(
                "UPDATE events e SET body = NULL
                 WHERE e.id = ANY($1) AND e.body IS NOT NULL AND e.id <= $2
                   AND NOT EXISTS (SELECT 1 FROM handler_deliveries d WHERE d.event_id = e.id)
                   AND NOT (e.status = 'applied' AND (e.event_type = 'customer-merged' OR EXISTS (
                       SELECT 1 FROM event_customers t JOIN customers c ON c.id = t.customer_id
                       WHERE t.event_id = e.id
                         AND (c.event_id = e.id OR c.experian_event_id = e.id))))",
                &[&ids, &reached],
            )
            .await?
    };
    Ok(PruneStep {
        cleared,
        examined: candidates.len() as u64,
        last: candidates.last().map(|(id, received)| (*received, *id)),
    })
}
