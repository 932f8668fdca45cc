//! Records from older Rebilly accounts (`fixtures/older-accounts/`): UUID ids, times written
//! `2017-05-26 18:59:51` with or without a zone, `null` where a value is expected. They are
//! applied, served exactly as sent, ordered by those times, and an unreadable time counts as
//! absent so that the arrival order decides.

use crate::common::*;
use serde_json::{Value, json};

const ID: &str = "8d2c7f3e-5b1a-4c9e-9f0a-2e6b7d4c1a35";

fn older(name: &str) -> Vec<u8> {
    fixture(&format!("older-accounts/{name}"))
}

/// The Customer resource a fixture embeds, as sent.
fn resource(body: &[u8]) -> Value {
    let value: Value = serde_json::from_slice(body).unwrap();
    value["_embedded"]["customer"].clone()
}

/// The served customer without the two fields the daemon adds.
async fn served(app: &TestApp) -> Value {
    let mut customer = app.customer(ID).await;
    let object = customer.as_object_mut().unwrap();
    assert_eq!(object.remove("mergedInto"), Some(Value::Null));
    assert_eq!(object.remove("experianCheck"), Some(Value::Null));
    customer
}

backends! {
#[tokio::test]
async fn an_older_account_record_is_applied_and_served_exactly_as_sent() {
    let app = spawn_app().await;
    let body = older("01-customer-created-uuid-older-times.json");
    let sent = resource(&body);
    assert_eq!(sent["updatedTime"], "2017-05-26 18:59:51");
    assert_eq!(sent["revision"], Value::Null);
    let response = app.deliver(body.clone()).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "applied", "{answer}");
    let customer = served(&app).await;
    assert_eq!(customer, sent);
    // Key order and spelling too: the snapshot is the resource as Rebilly wrote it.
    assert_eq!(
        serde_json::to_string(&customer).unwrap(),
        serde_json::to_string(&sent).unwrap()
    );
    let (events, _) = events(&app, "").await;
    assert_eq!(events[0]["customerId"], ID);
    assert_eq!(events[0]["revision"], Value::Null);
}
}

backends! {
#[tokio::test]
async fn older_times_order_snapshots_and_an_unreadable_one_leaves_it_to_arrival() {
    let app = spawn_app().await;
    let steps = [
        ("01-customer-created-uuid-older-times.json", "applied"),
        // `2017-06-02 09:12:05+00:00` is later than `2017-05-26 18:59:51`.
        ("02-customer-updated-uuid-zone-form.json", "applied"),
        // `2017-05-30 10:00:00.250` is earlier than what is stored: older news.
        ("03-customer-updated-uuid-arrives-late.json", "stale"),
    ];
    for (name, status) in steps {
        assert_eq!(status_of(&app, older(name)).await, status, "{name}");
    }
    let zone_form = resource(&older("02-customer-updated-uuid-zone-form.json"));
    assert_eq!(served(&app).await, zone_form);

    // Times compare as instants in lists too.
    let listed = list(
        &app,
        "/customers?filter=updatedTime:2017-06-02T11:12:05%2B02:00..&sort=-updatedTime",
    )
    .await;
    assert_eq!(ids(&listed), vec![ID.to_owned()]);
    let (status, _, body) = get_json(
        &app,
        "/customers?filter=updatedTime:2017-06-02T11:12:05.001%2B02:00..",
    )
    .await;
    assert_eq!((status, body), (200, json!([])));
    let listed = list(&app, "/customers?filter=createdTime:..2017-05-26T18:59:50Z").await;
    assert_eq!(ids(&listed), vec![ID.to_owned()]);

    // `0000-00-00 00:00:00` is no time at all: absent, so the later arrival wins.
    let unreadable = older("04-customer-updated-uuid-unreadable-time.json");
    assert_eq!(status_of(&app, unreadable.clone()).await, "applied");
    let customer = served(&app).await;
    assert_eq!(customer, resource(&unreadable));
    assert_eq!(customer["updatedTime"], "0000-00-00 00:00:00");
}
}

backends! {
#[tokio::test]
async fn replaying_the_older_account_folder_gives_the_same_outcomes() {
    let app = spawn_app().await;
    // An answer proves the daemon has created its database, so `replay` does not race it.
    assert!(events(&app, "").await.0.is_empty());
    let output = run_cli_async(&app.config_path, &["replay", "fixtures/older-accounts"]).await;
    assert_success(&output);
    let text = stdout(&output);
    let outcomes: Vec<&str> = ["applied", "applied", "stale", "applied"].to_vec();
    for (line, outcome) in text.lines().zip(&outcomes) {
        assert!(
            line.contains(outcome),
            "{line} should be {outcome}:\n{text}"
        );
    }
    assert_eq!(
        served(&app).await,
        resource(&older("04-customer-updated-uuid-unreadable-time.json"))
    );
}
}
