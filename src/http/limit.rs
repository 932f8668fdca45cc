//! A concurrency limit per group of routes, and the request deadline that includes the wait for
//! a slot: a request that cannot start in time is answered 503 with `Retry-After` instead of
//! waiting without end, and one that starts but does not finish in time is answered 408.

use super::problem::Problem;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Limit {
    slots: Arc<Semaphore>,
    timeout: Duration,
    /// Whether a refusal counts as a refused delivery in the metrics.
    deliveries: bool,
}

impl Limit {
    pub fn for_deliveries(slots: usize, timeout: Duration) -> Self {
        Self::new(slots, timeout, true)
    }

    pub fn for_others(slots: usize, timeout: Duration) -> Self {
        Self::new(slots, timeout, false)
    }

    fn new(slots: usize, timeout: Duration, deliveries: bool) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            timeout,
            deliveries,
        }
    }
}

pub async fn enforce(State(limit): State<Limit>, request: Request, next: Next) -> Response {
    let deadline = Instant::now() + limit.timeout;
    let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, limit.slots.acquire_owned()).await else {
        if limit.deliveries {
            crate::telemetry::record_refusal(crate::telemetry::Refusal::Overloaded);
        }
        return Problem::unavailable(
            "too many requests in progress; retry after the indicated delay",
        )
        .into_response();
    };
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request Timeout",
            "the request did not complete within server.request_timeout_seconds",
        )
        .into_response(),
    }
}
