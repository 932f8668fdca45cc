//! Ingest and dedupe: rejected bodies are kept, ignored types and duplicates are answered
//! as such, acknowledged deliveries survive a restart, and group commit answers each request.

use crate::common::{self, *};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

backends! {
#[tokio::test]
async fn a_delivery_is_applied_and_visible_at_once() {
    let app = common::spawn_app().await;
    let (id, status) = app
        .deliver_ok(common::fixture("deliveries/01-customer-created-alice.json"))
        .await;
    assert_eq!((id, status.as_str()), (1, "applied"));
    let customer = app.customer("cus_alice_01").await;
    assert_eq!(customer["revision"], 1);
    let app = app.restart().await;
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Rejected bodies
// ---------------------------------------------------------------------------------------------

/// Delivers a rejected body, checks the problem and the stored rejection; returns the problem.
async fn deliver_rejected(app: &TestApp, body: Vec<u8>, status: u16) -> Value {
    let problem = expect_problem(app.deliver(body.clone()).await, status).await;
    let event_id = problem["eventId"]
        .as_i64()
        .unwrap_or_else(|| panic!("the problem should carry eventId: {problem}"));
    let (rejected, _) = events(app, "?status=rejected&limit=1000").await;
    let record = rejected
        .iter()
        .find(|e| e["id"] == event_id)
        .unwrap_or_else(|| panic!("event {event_id} should be listed as rejected: {rejected:?}"));
    assert_eq!(record["status"], "rejected");
    let error = record["error"].as_str().unwrap_or("");
    assert!(!error.is_empty(), "a rejection keeps its reason: {record}");
    let detail: Value = app
        .api_get(&format!("/events/{event_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["body"].as_str().unwrap().as_bytes(),
        body.as_slice(),
        "the raw body is kept"
    );
    problem
}

backends! {
#[tokio::test]
async fn malformed_json_is_a_bad_request_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let problem = deliver_rejected(&app, fixture("rejected/truncated.json"), 400).await;
    assert_eq!(problem["eventId"], 1);
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, 1);
    assert_eq!(app.api_get("/customers/cus_jack_07").await.status(), 404);
}
}

backends! {
#[tokio::test]
async fn a_json_array_is_a_bad_request_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let problem = deliver_rejected(&app, fixture("rejected/array-body.json"), 400).await;
    assert!(problem["eventId"].is_i64());
    for scalar in [&b"\"just a string\""[..], b"42", b"null"] {
        deliver_rejected(&app, scalar.to_vec(), 400).await;
    }
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, 4);
    assert_eq!(app.api_get("/customers/cus_erin_05").await.status(), 404);
}
}

backends! {
#[tokio::test]
async fn every_unusable_known_event_is_422_naming_its_field_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let cases = [
        ("created-missing-customer-id.json", "customerId"),
        ("created-invalid-customer-id.json", "customerId"),
        ("created-customer-id-too-long.json", "customerId"),
        (
            "updated-revision-not-integer.json",
            "_embedded.customer.revision",
        ),
        ("merged-missing-duplicated.json", "duplicatedCustomer"),
        ("experian-bad-outcome.json", "outcome"),
        ("missing-event-type.json", "eventType"),
    ];
    let mut ids = HashSet::new();
    for (file, field) in cases {
        let problem = deliver_rejected(&app, fixture(&format!("rejected/{file}")), 422).await;
        assert_eq!(problem["field"], field, "{file}: {problem}");
        assert!(ids.insert(problem["eventId"].as_i64().unwrap()));
    }
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, cases.len() as u64);
    // None of them touched the projection.
    let customers = app.api_get("/customers").await;
    assert_eq!(customers.headers()["pagination-total"], "0");
    assert_eq!(customers.json::<Value>().await.unwrap(), json!([]));
}
}

backends! {
#[tokio::test]
async fn a_customer_update_whose_embedded_id_differs_is_422() {
    let app = common::spawn_app().await;
    let mut body: Value =
        serde_json::from_slice(&customer_event("customer-updated", "cus_one", 2, json!({})))
            .unwrap();
    body["_embedded"]["customer"]["id"] = json!("cus_two");
    let problem = deliver_rejected(&app, serde_json::to_vec(&body).unwrap(), 422).await;
    let field = problem["field"].as_str().unwrap_or("");
    assert!(
        field == "_embedded.customer.id" || field == "customerId",
        "the problem should name the id field: {problem}"
    );
    assert_eq!(app.api_get("/customers/cus_one").await.status(), 404);
    assert_eq!(app.api_get("/customers/cus_two").await.status(), 404);
}
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Ignored types and duplicates
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn an_unsupported_event_type_is_ignored_and_its_redelivery_is_a_duplicate() {
    let app = common::spawn_app().await;
    let invoice = fixture("deliveries/10-invoice-paid.json");
    let (first, status) = app.deliver_ok(invoice.clone()).await;
    assert_eq!(status, "ignored");
    let (second, status) = app.deliver_ok(invoice).await;
    assert_eq!(status, "duplicate");
    assert_ne!(first, second);

    let renewal = serde_json::to_vec(&json!({
        "eventType": "subscription-renewed",
        "subscriptionId": "sub_01",
        "customerId": "cus_alice_01",
        "_embedded": {"subscription": {"id": "sub_01", "status": "active"}}
    }))
    .unwrap();
    let (third, status) = app.deliver_ok(renewal.clone()).await;
    assert_eq!(status, "ignored");
    let (fourth, status) = app.deliver_ok(renewal).await;
    assert_eq!(status, "duplicate");

    let (ignored, total) = events(&app, "?status=ignored").await;
    assert_eq!(total, 2);
    let types: Vec<&str> = ignored
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["subscription-renewed", "invoice-paid"]);
    assert_eq!(ignored[0]["id"], third);
    let (_, duplicates) = events(&app, "?status=duplicate").await;
    assert_eq!(duplicates, 2);
    assert!(fourth > third);
    // An ignored event creates no customer.
    assert_eq!(app.api_get("/customers/cus_alice_01").await.status(), 404);
}
}

backends! {
#[tokio::test]
async fn an_event_type_that_is_no_rebilly_event_type_is_422_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let too_long = format!("invoice-{}", "x".repeat(100));
    for event_type in ["", "Invoice-Paid", "invoice paid", too_long.as_str()] {
        let body = serde_json::to_vec(&json!({"eventType": event_type, "invoiceId": "in_1"}));
        let problem = deliver_rejected(&app, body.unwrap(), 422).await;
        assert_eq!(problem["field"], "eventType", "{event_type:?}: {problem}");
    }
    // Digits and underscores are allowed.
    let body = serde_json::to_vec(&json!({"eventType": "order_v2-created"})).unwrap();
    assert_eq!(app.deliver_ok(body).await.1, "ignored");
}
}

backends! {
#[tokio::test]
async fn a_merge_whose_customers_lack_ids_is_422_naming_the_exact_field() {
    let app = common::spawn_app().await;
    let no_duplicated_id = json!({
        "eventType": "customer-merged",
        "targetCustomerId": "cus_target",
        "duplicatedCustomer": {"revision": 3, "email": "dup@example.com"},
    });
    let no_target_id = json!({
        "eventType": "customer-merged",
        "duplicatedCustomer": {"id": "cus_dup", "revision": 3},
        "_embedded": {"targetCustomer": {"revision": 4}},
    });
    for (body, field) in [
        (no_duplicated_id, "duplicatedCustomer.id"),
        (no_target_id, "_embedded.targetCustomer.id"),
    ] {
        let problem = deliver_rejected(&app, serde_json::to_vec(&body).unwrap(), 422).await;
        assert_eq!(problem["field"], field, "{problem}");
    }
}
}

backends! {
#[tokio::test]
async fn a_different_body_for_the_same_type_customer_and_revision_is_a_duplicate() {
    let app = common::spawn_app().await;
    let original = fixture("deliveries/01-customer-created-alice.json");
    let (_, status) = app.deliver_ok(original.clone()).await;
    assert_eq!(status, "applied");
    let before = app.customer("cus_alice_01").await;

    // Same JSON, other bytes: compact instead of pretty-printed.
    let value: Value = serde_json::from_slice(&original).unwrap();
    let compact = serde_json::to_vec(&value).unwrap();
    assert_ne!(compact, original);
    let (_, status) = app.deliver_ok(compact).await;
    assert_eq!(status, "duplicate");

    // Keys in another order.
    let object = value.as_object().unwrap();
    let mut reversed = serde_json::Map::new();
    for (key, item) in object.iter().rev() {
        reversed.insert(key.clone(), item.clone());
    }
    let (_, status) = app
        .deliver_ok(serde_json::to_vec(&Value::Object(reversed)).unwrap())
        .await;
    assert_eq!(status, "duplicate");

    // An extra field, in the body and in the customer.
    let mut extended = value.clone();
    extended["webhookVersion"] = json!("9");
    extended["_embedded"]["customer"]["extraField"] = json!("must not appear");
    let (_, status) = app.deliver_ok(serde_json::to_vec(&extended).unwrap()).await;
    assert_eq!(status, "duplicate");

    let after = app.customer("cus_alice_01").await;
    assert_eq!(after, before);
    assert!(after.get("extraField").is_none());
    let (_, duplicates) = events(&app, "?status=duplicate").await;
    assert_eq!(duplicates, 3);

    // Another type for the same customer and revision is no duplicate: it is stale.
    let created = fixture("deliveries/01-customer-created-alice.json");
    let updated = String::from_utf8(created)
        .unwrap()
        .replace("customer-created", "customer-updated");
    assert_eq!(status_of(&app, updated).await, "stale");
}
}

backends! {
#[tokio::test]
async fn two_experian_checks_embedding_the_same_revision_are_both_applied() {
    let app = common::spawn_app().await;
    let (_, status) = app
        .deliver_ok(fixture("deliveries/02-customer-created-bob.json"))
        .await;
    assert_eq!(status, "applied");
    let (first, status) = app
        .deliver_ok(fixture("deliveries/06-experian-check-bob-match.json"))
        .await;
    assert_eq!(status, "applied");
    let (second, status) = app
        .deliver_ok(fixture("deliveries/07-experian-check-bob-mismatch.json"))
        .await;
    assert_eq!(status, "applied");
    assert_ne!(first, second);

    let bob = app.customer("cus_bob_02").await;
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["experianCheck"]["outcome"], -1);
    assert_eq!(bob["experianCheck"]["errorCode"], "003");
    assert_eq!(bob["experianCheck"]["reason"], "Date of birth mismatch");

    let (checks, total) = events(
        &app,
        "?customerId=cus_bob_02&eventType=experian-check-performed",
    )
    .await;
    assert_eq!(total, 2);
    assert!(
        checks.iter().all(|e| e["status"] == "applied"),
        "{checks:?}"
    );

    // The same check delivered again, byte for byte, is a duplicate all the same.
    let (_, status) = app
        .deliver_ok(fixture("deliveries/07-experian-check-bob-mismatch.json"))
        .await;
    assert_eq!(status, "duplicate");
}
}

// ---------------------------------------------------------------------------------------------
// 7. Durability across a restart
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn acknowledged_concurrent_deliveries_survive_a_restart() {
    let app = common::spawn_app().await;
    let url = app.url("/webhooks/rebilly");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let client = app.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let id = format!("cus_restart_{n:02}");
            let body = customer_event("customer-created", &id, 1 + n % 3, json!({}));
            let (event_id, status) = accepted(post_basic(&client, &url, body).await).await;
            (id, event_id, status)
        });
    }
    let mut acknowledged = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        let (customer, event_id, status) = result.unwrap();
        assert_eq!(status, "applied", "{customer}");
        assert!(acknowledged.insert(event_id, customer).is_none());
    }
    assert_eq!(acknowledged.len(), 50);

    let app = app.restart().await;
    let (list, total) = events(&app, "?limit=1000").await;
    assert_eq!(total, 50);
    let stored: HashMap<i64, String> = list
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["customerId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (event_id, customer) in &acknowledged {
        assert_eq!(
            stored.get(event_id),
            Some(customer),
            "event {event_id} after the restart"
        );
        let served = app.customer(customer).await;
        assert_eq!(&served["id"], customer.as_str());
    }
}
}

// ---------------------------------------------------------------------------------------------
// 8. Group commit
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Expect {
    Ok(&'static str),
    Problem(u16),
}

backends! {
#[tokio::test]
async fn concurrent_mixed_deliveries_each_get_their_own_answer() {
    let app = common::spawn_app().await;
    let seed = customer_event("customer-created", "cus_seed", 1, json!({}));
    let (seed_id, status) = app.deliver_ok(seed.clone()).await;
    assert_eq!(status, "applied");

    let mut requests: Vec<(Vec<u8>, Expect, Option<String>)> = Vec::new();
    for n in 0..30 {
        let id = format!("cus_batch_{n:02}");
        requests.push((
            customer_event("customer-created", &id, 1, json!({})),
            Expect::Ok("applied"),
            Some(id),
        ));
    }
    for n in 0..8 {
        // 422: an id breaking the pattern, distinct bodies.
        requests.push((
            customer_event("customer-created", &format!("bad id {n}"), 1, json!({})),
            Expect::Problem(422),
            None,
        ));
    }
    for n in 0..6 {
        // 400: cut-off JSON and non-objects.
        let body = if n % 2 == 0 {
            format!("{{\"eventType\": \"customer-created\", \"customerId\": \"cus_{n}").into_bytes()
        } else {
            format!("[{n}]").into_bytes()
        };
        requests.push((body, Expect::Problem(400), None));
    }
    for _ in 0..8 {
        requests.push((seed.clone(), Expect::Ok("duplicate"), None));
    }
    for n in 0..8 {
        let body = serde_json::to_vec(&json!({
            "eventType": "invoice-paid",
            "invoiceId": format!("in_batch_{n}"),
            "customerId": "cus_seed",
        }))
        .unwrap();
        requests.push((body, Expect::Ok("ignored"), None));
    }
    // Interleave the kinds so that batches mix them.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|i| (i * 37) % requests.len());

    let url = app.url("/webhooks/rebilly");
    let mut tasks = tokio::task::JoinSet::new();
    for index in order {
        let (body, expect, _) = requests[index].clone();
        let client = app.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let response = post_basic(&client, &url, body).await;
            let code = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            (index, expect, code, json)
        });
    }
    let mut answered: HashMap<i64, (usize, String)> = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        let (index, expect, code, json) = result.unwrap();
        let event_id = json["eventId"]
            .as_i64()
            .unwrap_or_else(|| panic!("request {index} answered without eventId: {json}"));
        let stored_status = match expect {
            Expect::Ok(status) => {
                assert_eq!(code, 200, "request {index}: {json}");
                assert_eq!(json["status"], status, "request {index}: {json}");
                status.to_owned()
            }
            Expect::Problem(status) => {
                assert_eq!(code, status, "request {index}: {json}");
                assert_eq!(json["status"], status, "request {index}: {json}");
                "rejected".to_owned()
            }
        };
        assert_ne!(event_id, seed_id);
        assert!(
            answered.insert(event_id, (index, stored_status)).is_none(),
            "event id {event_id} was given twice"
        );
    }
    assert_eq!(answered.len(), requests.len());

    let (list, total) = events(&app, "?limit=1000").await;
    assert_eq!(total as usize, requests.len() + 1);
    for record in &list {
        let id = record["id"].as_i64().unwrap();
        if id == seed_id {
            continue;
        }
        let (index, status) = &answered[&id];
        assert_eq!(
            record["status"],
            status.as_str(),
            "event {id} (request {index})"
        );
    }
    for (_, _, customer) in &requests {
        if let Some(customer) = customer {
            assert_eq!(app.customer(customer).await["revision"], 1);
        }
    }
    let customers = app.api_get("/customers?limit=1000").await;
    assert_eq!(customers.headers()["pagination-total"], "31");
}
}

// ---------------------------------------------------------------------------------------------
// Rule 1: duplicates
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn a_byte_identical_redelivery_is_a_duplicate_and_changes_nothing() {
    let app = spawn_app().await;
    let first = customer_event(
        "customer-created",
        "cus_dup",
        1,
        json!({"firstName": "One"}),
    );
    let (first_id, status) = app.deliver_ok(first.clone()).await;
    assert_eq!(status, "applied");
    let updated = customer_event(
        "customer-updated",
        "cus_dup",
        2,
        json!({"firstName": "Two"}),
    );
    assert_eq!(status_of(&app, updated).await, "applied");
    let before = app.customer("cus_dup").await;

    let (again_id, status) = app.deliver_ok(first).await;
    assert_eq!(status, "duplicate");
    assert_ne!(
        again_id, first_id,
        "the redelivery is recorded as its own event"
    );
    let after = app.customer("cus_dup").await;
    assert_eq!(after, before);
    assert_eq!(after["revision"], 2);
    assert_eq!(after["firstName"], "Two");

    let logged = events_of(&app, "?customerId=cus_dup&status=duplicate").await;
    assert_eq!(ids_of_events(&logged), vec![again_id]);
    let (all, total) = events(&app, "?customerId=cus_dup").await;
    assert_eq!(
        total, 3,
        "the redelivery is logged beside the two originals"
    );
    assert_eq!(all[0]["status"], "duplicate");
    assert_eq!(all[0]["revision"], 1);
}
}

backends! {
#[tokio::test]
async fn a_redelivered_experian_check_is_a_duplicate() {
    let app = spawn_app().await;
    let check = experian_event("cus_exp_dup", 1, 1, "Record matched", "000", "");
    assert_eq!(status_of(&app, check.clone()).await, "applied");
    assert_eq!(status_of(&app, check).await, "duplicate");
    let checks = events_of(
        &app,
        "?customerId=cus_exp_dup&eventType=experian-check-performed&status=applied",
    )
    .await;
    assert_eq!(checks.len(), 1);
}
}
