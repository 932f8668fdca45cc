//! The customer projection and the query API, over real HTTP against a server on port 0.
mod common;

use common::{TestApp, customer_event, fixture, spawn_app};
use serde_json::{Value, json};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The Customer resource `customer_event` would embed.
fn resource(id: &str, revision: i64, extra: Value) -> Value {
    let body: Value =
        serde_json::from_slice(&customer_event("customer-updated", id, revision, extra)).unwrap();
    body["_embedded"]["customer"].clone()
}

/// A customer event whose embedded customer has no `revision` field at all; `updated` sets
/// `updatedTime` (or removes it when `None`).
fn unrevisioned_event(event_type: &str, id: &str, updated: Option<&str>, extra: Value) -> Vec<u8> {
    let mut body: Value =
        serde_json::from_slice(&customer_event(event_type, id, 0, extra)).unwrap();
    let customer = body["_embedded"]["customer"].as_object_mut().unwrap();
    customer.remove("revision");
    match updated {
        Some(time) => {
            customer.insert("updatedTime".into(), json!(time));
        }
        None => {
            customer.remove("updatedTime");
        }
    }
    serde_json::to_vec(&body).unwrap()
}

/// A `customer-merged` body: `duplicated` merged into `target`, with the target's snapshot when
/// `target_revision` is given.
fn merge_event(
    target: &str,
    target_revision: Option<i64>,
    duplicated: &str,
    duplicated_revision: i64,
) -> Vec<u8> {
    let mut body = json!({
        "eventType": "customer-merged",
        "targetCustomerId": target,
        "duplicatedCustomer": resource(duplicated, duplicated_revision, json!({"lastName": "Merged away"})),
        "_links": [{"rel": "customer", "href": format!("https://api.rebilly.com/customers/{target}")}]
    });
    if let Some(revision) = target_revision {
        body["_embedded"] = json!({
            "targetCustomer": resource(target, revision, json!({"lastName": "Merge target"}))
        });
    }
    serde_json::to_vec(&body).unwrap()
}

/// An `experian-check-performed` body embedding the customer at `revision`.
fn experian_event(
    id: &str,
    revision: i64,
    outcome: i64,
    reason: &str,
    error_code: &str,
    error_message: &str,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "experian-check-performed",
        "customerId": id,
        "outcome": outcome,
        "reason": reason,
        "errorCode": error_code,
        "errorMessage": error_message,
        "_embedded": {"customer": resource(id, revision, json!({}))},
        "_links": []
    }))
    .unwrap()
}

async fn status_of(app: &TestApp, body: impl Into<reqwest::Body>) -> String {
    app.deliver_ok(body).await.1
}

/// GET a list endpoint: `(status, headers, body)`.
async fn get_json(app: &TestApp, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app.api_get(path).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {text}"));
    (status, headers, body)
}

async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let (status, _, body) = get_json(app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("{path}: not an array: {body}"))
        .clone()
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a 400 problem document whose body names `name`.
async fn assert_bad_query(app: &TestApp, path: &str, name: &str) {
    let response = app.api_get(path).await;
    assert_eq!(response.status(), 400, "{path} should be refused");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{path}: content-type {content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 400, "{path}: {body}");
    assert!(
        body.to_string().contains(name),
        "{path}: the problem should name `{name}`: {body}"
    );
}

async fn events_of(app: &TestApp, query: &str) -> Vec<Value> {
    list(app, &format!("/events{query}")).await
}

// ---------------------------------------------------------------------------------------------
// Rule 1: duplicates
// ---------------------------------------------------------------------------------------------

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
}

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

#[tokio::test]
async fn same_type_customer_and_revision_with_different_bytes_is_a_duplicate() {
    let app = spawn_app().await;
    let original = customer_event(
        "customer-updated",
        "cus_same",
        2,
        json!({"firstName": "Original"}),
    );
    assert_eq!(status_of(&app, original).await, "applied");
    let different = customer_event(
        "customer-updated",
        "cus_same",
        2,
        json!({"firstName": "Different", "note": "other bytes"}),
    );
    assert_eq!(status_of(&app, different).await, "duplicate");
    let customer = app.customer("cus_same").await;
    assert_eq!(customer["firstName"], "Original");
    assert!(customer.get("note").is_none());

    // A different type for the same customer and revision is not a duplicate (it is stale).
    let created = customer_event("customer-created", "cus_same", 2, json!({}));
    assert_eq!(status_of(&app, created).await, "stale");
}

fn ids_of_events(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

// ---------------------------------------------------------------------------------------------
// Rule 2: revisions, then updatedTime, then arrival
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_lower_revision_never_overwrites_a_higher_one() {
    let app = spawn_app().await;
    let three = customer_event("customer-updated", "cus_rev", 3, json!({"city": "Three"}));
    let two = customer_event("customer-updated", "cus_rev", 2, json!({"city": "Two"}));
    assert_eq!(status_of(&app, three).await, "applied");
    assert_eq!(status_of(&app, two).await, "stale");
    let customer = app.customer("cus_rev").await;
    assert_eq!(customer["revision"], 3);
    assert_eq!(customer["city"], "Three");
    let stale = events_of(&app, "?customerId=cus_rev&status=stale").await;
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["revision"], 2);
    assert!(
        stale[0]["error"].is_string(),
        "a stale event records why: {}",
        stale[0]
    );
}

#[tokio::test]
async fn a_created_event_arriving_after_a_higher_update_is_stale() {
    let app = spawn_app().await;
    let updated = customer_event(
        "customer-updated",
        "cus_late",
        2,
        json!({"lastName": "New"}),
    );
    let created = customer_event(
        "customer-created",
        "cus_late",
        1,
        json!({"lastName": "Old"}),
    );
    assert_eq!(status_of(&app, updated).await, "applied");
    assert_eq!(status_of(&app, created).await, "stale");
    let customer = app.customer("cus_late").await;
    assert_eq!(customer["revision"], 2);
    assert_eq!(customer["lastName"], "New");
}

#[tokio::test]
async fn any_arrival_order_of_revisions_ends_at_the_highest() {
    let orders: [[i64; 5]; 5] = [
        [1, 2, 3, 4, 5],
        [5, 4, 3, 2, 1],
        [3, 1, 5, 2, 4],
        [2, 5, 1, 4, 3],
        [4, 3, 5, 1, 2],
    ];
    let app = spawn_app().await;
    for (n, order) in orders.iter().enumerate() {
        let id = format!("cus_order_{n}");
        let mut highest = 0;
        for &revision in order {
            let event_type = if revision == 1 {
                "customer-created"
            } else {
                "customer-updated"
            };
            let body = customer_event(
                event_type,
                &id,
                revision,
                json!({"firstName": format!("rev{revision}")}),
            );
            let status = status_of(&app, body).await;
            let expected = if revision > highest {
                "applied"
            } else {
                "stale"
            };
            assert_eq!(status, expected, "order {order:?}, revision {revision}");
            highest = highest.max(revision);
        }
        let customer = app.customer(&id).await;
        assert_eq!(customer["revision"], 5, "order {order:?}");
        assert_eq!(customer["firstName"], "rev5", "order {order:?}");
        assert_eq!(customer["lastName"], "Customer 5", "order {order:?}");
        assert_eq!(customer["invoiceCount"], 5, "order {order:?}");
    }
}

#[tokio::test]
async fn without_revisions_an_older_updated_time_arriving_later_is_stale() {
    let app = spawn_app().await;
    let newer = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T08:00:00+00:00"),
        json!({"lastName": "Newer"}),
    );
    let older = unrevisioned_event(
        "customer-created",
        "cus_norev",
        Some("2026-03-01T08:00:00+00:00"),
        json!({"lastName": "Older"}),
    );
    assert_eq!(status_of(&app, newer).await, "applied");
    assert_eq!(status_of(&app, older).await, "stale");
    let customer = app.customer("cus_norev").await;
    assert_eq!(customer["lastName"], "Newer");
    assert!(customer.get("revision").is_none());

    // A later updatedTime in another offset is still compared as an instant.
    let later = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T10:00:00+01:00"),
        json!({"lastName": "Latest"}),
    );
    assert_eq!(status_of(&app, later).await, "applied");
    let earlier_in_other_offset = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T09:30:00+02:00"),
        json!({"lastName": "Earlier"}),
    );
    assert_eq!(status_of(&app, earlier_in_other_offset).await, "stale");
    assert_eq!(app.customer("cus_norev").await["lastName"], "Latest");
}

#[tokio::test]
async fn without_revisions_or_distinct_times_the_later_arrival_wins() {
    let app = spawn_app().await;
    let same = "2026-03-05T12:00:00+00:00";
    for name in ["First", "Second", "Third"] {
        let body = unrevisioned_event(
            "customer-updated",
            "cus_sametime",
            Some(same),
            json!({"lastName": name}),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{name}");
        assert_eq!(app.customer("cus_sametime").await["lastName"], name);
    }
    for name in ["Undated one", "Undated two"] {
        let body = unrevisioned_event(
            "customer-updated",
            "cus_undated",
            None,
            json!({"lastName": name}),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{name}");
        assert_eq!(app.customer("cus_undated").await["lastName"], name);
    }
}

#[tokio::test]
async fn unknown_customer_fields_are_served_back() {
    let app = spawn_app().await;
    let body = customer_event(
        "customer-created",
        "cus_unknown_fields",
        1,
        json!({
            "loyaltyPoints": 1200,
            "futureFeature": {"nested": {"deeper": [1, "two", {"three": true}]}, "flag": null},
            "primaryAddress": {"country": "FR", "city": "Lyon", "planet": "Earth",
                "emails": [{"label": "main", "value": "x@example.com", "primary": true, "verifiedBy": "sms"}]}
        }),
    );
    // An unknown top-level body field is tolerated too.
    let mut value: Value = serde_json::from_slice(&body).unwrap();
    value["webhookVersion"] = json!("2");
    assert_eq!(
        status_of(&app, serde_json::to_vec(&value).unwrap()).await,
        "applied"
    );
    let customer = app.customer("cus_unknown_fields").await;
    assert_eq!(customer["loyaltyPoints"], 1200);
    assert_eq!(
        customer["futureFeature"],
        json!({"nested": {"deeper": [1, "two", {"three": true}]}, "flag": null})
    );
    assert_eq!(customer["primaryAddress"]["planet"], "Earth");
    assert_eq!(customer["primaryAddress"]["emails"][0]["verifiedBy"], "sms");
    // The served customer is the embedded resource plus the two projection fields.
    let mut expected = value["_embedded"]["customer"].clone();
    expected["mergedInto"] = Value::Null;
    expected["experianCheck"] = Value::Null;
    assert_eq!(customer, expected);
}

// ---------------------------------------------------------------------------------------------
// Rule 3: merges
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_merged_away_customer_stays_merged_and_leaves_the_list() {
    let app = spawn_app().await;
    for id in ["cus_target", "cus_dupe"] {
        let body = customer_event("customer-created", id, 1, json!({}));
        assert_eq!(status_of(&app, body).await, "applied");
    }
    assert_eq!(
        ids(&list(&app, "/customers").await),
        vec!["cus_dupe", "cus_target"]
    );

    let merge = merge_event("cus_target", Some(3), "cus_dupe", 2);
    assert_eq!(status_of(&app, merge).await, "applied");
    let dupe = app.customer("cus_dupe").await;
    assert_eq!(dupe["mergedInto"], "cus_target");
    assert_eq!(dupe["revision"], 2);
    let target = app.customer("cus_target").await;
    assert_eq!(target["revision"], 3);
    assert_eq!(target["lastName"], "Merge target");
    assert_eq!(target["mergedInto"], Value::Null);
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
    let (_, headers, _) = get_json(&app, "/customers").await;
    assert_eq!(header(&headers, "pagination-total"), "1");

    // Later events (a higher revision) and late ones (a lower revision) are recorded only.
    let later = customer_event(
        "customer-updated",
        "cus_dupe",
        9,
        json!({"lastName": "Back"}),
    );
    let late = customer_event(
        "customer-updated",
        "cus_dupe",
        1,
        json!({"lastName": "Early"}),
    );
    let (later_id, later_status) = app.deliver_ok(later).await;
    let (late_id, late_status) = app.deliver_ok(late).await;
    assert_eq!(later_status, "stale");
    assert_eq!(late_status, "stale");
    let logged = events_of(&app, "?customerId=cus_dupe").await;
    let logged_ids = ids_of_events(&logged);
    assert!(logged_ids.contains(&later_id) && logged_ids.contains(&late_id));
    assert_eq!(logged[0]["id"], late_id, "newest first");
    assert_eq!(logged[0]["status"], "stale");

    let after = app.customer("cus_dupe").await;
    assert_eq!(after, dupe, "the merged-away customer never changes again");
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
    assert!(list(&app, "/customers?q=back").await.is_empty());
    assert!(list(&app, "/customers?filter=id:cus_dupe").await.is_empty());

    // Not even after a restart.
    let app = app.restart().await;
    assert_eq!(app.customer("cus_dupe").await, dupe);
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
}

#[tokio::test]
async fn a_merge_updates_the_target_only_with_a_higher_revision() {
    let app = spawn_app().await;
    let target = customer_event(
        "customer-updated",
        "cus_tgt_hi",
        5,
        json!({"lastName": "Five"}),
    );
    assert_eq!(status_of(&app, target).await, "applied");
    let dupe = customer_event("customer-created", "cus_dup_lo", 1, json!({}));
    assert_eq!(status_of(&app, dupe).await, "applied");

    let merge = merge_event("cus_tgt_hi", Some(4), "cus_dup_lo", 2);
    assert_eq!(
        status_of(&app, merge).await,
        "applied",
        "the merge itself is news"
    );
    let target = app.customer("cus_tgt_hi").await;
    assert_eq!(target["revision"], 5);
    assert_eq!(target["lastName"], "Five");
    assert_eq!(app.customer("cus_dup_lo").await["mergedInto"], "cus_tgt_hi");

    // And with a higher revision it is updated.
    let app2 = spawn_app().await;
    let target = customer_event(
        "customer-updated",
        "cus_tgt",
        3,
        json!({"lastName": "Three"}),
    );
    assert_eq!(status_of(&app2, target).await, "applied");
    assert_eq!(
        status_of(&app2, merge_event("cus_tgt", Some(4), "cus_dup", 1)).await,
        "applied"
    );
    let target = app2.customer("cus_tgt").await;
    assert_eq!(target["revision"], 4);
    assert_eq!(target["lastName"], "Merge target");
}

#[tokio::test]
async fn a_merge_arriving_before_any_event_of_either_customer_still_holds() {
    let app = spawn_app().await;
    let merge = merge_event("cus_first_tgt", Some(4), "cus_first_dup", 2);
    assert_eq!(status_of(&app, merge).await, "applied");
    assert_eq!(
        app.customer("cus_first_dup").await["mergedInto"],
        "cus_first_tgt"
    );
    assert_eq!(app.customer("cus_first_tgt").await["revision"], 4);

    for (id, revision, expected) in [
        ("cus_first_dup", 1, "stale"),
        ("cus_first_tgt", 1, "stale"),
        ("cus_first_dup", 3, "stale"),
        ("cus_first_tgt", 3, "stale"),
    ] {
        let event_type = if revision == 1 {
            "customer-created"
        } else {
            "customer-updated"
        };
        let body = customer_event(event_type, id, revision, json!({"lastName": "Late"}));
        assert_eq!(status_of(&app, body).await, expected, "{id} rev {revision}");
    }
    let dupe = app.customer("cus_first_dup").await;
    assert_eq!(dupe["mergedInto"], "cus_first_tgt");
    assert_eq!(dupe["revision"], 2);
    let target = app.customer("cus_first_tgt").await;
    assert_eq!(target["revision"], 4);
    assert_eq!(target["lastName"], "Merge target");
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_first_tgt"]);

    // A higher revision of the target still applies afterwards.
    let newer = customer_event("customer-updated", "cus_first_tgt", 5, json!({}));
    assert_eq!(status_of(&app, newer).await, "applied");
    assert_eq!(app.customer("cus_first_tgt").await["revision"], 5);
}

#[tokio::test]
async fn the_merge_is_the_last_word_on_the_merged_away_customer_whatever_arrived_before() {
    // Two databases, the same three events, two arrival orders: the merged-away customer ends
    // as the merge described it, even when a higher revision of it arrived before the merge.
    let updated = customer_event(
        "customer-updated",
        "cus_gone",
        3,
        json!({"lastName": "Three"}),
    );
    let merge = merge_event("cus_stays", Some(2), "cus_gone", 2);
    let created = customer_event("customer-created", "cus_gone", 1, json!({}));
    let mut results = Vec::new();
    for order in [
        [updated.clone(), merge.clone(), created.clone()],
        [created.clone(), merge.clone(), updated.clone()],
    ] {
        let app = spawn_app().await;
        for body in order {
            app.deliver_ok(body).await;
        }
        let gone = app.customer("cus_gone").await;
        assert_eq!(gone["mergedInto"], "cus_stays");
        assert_eq!(gone["revision"], 2, "{gone}");
        assert_eq!(gone["lastName"], "Merged away");
        assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_stays"]);
        results.push(gone);
    }
    assert_eq!(results[0], results[1]);
}

#[tokio::test]
async fn a_merge_without_a_target_snapshot_still_marks_the_duplicate() {
    let app = spawn_app().await;
    let target = customer_event("customer-created", "cus_bare_tgt", 1, json!({}));
    assert_eq!(status_of(&app, target).await, "applied");
    let merge = merge_event("cus_bare_tgt", None, "cus_bare_dup", 1);
    assert_eq!(status_of(&app, merge).await, "applied");
    assert_eq!(
        app.customer("cus_bare_dup").await["mergedInto"],
        "cus_bare_tgt"
    );
    assert_eq!(app.customer("cus_bare_tgt").await["revision"], 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 4: Experian checks
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_experian_check_is_kept_and_the_latest_one_is_shown() {
    let app = spawn_app().await;
    let created = customer_event("customer-created", "cus_exp", 1, json!({}));
    assert_eq!(status_of(&app, created).await, "applied");
    let fresh = app.customer("cus_exp").await;
    assert_eq!(fresh["experianCheck"], Value::Null);
    assert_eq!(fresh["mergedInto"], Value::Null);

    let checks = [
        (1, "Record matched", "000", ""),
        (
            -1,
            "Date of birth mismatch",
            "003",
            "DOB does not match bureau record",
        ),
        (0, "No match found", "002", "No record"),
    ];
    let mut event_ids = Vec::new();
    for (outcome, reason, code, message) in checks {
        // Every check embeds the same customer revision: never a duplicate for that.
        let body = experian_event("cus_exp", 2, outcome, reason, code, message);
        let (id, status) = app.deliver_ok(body).await;
        assert_eq!(status, "applied", "{reason}");
        event_ids.push(id);
        let customer = app.customer("cus_exp").await;
        assert_eq!(
            customer["experianCheck"],
            json!({"outcome": outcome, "reason": reason, "errorCode": code, "errorMessage": message})
        );
        assert_eq!(customer["revision"], 2);
    }
    let listed = events_of(
        &app,
        "?eventType=experian-check-performed&customerId=cus_exp",
    )
    .await;
    let mut listed_ids = ids_of_events(&listed);
    listed_ids.reverse();
    assert_eq!(listed_ids, event_ids);
    assert!(listed.iter().all(|e| e["status"] == "applied"));
}

#[tokio::test]
async fn an_experian_check_with_an_older_embedded_customer_still_shows_and_keeps_the_snapshot() {
    let app = spawn_app().await;
    let updated = customer_event(
        "customer-updated",
        "cus_exp_old",
        4,
        json!({"lastName": "Four"}),
    );
    assert_eq!(status_of(&app, updated).await, "applied");
    let check = experian_event("cus_exp_old", 2, -1, "Mismatch", "003", "bad");
    assert_eq!(status_of(&app, check).await, "applied");
    let customer = app.customer("cus_exp_old").await;
    assert_eq!(customer["revision"], 4);
    assert_eq!(customer["lastName"], "Four");
    assert_eq!(customer["experianCheck"]["outcome"], -1);
    assert_eq!(customer["experianCheck"]["errorCode"], "003");
}

#[tokio::test]
async fn the_fixture_experian_checks_are_both_recorded() {
    let app = spawn_app().await;
    for name in [
        "02-customer-created-bob.json",
        "06-experian-check-bob-match.json",
        "07-experian-check-bob-mismatch.json",
    ] {
        assert_eq!(
            status_of(&app, fixture(&format!("deliveries/{name}"))).await,
            "applied",
            "{name}"
        );
    }
    let bob = app.customer("cus_bob_02").await;
    assert_eq!(
        bob["experianCheck"],
        json!({"outcome": -1, "reason": "Date of birth mismatch", "errorCode": "003",
               "errorMessage": "DOB does not match bureau record"})
    );
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["primaryAddress"]["dob"], "1979-11-23");
    let checks = events_of(
        &app,
        "?eventType=experian-check-performed&customerId=cus_bob_02",
    )
    .await;
    assert_eq!(checks.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Single customer and authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_customer_is_a_404_problem() {
    let app = spawn_app().await;
    let response = app.api_get("/customers/cus_nobody").await;
    assert_eq!(response.status(), 404);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert!(body["detail"].as_str().unwrap().contains("cus_nobody"));
}

#[tokio::test]
async fn the_query_api_requires_the_bearer_token() {
    let app = spawn_app().await;
    let created = customer_event("customer-created", "cus_secret", 1, json!({}));
    assert_eq!(status_of(&app, created).await, "applied");
    for path in ["/customers", "/customers/cus_secret", "/events"] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path} without a token");
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let body = wrong.text().await.unwrap();
        assert!(!body.contains("cus_secret"), "{path} leaked data: {body}");
        let basic = app
            .client
            .get(app.url(path))
            .basic_auth(common::USER, Some(common::PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{path} with webhook credentials");
        let right = app.api_get(path).await;
        assert_eq!(right.status(), 200, "{path} with the token");
    }
}

// ---------------------------------------------------------------------------------------------
// List conventions
// ---------------------------------------------------------------------------------------------

struct Person {
    id: String,
    first: &'static str,
    last: &'static str,
    country: &'static str,
    email: String,
    created: String,
}

fn people() -> Vec<Person> {
    let names = [
        ("Ada", "Lovelace", "GB"),
        ("Alan", "Turing", "GB"),
        ("Grace", "Hopper", "US"),
        ("Marie", "Curie", "FR"),
        ("Pierre", "Curie", "FR"),
        ("Emmy", "Noether", "DE"),
        ("Carl", "Gauss", "DE"),
        ("Sophie", "Germain", "FR"),
        ("Evariste", "Galois", "FR"),
        ("Leonhard", "Euler", "CH"),
        ("Bernhard", "Riemann", "DE"),
        ("Henri", "Poincare", "FR"),
        ("Kurt", "Godel", "AT"),
        ("John", "Smith", "US"),
        ("Jane", "Smith", "GB"),
        ("Anna", "Smithers", "DE"),
        ("Blaise", "Pascal", "FR"),
        ("Rene", "Descartes", "FR"),
        ("Hedy", "Lamarr", "AT"),
        ("Lise", "Meitner", "DE"),
        ("Max", "Planck", "DE"),
        ("Niels", "Bohr", "DK"),
        ("Katherine", "Johnson", "US"),
        ("Dorothy", "Vaughan", "US"),
        ("Mary", "Jackson", "US"),
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, &(first, last, country))| {
            // Mixed-case emails, some on a shared domain with a searchable word.
            let domain = if i % 3 == 0 {
                "Science.example"
            } else {
                "example.org"
            };
            Person {
                // Ids in an order unrelated to names, so that sorting is visible.
                id: format!("cus_list_{:02}", (i * 7) % 25),
                first,
                last,
                country,
                email: format!("{}.{}@{domain}", first.to_lowercase(), last),
                // Groups of three share a createdTime, so that ties need breaking.
                created: format!("2026-02-{:02}T09:00:00+00:00", 1 + i / 3),
            }
        })
        .collect()
}

async fn app_with_people() -> (TestApp, Vec<Person>) {
    let app = spawn_app().await;
    let people = people();
    for person in &people {
        let body = customer_event(
            "customer-created",
            &person.id,
            1,
            json!({
                "firstName": person.first,
                "lastName": person.last,
                "email": person.email,
                "createdTime": person.created,
                "primaryAddress": {"firstName": person.first, "lastName": person.last,
                    "country": person.country, "city": "Somewhere",
                    "emails": [{"label": "main", "value": person.email, "primary": true}]}
            }),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{}", person.id);
    }
    (app, people)
}

fn sorted_ids(people: &[&Person]) -> Vec<String> {
    let mut ids: Vec<String> = people.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn paging_walks_every_customer_exactly_once() {
    let (app, people) = app_with_people().await;
    assert_eq!(people.len(), 25);
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let path = format!("/customers?limit=7&offset={offset}");
        let (status, headers, body) = get_json(&app, &path).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "pagination-total"), "25", "{path}");
        assert_eq!(header(&headers, "pagination-limit"), "7", "{path}");
        assert_eq!(header(&headers, "pagination-offset"), offset.to_string());
        let page = body.as_array().unwrap().clone();
        let expected_len = 7.min(25usize.saturating_sub(offset));
        assert_eq!(page.len(), expected_len, "{path}");
        if page.is_empty() {
            break;
        }
        seen.extend(ids(&page));
        offset += 7;
        assert!(offset <= 35, "paging does not end");
    }
    let all: Vec<&Person> = people.iter().collect();
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no customer twice: {seen:?}");
    assert_eq!(seen, sorted_ids(&all), "default order is by id");

    // The same walk with a sort full of ties.
    let mut sorted_walk = Vec::new();
    for offset in (0..25).step_by(7) {
        let page = list(
            &app,
            &format!("/customers?limit=7&offset={offset}&sort=-createdTime"),
        )
        .await;
        sorted_walk.extend(ids(&page));
    }
    let unique: BTreeSet<&String> = sorted_walk.iter().collect();
    assert_eq!(unique.len(), 25, "{sorted_walk:?}");
}

#[tokio::test]
async fn list_defaults_and_limits_follow_rebilly() {
    let (app, _) = app_with_people().await;
    let (status, headers, body) = get_json(&app, "/customers").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 25);
    assert_eq!(header(&headers, "pagination-limit"), "100");
    assert_eq!(header(&headers, "pagination-offset"), "0");
    assert_eq!(header(&headers, "pagination-total"), "25");

    let (status, headers, body) = get_json(&app, "/customers?limit=0").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]));
    assert_eq!(header(&headers, "pagination-total"), "25");
    assert_eq!(header(&headers, "pagination-limit"), "0");

    let (status, headers, body) = get_json(&app, "/customers?limit=1000&offset=20").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 5);
    assert_eq!(header(&headers, "pagination-limit"), "1000");
    assert_eq!(header(&headers, "pagination-offset"), "20");

    let (_, _, body) = get_json(&app, "/customers?offset=100").await;
    assert_eq!(body, json!([]));

    for bad in ["1001", "-1", "ten"] {
        assert_bad_query(&app, &format!("/customers?limit={bad}"), "limit").await;
    }
    assert_bad_query(&app, "/customers?offset=-3", "offset").await;
}

#[tokio::test]
async fn lists_sort_ascending_and_descending_with_stable_ties() {
    let (app, people) = app_with_people().await;

    let by_last = ids(&list(&app, "/customers?sort=lastName").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| a.last.cmp(b.last).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(by_last, expected);

    let newest_first = ids(&list(&app, "/customers?sort=-createdTime").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(newest_first, expected);

    // Ties are broken the same way every time.
    for _ in 0..3 {
        assert_eq!(
            ids(&list(&app, "/customers?sort=-createdTime").await),
            newest_first
        );
    }

    let descending_last = ids(&list(&app, "/customers?sort=-lastName&limit=3").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| b.last.cmp(a.last).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().take(3).map(|p| p.id.clone()).collect();
    assert_eq!(descending_last, expected);
}

#[tokio::test]
async fn lists_filter_by_field_values() {
    let (app, people) = app_with_people().await;

    let found = list(&app, "/customers?filter=country:FR,DE").await;
    let expected: Vec<&Person> = people
        .iter()
        .filter(|p| p.country == "FR" || p.country == "DE")
        .collect();
    assert!(expected.len() > 5);
    assert_eq!(ids(&found), sorted_ids(&expected));
    let (_, headers, _) = get_json(&app, "/customers?filter=country:FR,DE&limit=2").await;
    assert_eq!(
        header(&headers, "pagination-total"),
        expected.len().to_string()
    );

    let found = list(&app, "/customers?filter=country:FR;lastName:Curie").await;
    let expected: Vec<&Person> = people
        .iter()
        .filter(|p| p.country == "FR" && p.last == "Curie")
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(ids(&found), sorted_ids(&expected));

    let found = list(&app, "/customers?filter=country:GB;lastName:Smith").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["firstName"], "Jane");

    assert!(list(&app, "/customers?filter=country:ZZ").await.is_empty());
}

#[tokio::test]
async fn bad_list_queries_are_400_problems_naming_the_culprit() {
    let (app, _) = app_with_people().await;
    assert_bad_query(&app, "/customers?filter=colour:red", "colour").await;
    assert_bad_query(&app, "/customers?filter=colour:red", "filter").await;
    assert_bad_query(&app, "/customers?filter=country", "filter").await;
    assert_bad_query(&app, "/customers?sort=shoeSize", "shoeSize").await;
    assert_bad_query(&app, "/customers?sort=-shoeSize", "sort").await;
    assert_bad_query(&app, "/customers?colour=red", "colour").await;
    assert_bad_query(&app, "/events?colour=red", "colour").await;
}

#[tokio::test]
async fn q_finds_partial_case_insensitive_matches_in_names_and_emails() {
    let (app, people) = app_with_people().await;
    let matching = |needle: &str| -> Vec<String> {
        let needle = needle.to_lowercase();
        let hits: Vec<&Person> = people
            .iter()
            .filter(|p| {
                p.first.to_lowercase().contains(&needle)
                    || p.last.to_lowercase().contains(&needle)
                    || p.email.to_lowercase().contains(&needle)
            })
            .collect();
        sorted_ids(&hits)
    };

    let smi = ids(&list(&app, "/customers?q=SMI").await);
    assert_eq!(smi, matching("smi"));
    assert_eq!(smi.len(), 3, "Smith, Smith and Smithers");

    let science = ids(&list(&app, "/customers?q=science").await);
    assert_eq!(science, matching("science"));
    assert_eq!(science.len(), 9, "emails on Science.example");

    let ada = ids(&list(&app, "/customers?q=aDa").await);
    assert_eq!(ada, matching("ada"));
    assert!(!ada.is_empty());

    let first_name = ids(&list(&app, "/customers?q=atheri").await);
    assert_eq!(first_name, matching("atheri"));
    assert_eq!(first_name.len(), 1);

    assert!(list(&app, "/customers?q=nobody-here").await.is_empty());
    // LIKE wildcards are searched literally.
    assert!(list(&app, "/customers?q=%25").await.is_empty());
    assert!(list(&app, "/customers?q=_").await.is_empty());
}

#[tokio::test]
async fn fields_limits_the_returned_fields() {
    let (app, people) = app_with_people().await;
    let found = list(&app, "/customers?fields=id,email&sort=id").await;
    assert_eq!(found.len(), 25);
    let mut all: Vec<&Person> = people.iter().collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for (customer, person) in found.iter().zip(all) {
        let keys: BTreeSet<&str> = customer
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["id", "email"]), "{customer}");
        assert_eq!(customer["email"], person.email.as_str());
    }
}

// ---------------------------------------------------------------------------------------------
// GET /events
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn events_are_listed_newest_first_with_filters() {
    let app = spawn_app().await;
    let mut delivered = Vec::new();
    for name in fixture_names() {
        let (id, status) = app.deliver_ok(fixture(&format!("deliveries/{name}"))).await;
        delivered.push((id, status));
    }
    let rejected = app
        .deliver(fixture("rejected/experian-bad-outcome.json"))
        .await;
    assert_eq!(rejected.status(), 422);

    let (status, headers, body) = get_json(&app, "/events").await;
    assert_eq!(status, 200);
    let all = body.as_array().unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(header(&headers, "pagination-total"), "13");
    let listed = ids_of_events(all);
    let mut sorted = listed.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, sorted, "newest first");
    for event in all {
        let keys: BTreeSet<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "id",
            "receivedTime",
            "eventType",
            "customerId",
            "revision",
            "status",
            "error",
        ] {
            assert!(keys.contains(key), "{key} missing from {event}");
        }
        assert!(
            event["receivedTime"].as_str().unwrap().starts_with("20"),
            "{event}"
        );
    }
    let rejected_event = &all[0];
    assert_eq!(rejected_event["status"], "rejected");
    assert!(
        rejected_event["error"]
            .as_str()
            .unwrap()
            .contains("outcome")
    );

    // The first delivery: Alice created, revision 1, applied.
    let first = all.last().unwrap();
    assert_eq!(first["id"], delivered[0].0);
    assert_eq!(first["eventType"], "customer-created");
    assert_eq!(first["customerId"], "cus_alice_01");
    assert_eq!(first["revision"], 1);
    assert_eq!(first["status"], "applied");
    assert_eq!(first["error"], Value::Null);

    let bob = events_of(&app, "?customerId=cus_bob_02").await;
    assert_eq!(
        bob.iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![
            "experian-check-performed",
            "experian-check-performed",
            "customer-created"
        ]
    );
    assert!(bob.iter().all(|e| e["customerId"] == "cus_bob_02"));

    let stale = events_of(&app, "?status=stale").await;
    assert_eq!(stale.len(), 2);
    assert!(stale.iter().all(|e| e["status"] == "stale"));
    let stale_customers: Vec<&str> = stale
        .iter()
        .map(|e| e["customerId"].as_str().unwrap())
        .collect();
    assert_eq!(stale_customers, vec!["cus_carol_03", "cus_alice_01"]);

    let ignored = events_of(&app, "?status=ignored").await;
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0]["eventType"], "invoice-paid");
    assert_eq!(ignored[0]["customerId"], Value::Null);

    let merges = events_of(&app, "?eventType=customer-merged").await;
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0]["revision"], 4);

    let applied_created = events_of(&app, "?eventType=customer-created&status=applied").await;
    assert_eq!(applied_created.len(), 4);

    let (_, headers, page) = get_json(&app, "/events?limit=3&offset=2").await;
    assert_eq!(
        ids_of_events(page.as_array().unwrap()),
        listed[2..5].to_vec()
    );
    assert_eq!(header(&headers, "pagination-limit"), "3");
    assert_eq!(header(&headers, "pagination-offset"), "2");
    assert_eq!(header(&headers, "pagination-total"), "13");

    assert_bad_query(&app, "/events?status=exploded", "status").await;
    assert_bad_query(&app, "/events?limit=1001", "limit").await;
}

// ---------------------------------------------------------------------------------------------
// Fixture order independence
// ---------------------------------------------------------------------------------------------

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(common::fixtures_dir().join("deliveries"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    names
}

/// The projection as the API shows it after delivering the fixtures in `order` (indexes into
/// the name-ordered list); also checks nothing is rejected.
async fn projection_after(order: &[usize]) -> (Value, Value, Value) {
    let names = fixture_names();
    let app = spawn_app().await;
    for &index in order {
        let name = &names[index];
        let response = app.deliver(fixture(&format!("deliveries/{name}"))).await;
        assert_eq!(response.status(), 200, "{name} in order {order:?}");
    }
    let customers = Value::Array(list(&app, "/customers?sort=id").await);
    let carol = app.customer("cus_carol_03").await;
    let bob = app.customer("cus_bob_02").await;
    (customers, carol, bob)
}

#[tokio::test]
async fn the_fixture_projection_does_not_depend_on_arrival_order() {
    let in_name_order: Vec<usize> = (0..12).collect();
    let (customers, carol, bob) = projection_after(&in_name_order).await;

    // The expected final projection of fixtures/README.md.
    assert_eq!(
        ids(customers.as_array().unwrap()),
        vec!["cus_alice_01", "cus_bob_02", "cus_dave_04"]
    );
    let alice = &customers[0];
    assert_eq!(alice["revision"], 4);
    assert_eq!(alice["email"], "alice@martin.example");
    assert_eq!(alice["primaryAddress"]["city"], "Lyon");
    assert_eq!(alice["tags"].as_array().unwrap().len(), 2);
    assert_eq!(alice["updatedTime"], "2026-03-10T14:00:00+00:00");
    assert_eq!(alice["mergedInto"], Value::Null);
    assert_eq!(alice["experianCheck"], Value::Null);
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["primaryAddress"]["dob"], "1979-11-23");
    assert_eq!(bob["experianCheck"]["outcome"], -1);
    assert_eq!(bob["experianCheck"]["errorCode"], "003");
    assert_eq!(customers[1], bob);
    assert_eq!(carol["revision"], 2);
    assert_eq!(carol["updatedTime"], "2026-03-09T16:00:00+00:00");
    assert_eq!(carol["email"], "carol.nguyen@example.net");
    assert_eq!(carol["mergedInto"], "cus_alice_01");
    let dave = &customers[2];
    assert_eq!(dave["lastName"], "Okafor-Reyes");
    assert_eq!(dave["updatedTime"], "2026-03-02T08:00:00+00:00");
    assert!(dave.get("revision").is_none());

    let reversed: Vec<usize> = (0..12).rev().collect();
    let shuffled = vec![6, 11, 2, 9, 0, 5, 3, 10, 1, 7, 4, 8];
    let merge_first = vec![7, 8, 4, 11, 10, 3, 2, 1, 0, 5, 6, 9];
    let carol_late_first = vec![8, 0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11];
    for order in [shuffled, merge_first, carol_late_first, reversed] {
        let (other_customers, other_carol, other_bob) = projection_after(&order).await;
        assert_eq!(other_carol, carol, "cus_carol_03 after order {order:?}");
        // Experian's `experianCheck` is, by rule 4, the latest check *received*: when 07 arrives
        // before 06 the match from 06 is the latest. Everything else must be equal.
        let position = |file: usize| order.iter().position(|&i| i == file).unwrap();
        let mut expected_customers = customers.clone();
        let mut expected_bob = bob.clone();
        if position(6) < position(5) {
            let check = json!({"outcome": 1, "reason": "Record matched", "errorCode": "000",
                               "errorMessage": ""});
            expected_bob["experianCheck"] = check.clone();
            expected_customers[1]["experianCheck"] = check;
        }
        assert_eq!(other_bob, expected_bob, "cus_bob_02 after order {order:?}");
        assert_eq!(
            other_customers, expected_customers,
            "GET /customers after order {order:?}"
        );
    }
}
