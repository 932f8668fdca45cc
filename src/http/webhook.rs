//! `POST /webhooks/rebilly`: authenticate the raw request, read the body within its limit,
//! run the ingest pipeline, answer once the commit is durable.

use super::AppState;
use super::problem::Problem;
use crate::auth::{AuthError, RequestHead};
use crate::event::ParseError;
use crate::ingest::Receipt;
use crate::storage::Status;
use crate::telemetry::{self, Refusal};
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use std::net::SocketAddr;
use std::time::Instant;

pub async fn receive(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let head = RequestHead {
        method: &method,
        target: uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &headers,
        peer: peer.ip(),
    };
    let response = match deliver(&state, &head, body).await {
        Ok(receipt) => answer(receipt),
        Err(problem) => problem.into_response(),
    };
    telemetry::record_request("webhook", started.elapsed());
    tracing::Span::current().record("http.status", response.status().as_u16());
    response
}

async fn deliver(state: &AppState, head: &RequestHead<'_>, body: Body) -> Result<Receipt, Problem> {
    let headers = head.headers;
    state
        .authenticator
        .check_head(head)
        .map_err(|e| refuse_auth(state, e))?;
    let bytes = read_limited(body, headers, state.max_body_bytes).await?;
    let body = state
        .authenticator
        .check_body(headers, bytes)
        .map_err(|e| refuse_auth(state, e))?;
    let receipt = state.pipeline.submit(body).await.map_err(|error| {
        if matches!(error, crate::storage::StorageError::Overloaded) {
            telemetry::record_refusal(Refusal::Overloaded);
        } else {
            telemetry::record_refusal(Refusal::Failed);
        }
        Problem::from(error)
    })?;
    let span = tracing::Span::current();
    span.record("event_id", receipt.event_id);
    span.record("event_type", receipt.event_type.as_deref().unwrap_or(""));
    span.record("customer_id", receipt.customer_id.as_deref().unwrap_or(""));
    span.record("outcome", receipt.status.as_str());
    // One line per delivery is for debugging: at info, the request span and metrics suffice.
    tracing::debug!(status = receipt.status.as_str(), "delivery stored");
    Ok(receipt)
}

/// The log keeps which check failed; the answer does not say, so that it cannot tell a guesser
/// which of several configured checks passed.
fn refuse_auth(state: &AppState, error: AuthError) -> Problem {
    // A Digest client's first request carries no credentials, and one on an expired nonce is
    // sent again: both are steps of the protocol, not refusals worth a log line or a count.
    let handshake = error.is_digest_handshake();
    if handshake {
        tracing::debug!(reason = %error, "Digest challenge sent");
    } else {
        tracing::info!(reason = %error, "delivery refused");
    }
    match error {
        AuthError::NetworkNotAllowed | AuthError::NoClientAddress => {
            telemetry::record_refusal(Refusal::Forbidden);
            Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                error.to_string(),
            )
        }
        AuthError::Basic
        | AuthError::Digest(_)
        | AuthError::Header
        | AuthError::Signature
        | AuthError::Timestamp => {
            if !handshake {
                telemetry::record_refusal(Refusal::Unauthorized);
            }
            state
                .authenticator
                .challenges(error)
                .into_iter()
                .filter_map(|challenge| HeaderValue::try_from(challenge).ok())
                .fold(
                    Problem::unauthorized(UNAUTHORIZED_DETAIL),
                    |problem, value| problem.with_header_value(header::WWW_AUTHENTICATE, value),
                )
        }
    }
}

const UNAUTHORIZED_DETAIL: &str = "missing or invalid credentials";

fn too_large(limit: usize) -> Problem {
    telemetry::record_refusal(Refusal::TooLarge);
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "Payload Too Large",
        format!("the body exceeds the limit of {limit} bytes (server.max_body_bytes)"),
    )
}

/// Reads the body while counting: a body over the limit is refused before it sits in memory.
async fn read_limited(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Problem> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large(limit)),
        Err(error) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "unreadable-body",
            "Bad Request",
            format!("the request body could not be read: {error}"),
        )),
    }
}

fn answer(receipt: Receipt) -> Response {
    match (receipt.status, receipt.rejection) {
        (Status::Rejected, Some(error)) => rejection(receipt.event_id, error).into_response(),
        (status, _) => Json(serde_json::json!({
            "eventId": receipt.event_id,
            "status": status.as_str(),
        }))
        .into_response(),
    }
}

fn rejection(event_id: i64, error: ParseError) -> Problem {
    let problem = match &error {
        ParseError::NotAnObject(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "not-a-json-object",
            "Body is not a JSON object",
            error.to_string(),
        ),
        ParseError::Unusable { .. } => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unusable-event",
            "Event cannot be used",
            error.to_string(),
        ),
    };
    // The body is kept with status `rejected`; the id lets an operator find it.
    problem
        .with_field(error.field().map(str::to_owned))
        .with_event_id(event_id)
}
