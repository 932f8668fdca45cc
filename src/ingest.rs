//! The ingest pipeline shared by HTTP deliveries and `replay`: parse an authenticated body into
//! the event model, hand it to the writer, and report what became of it.

use crate::auth::AuthenticatedBody;
use crate::clock::now_ms;
use crate::event::{self, ParseError};
use crate::storage::{Ingested, NewDelivery, Status, StorageError, Store};
use crate::telemetry;

/// What became of one body, with the parse error for a rejection.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub event_id: i64,
    pub status: Status,
    pub rejection: Option<ParseError>,
    pub event_type: Option<String>,
    pub customer_id: Option<String>,
}

#[derive(Clone)]
pub struct Pipeline {
    store: Store,
}

/// What the pipeline remembers of a body while the writer stores it.
struct Meta {
    rejection: Option<ParseError>,
    event_type: Option<String>,
    customer_id: Option<String>,
}

fn prepare(body: AuthenticatedBody) -> (NewDelivery, Meta) {
    let body = body.into_bytes();
    let parsed = event::parse(&body);
    let meta = match &parsed {
        Ok(event) => Meta {
            rejection: None,
            event_type: Some(event.event_type().to_owned()),
            customer_id: event.customer_id().map(|c| c.to_string()),
        },
        Err(error) => Meta {
            rejection: Some(error.clone()),
            event_type: None,
            customer_id: None,
        },
    };
    let delivery = NewDelivery {
        body,
        parsed,
        received_ms: now_ms(),
    };
    (delivery, meta)
}

impl Meta {
    fn receipt(self, ingested: Ingested) -> Receipt {
        telemetry::record_delivery(ingested.status);
        Receipt {
            event_id: ingested.event_id,
            status: ingested.status,
            rejection: self.rejection,
            event_type: self.event_type,
            customer_id: self.customer_id,
        }
    }
}

impl Pipeline {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Ingests one body; refuses at once with `Overloaded` when the writer queue is full.
    pub async fn submit(&self, body: AuthenticatedBody) -> Result<Receipt, StorageError> {
        let (delivery, meta) = prepare(body);
        let ingested = self.store.ingest(delivery).await?;
        Ok(meta.receipt(ingested))
    }

    /// Queues one body behind those queued before it, waiting for room; the returned future
    /// yields its receipt. Used by `replay`, which keeps many bodies in flight in order.
    pub async fn enqueue(
        &self,
        body: AuthenticatedBody,
    ) -> Result<impl Future<Output = Result<Receipt, StorageError>> + use<>, StorageError> {
        let (delivery, meta) = prepare(body);
        let answer = self.store.enqueue(delivery).await?;
        Ok(async move { Ok(meta.receipt(answer.await?)) })
    }
}
