//! The HTTP face: routes, shared state, request ids and tracing spans, timeouts.

mod api;
pub mod problem;
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
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tower_http::timeout::TimeoutLayer;

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
}

pub fn router(state: AppState, request_timeout: Duration) -> Router {
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
    Router::new()
        .route("/webhooks/rebilly", post(webhook::receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
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
    match state.store.probe_write().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(error) => {
            tracing::warn!(error = %error, "readiness probe failed");
            problem::Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not Ready",
                "the database does not accept writes",
            )
            .into_response()
        }
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

/// One span per request, keyed by a request id taken from `x-request-id` or generated, and
/// echoed in the response. Handlers record the event type, customer id and outcome on it.
async fn request_span(mut request: Request, next: Next) -> Response {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
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
