//! The query and admin endpoints, behind `Authorization: Bearer <api.token>`.

use super::AppState;
use super::params::PathParam;
use super::problem::Problem;
use crate::admin;
use crate::query::{CustomerQuery, EventListOptions, ListOptions, parse_event_query};
use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use subtle::ConstantTimeEq;

/// Rejects requests without the configured bearer token, comparing in constant time.
pub async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.api_token else {
        return Problem::unauthorized("the query API is disabled: set api.token").into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let valid = presented.is_some_and(|token| {
        let a = sha2_digest(token.as_bytes());
        let b = sha2_digest(expected.expose().as_bytes());
        bool::from(a.ct_eq(&b))
    });
    if !valid {
        return Problem::unauthorized("missing or invalid bearer token")
            .with_header(header::WWW_AUTHENTICATE, "Bearer")
            .into_response();
    }
    next.run(request).await
}

fn sha2_digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Refuses query parameters the endpoint does not know, naming them.
fn reject_unknown(params: &HashMap<String, String>, known: &[&str]) -> Result<(), Problem> {
    let mut unknown: Vec<&str> = params
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(Problem::new(
        axum::http::StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        format!(
            "unknown query parameter(s): {}; known: {}",
            unknown.join(", "),
            known.join(", ")
        ),
    )
    .with_field(Some(unknown[0].to_owned())))
}

#[utoipa::path(
    get,
    path = "/customers/{id}",
    tag = "customers",
    description = "The customer as Rebilly last described it (the snapshot of the highest \
        revision seen), plus `mergedInto` and `experianCheck`.",
    params(("id" = String, Path, description = "The customer id", example = "cus_alice_01")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The customer", body = super::openapi::Customer),
        (status = 400, description = "The id is not valid UTF-8",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 404, description = "No such customer",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn get_customer(
    State(state): State<AppState>,
    PathParam(id): PathParam<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    match state.store.customer(id.clone()).await? {
        Some(customer) => Ok(Json(customer)),
        None => Err(Problem::not_found(format!("no customer with id {id}"))),
    }
}

#[utoipa::path(
    get,
    path = "/customers",
    tag = "customers",
    description = "Customers with Rebilly's list conventions; customers merged away are left \
        out. A parameter the daemon cannot evaluate is a 400 naming it.",
    params(
        ("limit" = Option<u32>, Query, nullable = false, minimum = 0, maximum = 1000,
            description = "Page size, 0..1000; default 100"),
        ("offset" = Option<u64>, Query, nullable = false, maximum = 4_294_967_295.0,
            description = "Customers to skip; default 0"),
        ("sort" = Option<String>, Query, nullable = false,
            description = "Rebilly field names separated by `,`; `-` before one for descending"),
        ("filter" = Option<String>, Query, nullable = false,
            description = "Rebilly's grammar: `field:value` pairs joined by `;`, `,` between \
                values, `!` negates, ranges `a..b`, `a..`, `..b`, sub-fields with `.`"),
        ("q" = Option<String>, Query, nullable = false,
            description = "Partial text search over names and emails"),
        ("fields" = Option<String>, Query, nullable = false, min_length = 1,
            description = "Top-level fields to keep: names of letters, digits and `_`, \
                separated by `,`"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of customers", body = [super::openapi::Customer],
            headers(
                ("Pagination-Total" = u64, description = "How many match in all"),
                ("Pagination-Limit" = u32, description = "The limit applied"),
                ("Pagination-Offset" = u64, description = "The offset applied"),
            )),
        (status = 400, description = "A query parameter that is unknown or cannot be \
            evaluated; `field` names it",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn list_customers(
    State(state): State<AppState>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    reject_unknown(
        &params,
        &["limit", "offset", "sort", "filter", "q", "fields"],
    )?;
    let options = ListOptions {
        limit: params.remove("limit"),
        offset: params.remove("offset"),
        sort: params.remove("sort"),
        filter: params.remove("filter"),
        q: params.remove("q"),
        fields: params.remove("fields"),
    };
    let query = CustomerQuery::parse(&options).map_err(|e| Problem::bad_query(&e))?;
    let page = state.store.customers(query).await?;
    let mut response = Json(page.customers).into_response();
    pagination_headers(response.headers_mut(), page.total, page.limit, page.offset);
    Ok(response)
}

fn pagination_headers(headers: &mut HeaderMap, total: u64, limit: u32, offset: u32) {
    for (name, value) in [
        ("pagination-total", total),
        ("pagination-limit", u64::from(limit)),
        ("pagination-offset", u64::from(offset)),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    description = "The event log, newest first.",
    params(
        ("customerId" = Option<String>, Query, nullable = false,
            description = "Only this customer's events"),
        ("status" = Option<crate::storage::Status>, Query, nullable = false,
            description = "Only this outcome"),
        ("eventType" = Option<String>, Query, nullable = false,
            description = "Only this Rebilly event type"),
        ("filter" = Option<String>, Query, nullable = false,
            description = "Rebilly's filter grammar over `id`, `customerId`, `eventType`, \
                `status`, `revision` and `receivedTime` (see `GET /customers`)"),
        ("limit" = Option<u32>, Query, nullable = false, minimum = 0, maximum = 1000,
            description = "Page size, 0..1000; default 100"),
        ("offset" = Option<u64>, Query, nullable = false, maximum = 4_294_967_295.0,
            description = "Events to skip; default 0"),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of events",
            body = [crate::storage::EventRecord],
            headers(
                ("Pagination-Total" = u64, description = "How many match in all"),
                ("Pagination-Limit" = u32, description = "The limit applied"),
                ("Pagination-Offset" = u64, description = "The offset applied"),
            )),
        (status = 400, description = "A query parameter that is unknown or invalid; `field` \
            names it", body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn list_events(
    State(state): State<AppState>,
    Query(mut params): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    reject_unknown(
        &params,
        &[
            "customerId",
            "status",
            "eventType",
            "filter",
            "limit",
            "offset",
        ],
    )?;
    let options = EventListOptions {
        customer_id: params.remove("customerId"),
        status: params.remove("status"),
        event_type: params.remove("eventType"),
        filter: params.remove("filter"),
        limit: params.remove("limit"),
        offset: params.remove("offset"),
    };
    let query = parse_event_query(&options).map_err(|e| Problem::bad_query(&e))?;
    let (limit, offset) = (query.limit, query.offset);
    let (events, total) = state.store.events(query).await?;
    let mut response = Json(events).into_response();
    pagination_headers(response.headers_mut(), total, limit, offset);
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/events/{id}",
    tag = "events",
    description = "One event: its record, raw body (null once pruned) and handler state.",
    params(("id" = i64, Path, description = "The event id", example = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The event", body = crate::storage::EventDetail),
        (status = 400, description = "The id is not an integer",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 404, description = "No such event",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn get_event(
    State(state): State<AppState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<crate::storage::EventDetail>, Problem> {
    state
        .store
        .event(id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no event with id {id}")))
}

#[utoipa::path(
    post,
    path = "/events/{id}/replay",
    tag = "operations",
    description = "Runs a stored body through the pipeline again as a new delivery, under the \
        same dedupe and revision rules.",
    params(("id" = i64, Path, description = "The event id", example = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The new delivery", body = super::openapi::ReplayReport),
        (status = 400, description = "The id is not an integer",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 404, description = "No such event, or its body was pruned",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn replay_event(
    State(state): State<AppState>,
    PathParam(id): PathParam<i64>,
) -> Result<Json<serde_json::Value>, Problem> {
    match admin::replay_event(&state.pipeline, id).await? {
        Some(receipt) => Ok(Json(admin::replay_report(id, &receipt))),
        None => Err(Problem::not_found(format!(
            "no event with id {id}, or its body was pruned"
        ))),
    }
}

#[utoipa::path(
    post,
    path = "/handlers/{name}/redrive",
    tag = "operations",
    description = "Gives a handler's events marked for an operator back to it.",
    params(("name" = String, Path, description = "A configured handler's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "How many were given back",
            body = super::openapi::RedriveReport),
        (status = 400, description = "The name is not valid UTF-8",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 404, description = "No handler of that name",
            body = super::problem::Document, content_type = "application/problem+json"),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 408, response = super::openapi::Timeout),
        (status = 503, response = super::openapi::Busy),
    ),
)]
pub async fn redrive_handler(
    State(state): State<AppState>,
    PathParam(name): PathParam<String>,
) -> Result<Json<serde_json::Value>, Problem> {
    if !state.handler_names.contains(&name) {
        return Err(Problem::not_found(format!("no handler named {name}")));
    }
    let count = state.store.redrive(name.clone()).await?;
    Ok(Json(
        serde_json::json!({"handler": name, "redriven": count}),
    ))
}
