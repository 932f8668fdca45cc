//! The OpenAPI description served at `/openapi.json`, and the answers schemathesis found
//! disagreeing with it, kept as regressions.

use crate::common::*;
use serde_json::Value;

async fn description(app: &TestApp) -> Value {
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(response.headers(), "content-type"),
        "application/json"
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn the_description_is_served_without_a_token_and_is_openapi_3_1() {
    let app = spawn_app().await;
    let document = description(&app).await;
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(document["paths"]["/webhooks/rebilly"]["post"].is_object());
}

/// Each described operation is answered by a route: the fallback's "no such endpoint" would
/// mean a path that is described but not served.
#[tokio::test]
async fn every_described_operation_is_served() {
    let app = spawn_app().await;
    let document = description(&app).await;
    for (path, item) in document["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "no-such-handler");
        for method in item.as_object().unwrap().keys() {
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let response = app
                .client
                .request(method.clone(), app.url(&concrete))
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert!(
                !(status == 404 && body.contains("no such endpoint")) && status != 405,
                "{method} {path} is described but not served: {status} {body}"
            );
        }
    }
}

/// An event id beyond i64 used to be answered in plain text by the path extractor.
#[tokio::test]
async fn an_event_id_out_of_range_is_a_problem_document() {
    let app = spawn_app().await;
    for response in [
        app.api_get("/events/9223372036854775808").await,
        app.api_post("/events/9223372036854775808/replay").await,
        app.api_get("/events/not-a-number").await,
    ] {
        let problem = expect_problem(response, 400).await;
        assert_eq!(problem["field"], "id", "{problem}");
    }
}

/// `fields` may leave out any property, `id` included: the described customer requires none.
#[tokio::test]
async fn a_customer_reduced_by_fields_matches_its_description() {
    let app = spawn_app().await;
    app.deliver_ok(fixture("deliveries/01-customer-created-alice.json"))
        .await;
    let customers = list(&app, "/customers?fields=email").await;
    assert_eq!(customers.len(), 1);
    assert!(customers[0].get("id").is_none(), "{customers:?}");
    let document = description(&app).await;
    let customer = &document["components"]["schemas"]["Customer"];
    assert!(customer["properties"]["id"].is_object(), "{customer}");
    let required = customer["required"].as_array().cloned().unwrap_or_default();
    assert!(required.is_empty(), "required: {required:?}");
}

/// Offsets are read as 32-bit unsigned integers and echoed in `Pagination-Offset`: the
/// description allows the whole range.
#[tokio::test]
async fn an_offset_beyond_i32_is_accepted_as_described() {
    let app = spawn_app().await;
    let document = description(&app).await;
    for path in ["/customers", "/events"] {
        let response = app.api_get(&format!("{path}?offset=2147483648")).await;
        assert_eq!(response.status(), 200, "{path}");
        let parameters = document["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap();
        let offset = parameters.iter().find(|p| p["name"] == "offset").unwrap();
        let maximum = offset["schema"]["maximum"].as_f64();
        let format = offset["schema"]["format"].as_str();
        assert!(
            maximum.is_some_and(|m| m >= 4_294_967_295.0) && format != Some("int32"),
            "{path}: {offset}"
        );
        let header = &document["paths"][path]["get"]["responses"]["200"]["headers"]["Pagination-Offset"]
            ["schema"];
        assert_ne!(header["format"], "int32", "{path}: {header}");
    }
}

/// The property names a described object schema lists, following one `allOf` level.
fn described_properties(document: &Value, schema: &str) -> Vec<String> {
    let schemas = &document["components"]["schemas"];
    let mut names: Vec<String> = Vec::new();
    let parts = match schemas[schema]["allOf"].as_array() {
        Some(parts) => parts.clone(),
        None => vec![schemas[schema].clone()],
    };
    for part in parts {
        let part = match part["$ref"].as_str() {
            Some(reference) => schemas[reference.rsplit('/').next().unwrap()].clone(),
            None => part,
        };
        names.extend(part["properties"].as_object().unwrap().keys().cloned());
    }
    names.sort();
    names
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    keys
}

/// The answers whose JSON is built by hand are described by types of their own: each answer
/// has exactly the properties its description lists, so neither can change alone.
#[tokio::test]
async fn hand_built_answers_have_exactly_their_described_properties() {
    let app = spawn_app_with("[[handlers]]\nname = \"audit\"\nkind = \"log\"\n").await;
    let document = description(&app).await;
    let delivered: Value = app
        .deliver(fixture("deliveries/01-customer-created-alice.json"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&delivered),
        described_properties(&document, "Delivered")
    );
    let id = delivered["eventId"].as_i64().unwrap();

    let replayed: Value = app
        .api_post(&format!("/events/{id}/replay"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        keys(&replayed),
        described_properties(&document, "ReplayReport")
    );

    let redriven = app.api_post("/handlers/audit/redrive").await;
    assert_eq!(redriven.status(), 200);
    let redriven: Value = redriven.json().await.unwrap();
    assert_eq!(
        keys(&redriven),
        described_properties(&document, "RedriveReport")
    );

    let detail = event_detail(&app, id).await;
    assert_eq!(
        keys(&detail),
        described_properties(&document, "EventDetail")
    );
    let handlers = detail["handlers"].as_array().unwrap();
    for attempt in handlers {
        for key in keys(attempt) {
            assert!(
                described_properties(&document, "HandlerAttempt").contains(&key),
                "{key} in {attempt}"
            );
        }
    }

    let customer = app.customer("cus_alice_01").await;
    for property in described_properties(&document, "Customer") {
        assert!(
            customer.get(&property).is_some(),
            "{property} in {customer}"
        );
    }
}
