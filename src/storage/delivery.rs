//! A delivery as every backend's writer takes it: the received body with what needs no database
//! (its dedupe key, the encoded snapshots, the customers it touches) computed on the request's
//! own task, so that a writer spends its time on the database only.

use super::{Ingested, NewDelivery, Status, StorageError};
use crate::event::{Event, ParseError};
use crate::handlers::projection::{Effect, Encoded};
use crate::log_limit::{self, LogLimit};
use crate::telemetry;
use sha2::{Digest, Sha256};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// A writer's answer to one delivery. The delivery travels back with it, so that its memory
/// (the parsed event, the body) is freed on the request's task instead of on the busy writer.
pub type Answer = (Result<Ingested, StorageError>, Box<Delivery>);
pub type Reply = oneshot::Sender<Answer>;

/// Hands `delivery` to a writer's queue at once and waits for its answer; a full queue is
/// answered at once with [`StorageError::Overloaded`].
pub async fn submit_now<C>(
    commands: &mpsc::Sender<C>,
    delivery: NewDelivery,
    command: impl FnOnce(Box<Delivery>, Reply) -> C,
) -> Result<Ingested, StorageError> {
    let (reply, answer) = oneshot::channel();
    commands
        .try_send(command(Box::new(Delivery::new(delivery)), reply))
        .map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => StorageError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => StorageError::WriterGone,
        })?;
    received(answer.await)
}

/// Queues `delivery`, waiting for room instead of refusing (offline replay); the returned
/// future yields the answer. Deliveries queued one after the other keep their order.
pub async fn submit_waiting<C, F>(
    commands: &mpsc::Sender<C>,
    delivery: NewDelivery,
    command: F,
) -> Result<impl Future<Output = Result<Ingested, StorageError>> + use<C, F>, StorageError>
where
    F: FnOnce(Box<Delivery>, Reply) -> C,
{
    let (reply, answer) = oneshot::channel();
    commands
        .send(command(Box::new(Delivery::new(delivery)), reply))
        .await
        .map_err(|_| StorageError::WriterGone)?;
    Ok(async move { received(answer.await) })
}

/// A writer's batch: each delivery with the request waiting for its answer.
pub type Batch = Vec<(Box<Delivery>, Reply)>;

/// Failed batches, logged at most once per interval.
static BATCH_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);

/// Answers every request of a committed batch and records the batch's metrics; says so once
/// when writes flow again after `failed_batches` failures (then counts from zero).
pub fn answer_committed(
    batch: &mut Batch,
    answers: Vec<Result<Ingested, StorageError>>,
    last_id: i64,
    started: Instant,
    failed_batches: &mut u64,
) {
    telemetry::record_batch(batch.len(), started.elapsed());
    telemetry::record_log_size(last_id);
    for ((delivery, reply), answer) in batch.drain(..).zip(answers) {
        let _ = reply.send((answer, delivery));
    }
    if *failed_batches > 0 {
        tracing::info!(
            failed_batches = *failed_batches,
            "the database accepts writes again"
        );
        *failed_batches = 0;
    }
}

/// Answers every request of a batch that could not be committed with `each()`: none of its
/// deliveries was acknowledged, so every sender retries.
pub fn answer_failed(
    batch: &mut Batch,
    error: &dyn std::fmt::Display,
    each: impl Fn() -> StorageError,
    failed_batches: &mut u64,
) {
    *failed_batches += 1;
    if let Some(suppressed) = BATCH_FAILURES.admit() {
        tracing::error!(
            error = %error,
            batch = batch.len(),
            suppressed,
            "writer batch failed to commit; none of its deliveries was acknowledged"
        );
    }
    for (delivery, reply) in batch.drain(..) {
        let _ = reply.send((Err(each()), delivery));
    }
}

/// Unpacks a writer's answer; the returned delivery is dropped here, on the caller's task.
fn received(answer: Result<Answer, oneshot::error::RecvError>) -> Result<Ingested, StorageError> {
    match answer {
        Ok((result, _delivery)) => result,
        Err(_) => Err(StorageError::WriterGone),
    }
}

/// A delivery with everything that needs no database (hashes, encoded snapshots) computed on
/// the request's own task, so that a writer spends its time on the database.
pub struct Delivery {
    pub inner: NewDelivery,
    pub keys: DedupeKeys,
    pub prepared: Encoded,
}

impl Delivery {
    pub fn new(inner: NewDelivery) -> Self {
        let (keys, prepared) = prepare(&inner.body, inner.parsed.as_ref().ok());
        Self {
            inner,
            keys,
            prepared,
        }
    }
}

pub fn prepare(body: &[u8], event: Option<&Event>) -> (DedupeKeys, Encoded) {
    let keys = match event.and_then(semantic_key) {
        Some(key) => DedupeKeys::Semantic(key),
        None => DedupeKeys::Body(Sha256::digest(body).into()),
    };
    let prepared = event.map(Encoded::of).unwrap_or_default();
    (keys, prepared)
}

/// The one dedupe key a delivery claims, a SHA-256 digest. An event with a semantic key (type,
/// customer, revision) is identified by it alone: a byte-identical redelivery has the same key,
/// so a second key of its body would only cost one more random B-tree leaf written per
/// delivery. Events without one (Experian checks, other types, customers without a revision)
/// are identified by their body. Databases of older releases also hold body keys of customer
/// events; they are never looked up again.
pub enum DedupeKeys {
    Semantic([u8; 32]),
    Body([u8; 32]),
}

impl DedupeKeys {
    /// The digest claimed in the dedupe table.
    pub fn key(&self) -> &[u8; 32] {
        match self {
            Self::Semantic(key) | Self::Body(key) => key,
        }
    }
}

/// The key that makes a second event of the same type, customer and revision a duplicate.
/// Experian checks have none: each one is kept.
fn semantic_key(event: &Event) -> Option<[u8; 32]> {
    let text = match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            let revision = e.customer.revision?;
            format!(
                "{}\n{}\n{}",
                event.event_type(),
                e.customer.id,
                revision.get()
            )
        }
        // A customer is merged away once: the duplicated id alone identifies the merge.
        Event::CustomerMerged(e) => format!("{}\n{}", event.event_type(), e.duplicated.id),
        Event::ExperianCheckPerformed(_) | Event::Other { .. } => return None,
    };
    Some(Sha256::digest(text.as_bytes()).into())
}

/// Every customer an event touches, each once: handlers hold the event behind all of them.
pub fn touched(event: &Event) -> Vec<&str> {
    let mut customers: Vec<&str> = match event {
        Event::CustomerCreated(e) | Event::CustomerUpdated(e) | Event::CustomerSynced(e) => {
            vec![e.customer.id.as_str()]
        }
        Event::CustomerMerged(e) => std::iter::once(e.duplicated.id.as_str())
            .chain(std::iter::once(e.target_id.as_str()))
            .chain(e.target.iter().map(|t| t.id.as_str()))
            .collect(),
        Event::ExperianCheckPerformed(e) => std::iter::once(e.customer_id.as_str())
            .chain(e.customer.iter().map(|c| c.id.as_str()))
            .collect(),
        Event::Other { .. } => Vec::new(),
    };
    customers.sort_unstable();
    customers.dedup();
    customers
}

/// The `source` of events fetched by `sync`; every other event is a webhook delivery.
pub const SYNC_SOURCE: &str = "sync";
pub const WEBHOOK_SOURCE: &str = "webhook";

/// One row of the event log as the writer records it.
pub struct EventRow<'a> {
    pub id: i64,
    pub received_ms: i64,
    pub event_type: Option<&'a str>,
    pub customer_id: Option<&'a str>,
    pub revision: Option<i64>,
    pub status: Status,
    pub error: Option<String>,
    pub error_field: Option<String>,
    pub duplicate_of: Option<i64>,
    /// What the projection held for `customer_id` once the event was applied.
    pub projected_revision: Option<i64>,
    pub body: Option<&'a [u8]>,
    pub source: &'static str,
    /// Every customer the event touches, recorded when it was applied.
    pub customers: Vec<&'a str>,
}

impl<'a> EventRow<'a> {
    /// A row not yet classified: `rejected` until the writer decides otherwise.
    pub fn new(id: i64, received_ms: i64, body: Option<&'a [u8]>) -> Self {
        Self {
            id,
            received_ms,
            event_type: None,
            customer_id: None,
            revision: None,
            status: Status::Rejected,
            error: None,
            error_field: None,
            duplicate_of: None,
            projected_revision: None,
            body,
            source: WEBHOOK_SOURCE,
            customers: Vec::new(),
        }
    }

    /// Records what the projection did with the event.
    pub fn record_effect(&mut self, effect: Effect) {
        self.status = match effect {
            Effect::Applied => Status::Applied,
            Effect::Stale(reason) => {
                self.error = reason;
                Status::Stale
            }
            Effect::NotHandled => Status::Ignored,
        };
    }

    /// Records that the body could not be used, and why.
    pub fn reject(&mut self, error: &ParseError) {
        self.status = Status::Rejected;
        self.error = Some(error.to_string());
        self.error_field = error.field().map(str::to_owned);
    }
}

/// Parses a stored body as it was received: a snapshot fetched by `sync` as such, anything
/// else as a webhook delivery.
pub fn parse_stored(body: &[u8], source: &str) -> Result<Event, ParseError> {
    if source == SYNC_SOURCE {
        crate::event::parse_synced(body)
    } else {
        crate::event::parse(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn experian_checks_have_no_semantic_key_but_customer_events_do() {
        let created = crate::event::parse(
            br#"{"eventType":"customer-created","customerId":"c","_embedded":{"customer":{"id":"c","revision":2}}}"#,
        )
        .unwrap();
        let check = crate::event::parse(
            br#"{"eventType":"experian-check-performed","customerId":"c","outcome":1,"_embedded":{"customer":{"id":"c","revision":2}}}"#,
        )
        .unwrap();
        assert!(semantic_key(&created).is_some());
        assert_eq!(semantic_key(&check), None);
        let (DedupeKeys::Body(key), _) = prepare(b"abc", None) else {
            panic!("an event without a semantic key is identified by its body");
        };
        assert_eq!(key[..4], [0xba, 0x78, 0x16, 0xbf], "SHA-256 of the body");
        let (keys, _) = prepare(b"abc", Some(&created));
        assert!(matches!(keys, DedupeKeys::Semantic(_)));
    }
}
