//! A concurrency limit per group of routes, with a bounded wait: a request waits at most the
//! request timeout for a slot and is then answered 503 with `Retry-After` (so that a sender
//! retries later instead of waiting without end), and once started it has the request timeout
//! to finish, else 408. The slots are handed out in arrival order.

use super::problem::Problem;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

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
    let Ok(Ok(_slot)) =
        tokio::time::timeout(limit.timeout, limit.slots.clone().acquire_owned()).await
    else {
        if limit.deliveries {
            crate::telemetry::record_refusal(crate::telemetry::Refusal::Overloaded);
        }
        return Problem::unavailable(
            "too many requests in progress; retry after the indicated delay",
        )
        .into_response();
    };
    match tokio::time::timeout(limit.timeout, next.run(request)).await {
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(limit: Limit) -> Router {
        Router::new()
            .route("/", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(limit, enforce))
    }

    fn get_root() -> Request {
        Request::builder().uri("/").body(Body::empty()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_cannot_get_a_slot_in_time_is_answered_503_with_retry_after() {
        let limit = Limit::for_others(1, Duration::from_secs(30));
        let held = limit.slots.clone().acquire_owned().await.unwrap();
        let response = app(limit.clone()).oneshot(get_root()).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()["retry-after"], "1");
        drop(held);
        let response = app(limit).oneshot(get_root()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_finish_in_time_is_answered_408() {
        let limit = Limit::for_others(1, Duration::from_secs(30));
        let app = Router::new()
            .route("/", get(std::future::pending::<&'static str>))
            .route_layer(axum::middleware::from_fn_with_state(limit.clone(), enforce));
        let response = app.oneshot(get_root()).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(limit.slots.available_permits(), 1, "the slot is given back");
    }
}
