//! What every backend reads and writes, in the event model's own terms: the answers of
//! ingest, pages of customers and events, handler work and its outcomes. Nothing here knows a
//! database.

use crate::event::{Event, ParseError};
use crate::handlers::DispatchedEvent;
use crate::outcome::Status;
use crate::storage::StorageError;
use axum::body::Bytes;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashSet;

/// A received body with its parse result, ready for the writer.
pub struct NewDelivery {
    pub body: Bytes,
    pub parsed: Result<Event, ParseError>,
    pub received_ms: i64,
}

/// The answer for one committed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub event_id: i64,
    pub status: Status,
}

/// An event read for a handler, with what dispatching needs to know besides the event itself.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub event: DispatchedEvent,
    /// Attempts already made (0 for an event read after the cursor).
    pub attempts: u32,
    /// Retention cleared the body: the event can no longer be dispatched.
    pub body_pruned: bool,
}

/// What one pass of a handler found to do.
#[derive(Debug, Default)]
pub struct Work {
    pub cursor: i64,
    /// Retries whose time has come, each the oldest owed event of every customer it touches.
    pub due: Vec<Candidate>,
    /// New events after the cursor.
    pub fresh: Vec<Candidate>,
    /// Customers of the fresh events that an owed event holds: those events queue behind it.
    pub blocked: HashSet<String>,
}

/// What happened to one event during a pass.
#[derive(Debug, Clone)]
pub enum Outcome {
    Delivered,
    /// Failed or parked: try again at `next_attempt_ms`.
    Retry {
        attempts: u32,
        next_attempt_ms: i64,
        error: Option<String>,
    },
    Dead {
        attempts: u32,
        error: String,
    },
    /// Passed without being dispatched, for good; the reason is recorded with the event.
    Skipped {
        reason: String,
    },
}

/// Per-handler figures for metrics: events not yet passed, pending retries, dead events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandlerStats {
    pub behind: u64,
    pub pending: u64,
    pub dead: u64,
}

/// An event as the query API lists it.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventRecord {
    pub id: i64,
    pub received_time: String,
    pub event_type: Option<String>,
    pub customer_id: Option<String>,
    pub revision: Option<i64>,
    #[schema(value_type = Status)]
    pub status: String,
    pub error: Option<String>,
}

/// One asynchronous handler's state for one event.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandlerAttempt {
    pub handler: String,
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub next_attempt_time: Option<String>,
}

/// Everything known about one event: its record, raw body and handler state.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventDetail {
    #[serde(flatten)]
    pub record: EventRecord,
    pub error_field: Option<String>,
    pub duplicate_of: Option<i64>,
    pub body_size: i64,
    /// The raw body as text (lossy if it was not UTF-8); null once pruned.
    pub body: Option<String>,
    pub handlers: Vec<HandlerAttempt>,
}

/// Where a pruning pass has got to: it walks bodies by received time, then id.
pub type PruneKey = (i64, i64);

/// One step of a pruning pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneStep {
    pub cleared: u64,
    /// Bodies looked at; fewer than asked means the pass is complete.
    pub examined: u64,
    /// The last body looked at, where the next step resumes.
    pub last: Option<PruneKey>,
}

/// A page of customers and the total count matching the query.
#[derive(Debug, Clone)]
pub struct CustomerPage {
    pub customers: Vec<Value>,
    pub total: u64,
    pub limit: u32,
    pub offset: u32,
}

/// What became of the snapshots of one page.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncedPage {
    /// Recorded and applied to the projection.
    pub applied: u64,
    /// Already held at this revision or a higher one, or merged away: nothing recorded.
    pub stale: u64,
    /// Not a usable customer: recorded as `rejected`.
    pub rejected: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// Events replayed through the projection.
    pub replayed: u64,
    /// Events whose stored body no longer parses, left out because the caller allowed it.
    pub skipped_unparsable: Vec<i64>,
}

impl RebuildReport {
    /// Fails a rebuild that would rest on bodies retention cleared: it could not reproduce the
    /// projection in place.
    pub fn check_foundations(missing: &[i64]) -> Result<(), StorageError> {
        if missing.is_empty() {
            return Ok(());
        }
        Err(StorageError::Incomplete(format!(
            "the projection rests on the bodies of events {} and they were pruned; it cannot be \
             rebuilt",
            id_list(missing)
        )))
    }

    /// The report of a finished replay, or the error that fails the rebuild (nothing is
    /// changed) when stored bodies no longer parse and the caller did not allow leaving them
    /// out.
    pub fn checked(self, skip_unparsable: bool) -> Result<Self, StorageError> {
        if self.skipped_unparsable.is_empty() || skip_unparsable {
            return Ok(self);
        }
        Err(StorageError::Incomplete(format!(
            "the stored bodies of events {} no longer parse; nothing was changed (rebuild \
             with --skip-unparsable to leave them out)",
            id_list(&self.skipped_unparsable)
        )))
    }
}

/// Event ids for a message: all of them, as an operator needs each to look it up.
fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
