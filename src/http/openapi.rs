//! The OpenAPI 3.1 description of the HTTP API, assembled from the `#[utoipa::path]`
//! annotations on the handlers and the schemas derived from the response types, and served at
//! `GET /openapi.json`. Because it is built from the code, a route or a field cannot change
//! without the description changing with it; a test below fails for a route left undescribed.

use super::{api, webhook};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::OnceLock;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rebilly-webhookd",
        description = "Receives Rebilly webhooks, keeps every event and a customer projection, \
            and serves them. Every error is an `application/problem+json` document (RFC 9457) \
            that names the offending `field` where there is one, and the stored `eventId` when a \
            delivery was kept as rejected.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        webhook::receive,
        api::list_customers,
        api::get_customer,
        api::list_events,
        api::get_event,
        api::replay_event,
        api::redrive_handler,
        super::healthz,
        super::readyz,
        super::metrics,
        serve_document,
    ),
    components(
        responses(Timeout, Busy, Unauthorized),
        schemas(
            super::problem::Document,
            webhook::Delivered,
            crate::storage::Status,
            crate::storage::EventRecord,
            crate::storage::EventDetail,
            crate::storage::HandlerAttempt,
            WebhookBody,
            Customer,
            ExperianCheck,
            ReplayReport,
            RedriveReport,
        ),
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "webhooks", description = "Deliveries from Rebilly"),
        (name = "customers", description = "The customer projection; bearer token"),
        (name = "events", description = "The event log; bearer token"),
        (name = "operations", description = "Operator actions; bearer token"),
        (name = "probes", description = "Health, readiness, metrics and this description"),
    ),
)]
pub struct ApiDoc;

/// The names of the security schemes the annotations refer to.
pub const BASIC: &str = "basic";
pub const DIGEST: &str = "digest";
pub const HEADER_SECRET: &str = "headerSecret";
pub const STANDARD_WEBHOOKS: &str = "standardWebhooks";
pub const BEARER: &str = "bearer";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let schemes = [
            (
                BASIC,
                http(
                    HttpAuthScheme::Basic,
                    "`[[auth.basic]]`: Rebilly's webhook credential of type basic",
                ),
            ),
            (
                DIGEST,
                http(
                    HttpAuthScheme::Digest,
                    "`[[auth.digest]]`: HTTP Digest (RFC 7616, SHA-256 or MD5, qop=auth); a \
                     request without valid credentials is answered 401 with a challenge",
                ),
            ),
            (
                HEADER_SECRET,
                header_key(
                    "X-Webhook-Token",
                    "`[auth.header]`: a static secret header (Rebilly's custom webhook headers); \
                     the header name is `auth.header.name`",
                ),
            ),
            (
                STANDARD_WEBHOOKS,
                header_key(
                    "webhook-signature",
                    "`[auth.hmac]`: a Standard Webhooks signature over `webhook-id`, \
                     `webhook-timestamp` and the body, for signing relays",
                ),
            ),
            (
                BEARER,
                http(
                    HttpAuthScheme::Bearer,
                    "`api.token`: the query and admin endpoints",
                ),
            ),
        ];
        for (name, scheme) in schemes {
            components.add_security_scheme(name, scheme);
        }
    }
}

fn http(scheme: HttpAuthScheme, description: &str) -> SecurityScheme {
    let mut http = Http::new(scheme);
    http.description = Some(description.to_owned());
    SecurityScheme::Http(http)
}

fn header_key(name: &str, description: &str) -> SecurityScheme {
    SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
        name,
        description,
    )))
}

/// The document, built once: it depends only on the code.
pub fn document() -> &'static [u8] {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
            .into_bytes()
    })
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "probes",
    description = "This description of the HTTP API (OpenAPI 3.1). No token needed.",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json",
            body = Object),
        (status = 408, response = Timeout),
        (status = 503, response = Busy),
    ),
)]
pub async fn serve_document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

/// A Rebilly webhook body. No field is required by Rebilly's schema and fields come and go,
/// so every other property is accepted and kept; which ones a known event type needs is
/// answered with 422 naming the field.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "eventType": "customer-created",
    "customerId": "cus_example_01",
    "_embedded": {"customer": {
        "id": "cus_example_01",
        "revision": 1,
        "email": "someone@example.com",
        "createdTime": "2026-01-01T00:00:00Z",
        "updatedTime": "2026-01-01T00:00:00Z"
    }}
}))]
#[allow(dead_code)] // describes what Rebilly sends; never constructed
pub struct WebhookBody {
    /// A value of Rebilly's GlobalWebhookEventType, such as `customer-updated`.
    event_type: Option<String>,
    customer_id: Option<String>,
    #[serde(rename = "_embedded")]
    embedded: Option<Object>,
}

/// A JSON object of any shape.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // describes any JSON object; never constructed
pub struct Object(serde_json::Map<String, serde_json::Value>);

/// A projected customer: the snapshot of the highest revision seen, as Rebilly described it
/// (every field Rebilly sent is kept, so more properties than these appear), plus `mergedInto`
/// and `experianCheck`. With `fields`, only the named properties are present.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // describes a JSON object the projection builds; never constructed
pub struct Customer {
    /// Matches `^[@~\-.\w]+$`, at most 50 characters. Like every property, absent when
    /// `fields` leaves it out.
    #[schema(required = false)]
    id: String,
    revision: Option<i64>,
    created_time: Option<String>,
    updated_time: Option<String>,
    /// The customer this one was merged into, for good; null unless merged away.
    merged_into: Option<String>,
    /// The latest Experian check received, or null.
    experian_check: Option<ExperianCheck>,
}

/// The latest Experian check of a customer.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // describes a JSON object the projection builds; never constructed
pub struct ExperianCheck {
    /// 1 record matches, 0 no match found, -1 record mismatches.
    #[schema(minimum = -1, maximum = 1)]
    outcome: i64,
    reason: Option<String>,
    error_code: Option<String>,
    error_message: Option<String>,
}

/// The answer to replaying a stored event: the new delivery it became.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON `admin::replay_report` builds; never constructed
pub struct ReplayReport {
    /// The event replayed.
    replay_of: i64,
    /// The event the replay was stored as.
    event_id: i64,
    status: crate::storage::Status,
    /// Why the body was rejected, when it was.
    error: Option<String>,
}

/// The answer to redriving a handler's events marked for an operator.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the JSON the redrive endpoint builds; never constructed
pub struct RedriveReport {
    handler: String,
    /// How many events were given back to the handler.
    #[schema(minimum = 0)]
    redriven: u64,
}

/// The problem answers shared by many operations, so that each is described once.
#[derive(utoipa::ToResponse)]
#[response(
    description = "The request did not complete within `server.request_timeout_seconds`",
    content_type = "application/problem+json"
)]
#[allow(dead_code)] // a response description; never constructed
pub struct Timeout(super::problem::Document);

#[derive(utoipa::ToResponse)]
#[response(
    description = "Missing or invalid bearer token",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
#[allow(dead_code)] // a response description; never constructed
pub struct Unauthorized(super::problem::Document);

#[derive(utoipa::ToResponse)]
#[response(
    description = "Too many requests in progress, or storage cannot take a write; retry after \
        `Retry-After` seconds",
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))
)]
#[allow(dead_code)] // a response description; never constructed
pub struct Busy(super::problem::Document);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const ROUTE_METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

    /// Every `.route("PATH", method(...))` registered in the router, as (method, path).
    fn routed(source: &str) -> Vec<(String, String)> {
        let mut routes = Vec::new();
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            let path_start = rest.find('"').expect("a route path") + 1;
            let path_len = rest[path_start..].find('"').expect("a closed path");
            let path = &rest[path_start..path_start + path_len];
            let handlers = &rest[path_start + path_len..];
            let handlers = &handlers[..handlers.find(".route").unwrap_or(handlers.len())];
            for method in ROUTE_METHODS {
                let called = format!("{method}(");
                let mut scan = handlers;
                while let Some(i) = scan.find(&called) {
                    let before = scan[..i].chars().next_back();
                    if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        routes.push((method.to_owned(), path.to_owned()));
                    }
                    scan = &scan[i + called.len()..];
                }
            }
        }
        routes.sort();
        routes.dedup();
        routes
    }

    fn described() -> Vec<(String, String)> {
        let document: Value = serde_json::from_slice(document()).unwrap();
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ROUTE_METHODS.contains(&method.as_str()) {
                    operations.push((method.clone(), path.clone()));
                }
            }
        }
        operations.sort();
        operations
    }

    #[test]
    fn the_router_source_is_read_as_expected() {
        let routes = routed(
            r#".route("/a", get(x)).route(
                "/b/{id}",
                post(y).get(z),
            )"#,
        );
        assert_eq!(
            routes,
            [
                ("get".into(), "/a".into()),
                ("get".into(), "/b/{id}".into()),
                ("post".into(), "/b/{id}".into())
            ]
        );
    }

    #[test]
    fn every_route_of_the_router_is_described_and_nothing_else() {
        let routes = routed(include_str!("mod.rs"));
        assert!(routes.len() >= 11, "routes found: {routes:?}");
        assert_eq!(
            described(),
            routes,
            "each route needs #[utoipa::path] on its handler and a place in ApiDoc's paths"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1_with_every_security_scheme() {
        let document: Value = serde_json::from_slice(document()).unwrap();
        assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemes = document["components"]["securitySchemes"]
            .as_object()
            .unwrap();
        for name in [BASIC, DIGEST, HEADER_SECRET, STANDARD_WEBHOOKS, BEARER] {
            assert!(schemes.contains_key(name), "{name}");
        }
    }

    #[test]
    fn every_error_answer_is_a_problem_document() {
        let document: Value = serde_json::from_slice(document()).unwrap();
        let shared = &document["components"]["responses"];
        for (path, item) in document["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for (status, response) in operation["responses"].as_object().unwrap() {
                    if status.starts_with('2') {
                        continue;
                    }
                    let response = match response["$ref"].as_str() {
                        Some(reference) => &shared[reference.rsplit('/').next().unwrap()],
                        None => response,
                    };
                    let schema = &response["content"]["application/problem+json"]["schema"];
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
