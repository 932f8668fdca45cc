//! The HTTP face: routes, shared state, request ids and tracing spans, timeouts and
//! concurrency limits.

mod api;
mod limit;
pub mod problem;
mod readiness;
mod serve;
mod webhook;

use crate::auth::Authenticator;
use crate::ingest::Pipeline;
use crate::secret::Secret;
use crate::storage::Store;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use limit::Limit;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use readiness::Readiness;
pub use serve::serve;

pub const REQUEST_ID: &str = "x-request-id";

#[derive(Clone)]
pub struct AppState {
    pub pipeline: Pipeline,
    pub store: Store,
    pub authenticator: Arc<Authenticator>,
    pub api_token: Option<Secret>,
    pub max_body_bytes: usize,
    pub handler_names: Arc<Vec<String>>,
    pub metrics: PrometheusHandle,
    pub readiness: Arc<Readiness>,
}

/// How long a request may take and how many run at once, per group of routes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_timeout: Duration,
    /// Webhook deliveries in flight.
    pub deliveries: usize,
    /// Query, admin and probe requests in flight.
    pub others: usize,
}

/// Deliveries and everything else wait for separate permits, so that a flood of queries or
/// probes cannot hold the slots Rebilly's deliveries need. Waiting for a permit counts toward
/// the request timeout.
pub fn router(state: AppState, limits: Limits) -> Router {
    let deliveries = Limit::for_deliveries(limits.deliveries, limits.request_timeout);
    let others = Limit::for_others(limits.others, limits.request_timeout);
    let webhook = Router::new()
        .route("/webhooks/rebilly", post(webhook::receive))
        .route_layer(middleware::from_fn_with_state(deliveries, limit::enforce));
    let api = Router::new()
        .route("/customers", get(api::list_customers))
        .route("/customers/{id}", get(api::get_customer))
        .route("/events", get(api::list_events))
        .route("/events/{id}", get(api::get_event))
        .route("/events/{id}/replay", post(api::replay_event))
        .route("/handlers/{name}/redrive", post(api::redrive_handler))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            api::require_token,
        ));
    let others = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .route_layer(middleware::from_fn_with_state(others, limit::enforce));
    Router::new()
        .merge(webhook)
        .merge(others)
        .fallback(not_found)
        .layer(middleware::from_fn(request_span))
        .with_state(state)
}

async fn not_found() -> problem::Problem {
    problem::Problem::not_found("no such endpoint")
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.readiness.check(&state.store).await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        problem::Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not Ready",
            "the database does not accept writes",
        )
        .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    crate::telemetry::record_queue_depth(state.store.queue_depth());
    let text = state.metrics.render();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A client's request id is kept only if it is made of `[A-Za-z0-9._-]`: anything else could
/// forge fields or lines in text logs, and is replaced by a generated id.
fn is_safe_request_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One span per request, keyed by a request id taken from `x-request-id` or generated, and
/// echoed in the response. Handlers record the event type, customer id and outcome on it.
async fn request_span(mut request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| is_safe_request_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "{:08x}-{:06}",
                fastrand::u32(..),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            )
        });
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %request.uri().path(),
        http.status = tracing::field::Empty,
        event_id = tracing::field::Empty,
        event_type = tracing::field::Empty,
        customer_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let value = HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("invalid"));
    request.headers_mut().insert(REQUEST_ID, value.clone());
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.status", response.status().as_u16());
    span.in_scope(|| tracing::debug!("request finished"));
    response.headers_mut().insert(REQUEST_ID, value);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_request_ids_are_kept() {
        assert!(is_safe_request_id("trace-abc_123.4"));
        for forged in [
            "",
            "id outcome=applied",
            "id\" event_type=\"x",
            "a=b",
            "line\u{a}break",
            "caf\u{e9}",
            &"x".repeat(129),
        ] {
            assert!(!is_safe_request_id(forged), "{forged:?}");
        }
    }
}
