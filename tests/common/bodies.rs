//! Realistic Rebilly bodies for tests, built around [`super::customer_event`].

use super::customer_event;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use std::time::{SystemTime, UNIX_EPOCH};

/// The Customer resource `customer_event` would embed.
pub fn resource(id: &str, revision: i64, extra: Value) -> Value {
    let body: Value =
        serde_json::from_slice(&customer_event("customer-updated", id, revision, extra)).unwrap();
    body["_embedded"]["customer"].clone()
}

/// A customer event whose embedded customer has no `revision` field at all; `updated` sets
/// `updatedTime` (or removes it when `None`).
pub fn unrevisioned_event(
    event_type: &str,
    id: &str,
    updated: Option<&str>,
    extra: Value,
) -> Vec<u8> {
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
pub fn merge_event(
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
pub fn experian_event(
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

/// A customer-created body padded with a long string field to exactly `size` bytes.
pub fn padded_body(id: &str, size: usize) -> Vec<u8> {
    let bare = customer_event("customer-created", id, 1, json!({"note": ""}));
    assert!(
        bare.len() <= size,
        "the bare body is already {}",
        bare.len()
    );
    let body = customer_event(
        "customer-created",
        id,
        1,
        json!({"note": "x".repeat(size - bare.len())}),
    );
    assert_eq!(body.len(), size);
    body
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A `whsec_` secret for some key bytes.
pub fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
}

/// `v1,<base64>` for a Standard Webhooks signature.
pub fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1,{}",
        BASE64.encode(rebilly_webhookd::auth::sign(key, id, timestamp, body))
    )
}

/// The names of `fixtures/deliveries/*.json`, in name order.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(super::fixtures_dir().join("deliveries"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".json"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 12, "{names:?}");
    names
}
