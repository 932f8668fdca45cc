//! Handlers: what happens to an event once it is in the log.
//!
//! - [`projection`]: synchronous handlers, run inside the writer's transaction.
//! - [`AsyncHandler`]: side effects (forwarding, logging), driven by [`crate::dispatch`] from the
//!   log by a cursor each, at least once, one customer's events in order.

pub mod forward;
pub mod projection;

use crate::config::{HandlerKind, HandlerSettings};
use std::future::Future;
use std::pin::Pin;

/// An event as asynchronous handlers receive it.
#[derive(Debug, Clone)]
pub struct DispatchedEvent {
    pub id: i64,
    pub event_type: Option<String>,
    pub customer_id: Option<String>,
    /// The revision of the snapshot the event itself carries.
    pub revision: Option<i64>,
    /// The revision the projection held for `customer_id` once this event was applied (`None`
    /// when unknown). It differs from `revision` when the event carries an older snapshot than
    /// one already applied, such as an Experian check embedding an earlier revision.
    pub projected_revision: Option<i64>,
    /// Every customer the event touches (a merge: the customer merged away and its target).
    /// The event waits behind each one's earlier undelivered events.
    pub customers: Vec<String>,
    pub body: Vec<u8>,
}

pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// A side effect run for every applied event. An `Err` is retried with backoff.
pub trait AsyncHandler: Send + Sync {
    fn handle<'a>(&'a self, event: &'a DispatchedEvent) -> HandlerFuture<'a>;
}

/// Writes one structured log line per event; never fails.
#[derive(Debug)]
pub struct LogHandler {
    name: String,
}

impl AsyncHandler for LogHandler {
    fn handle<'a>(&'a self, event: &'a DispatchedEvent) -> HandlerFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                handler = %self.name,
                event_id = event.id,
                event_type = event.event_type.as_deref().unwrap_or(""),
                customer_id = event.customer_id.as_deref().unwrap_or(""),
                revision = event.revision,
                projected_revision = event.projected_revision,
                "event handled"
            );
            Ok(())
        })
    }
}

/// Builds the handler a configuration entry describes.
pub fn build(settings: &HandlerSettings) -> Box<dyn AsyncHandler> {
    match &settings.kind {
        HandlerKind::Forward {
            url,
            basic,
            timeout_seconds,
        } => Box::new(forward::ForwardHandler::new(
            url,
            basic.clone(),
            std::time::Duration::from_secs(*timeout_seconds),
        )),
        HandlerKind::Log => Box::new(LogHandler {
            name: settings.name.clone(),
        }),
    }
}
