//! Retention and rebuild: pruning keeps every body the projection rests on, so that a rebuild
//! from the log alone reproduces the live projection; bodies that no longer parse are named.

use crate::common::{self, *};
use serde_json::{Value, json};
use std::time::Duration;

/// The log without its bodies: what pruning and rebuilding must leave as it was.
fn event_metadata(db: &Database) -> Vec<Vec<String>> {
    db.table(
        "SELECT id, received_ms, event_type, customer_id, revision, status, error, duplicate_of,
                body_size, projected_revision
         FROM events ORDER BY id",
    )
}

/// Events without a body (pruned, or byte-identical redeliveries, which never keep one).
fn bodiless(db: &Database) -> Vec<i64> {
    db.table("SELECT id FROM events WHERE body IS NULL ORDER BY id")
        .iter()
        .map(|row| {
            let digits: String = row[0].chars().filter(char::is_ascii_digit).collect();
            digits.parse().expect("an event id")
        })
        .collect()
}

async fn every_customer(app: &TestApp, ids: &[&str]) -> Vec<Value> {
    let mut customers = vec![list(app, "/customers?limit=1000").await.into()];
    for id in ids {
        customers.push(app.customer(id).await);
    }
    customers
}

const CUSTOMERS: [&str; 8] = [
    "cus_ret_a",
    "cus_ret_b",
    "cus_ret_dup",
    "cus_ret_target",
    "cus_ret_early_dup",
    "cus_ret_early_target",
    "cus_ret_plain",
    "cus_ret_checked_only",
];

/// A history in which most bodies are superseded: revisions out of order, redeliveries,
/// semantic duplicates, Experian checks embedding newer and older revisions, a merge whose
/// merged-away snapshot is older than one already seen, a merge that arrives first, a customer
/// without revisions, an Experian check for a customer never described, ignored and rejected
/// bodies. Returns a body whose event will be pruned, and a semantic duplicate of another.
async fn deliver_prunable_history(app: &TestApp) -> (Vec<u8>, Vec<u8>) {
    let a1 = customer_event("customer-created", "cus_ret_a", 1, json!({}));
    let mut bodies = vec![
        a1.clone(),
        customer_event("customer-updated", "cus_ret_a", 3, json!({"city": "Nice"})),
        customer_event("customer-updated", "cus_ret_a", 2, json!({})),
        customer_event(
            "customer-updated",
            "cus_ret_a",
            3,
            json!({"note": "same revision"}),
        ),
        customer_event("customer-updated", "cus_ret_a", 5, json!({"tags": ["vip"]})),
        a1.clone(),
        customer_event("customer-created", "cus_ret_b", 1, json!({})),
        experian_event("cus_ret_b", 4, 1, "match", "000", ""),
        customer_event("customer-updated", "cus_ret_b", 2, json!({})),
        experian_event("cus_ret_b", 3, -1, "mismatch", "002", "Address differs"),
        customer_event("customer-created", "cus_ret_dup", 4, json!({})),
        customer_event("customer-updated", "cus_ret_dup", 6, json!({})),
        customer_event("customer-created", "cus_ret_target", 1, json!({})),
        merge_event("cus_ret_target", Some(2), "cus_ret_dup", 5),
        customer_event("customer-updated", "cus_ret_dup", 7, json!({})),
        merge_event("cus_ret_early_target", Some(3), "cus_ret_early_dup", 2),
        customer_event("customer-created", "cus_ret_early_dup", 1, json!({})),
        customer_event("customer-created", "cus_ret_early_target", 1, json!({})),
        unrevisioned_event(
            "customer-created",
            "cus_ret_plain",
            Some("2026-03-01T10:00:00Z"),
            json!({}),
        ),
        unrevisioned_event(
            "customer-updated",
            "cus_ret_plain",
            Some("2026-03-02T10:00:00Z"),
            json!({"city": "Lille"}),
        ),
        unrevisioned_event(
            "customer-updated",
            "cus_ret_plain",
            Some("2026-03-01T12:00:00Z"),
            json!({}),
        ),
        serde_json::to_vec(&json!({
            "eventType": "experian-check-performed", "customerId": "cus_ret_checked_only",
            "outcome": 0, "reason": "no match", "errorCode": "001", "errorMessage": ""
        }))
        .unwrap(),
        serde_json::to_vec(&json!({"eventType": "invoice-paid", "customerId": "cus_ret_a"}))
            .unwrap(),
    ];
    bodies.push(customer_event(
        "customer-updated",
        "cus_ret_a",
        4,
        json!({}),
    ));
    for body in bodies {
        assert_eq!(app.deliver(body).await.status(), 200);
    }
    let rejected = app
        .deliver(common::fixture("rejected/truncated.json"))
        .await;
    assert!(rejected.status().is_client_error());
    let semantic_duplicate = customer_event("customer-updated", "cus_ret_a", 2, json!({"x": 1}));
    (a1, semantic_duplicate)
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_then_rebuilding_reproduces_the_live_projection() {
    let mut app = common::spawn_app().await;
    let (pruned_body, semantic_duplicate) = deliver_prunable_history(&app).await;
    let served_before = every_customer(&app, &CUSTOMERS).await;
    let db = Database::of_config(&app.config_path);
    let table_before = db.customers();
    let log_before = event_metadata(&db);
    let redeliveries = bodiless(&db);
    tokio::time::sleep(Duration::from_millis(5)).await;

    let output = run_cli_async(
        &app.config_path,
        &["events", "prune", "--older-than-days", "0", "--yes"],
    )
    .await;
    assert_success(&output);
    let mut pruned = bodiless(&db);
    pruned.retain(|id| !redeliveries.contains(id));
    assert!(
        pruned.len() >= 10,
        "most bodies were superseded: {pruned:?}"
    );
    assert_eq!(stdout_json(&output)["pruned"], pruned.len());
    assert_eq!(db.customers(), table_before);
    app.stop().await;

    // Rebuild from the log alone, with the projection gone.
    db.execute("DELETE FROM customers");
    let output = run_cli_async(&app.config_path, &["projection", "rebuild"]).await;
    assert_success(&output);
    assert_eq!(stdout_json(&output)["skippedUnparsable"], json!([]));
    assert_eq!(db.customers(), table_before);
    assert_eq!(event_metadata(&db), log_before);
    // A second pruning pass finds nothing more, and rebuilding again changes nothing.
    let output = run_cli_async(
        &app.config_path,
        &["events", "prune", "--older-than-days", "0", "--yes"],
    )
    .await;
    assert_eq!(stdout_json(&output)["pruned"], 0);

    let app = app.restart().await;
    assert_eq!(every_customer(&app, &CUSTOMERS).await, served_before);
    // Dedupe keys of pruned events survive the rebuild: their redeliveries stay duplicates.
    assert_eq!(status_of(&app, pruned_body).await, "duplicate");
    assert_eq!(status_of(&app, semantic_duplicate).await, "duplicate");
    // And the projection keeps applying the same rules.
    let newer = customer_event("customer-updated", "cus_ret_a", 6, json!({}));
    assert_eq!(status_of(&app, newer).await, "applied");
    let late = customer_event("customer-updated", "cus_ret_dup", 9, json!({}));
    assert_eq!(status_of(&app, late).await, "stale");
}
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_no_longer_parses_fails_the_rebuild_unless_skipped() {
    let mut app = common::spawn_app().await;
    let (superseded, _) = app
        .deliver_ok(customer_event(
            "customer-created",
            "cus_unparsable",
            1,
            json!({}),
        ))
        .await;
    let current = deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_unparsable", 2, json!({})),
    )
    .await;
    app.stop().await;
    let db = Database::of_config(&app.config_path);
    let table_before = db.customers();
    // A body stored by an older release that this one no longer reads.
    let truncated = "'{\"eventType\": \"customer-created\"'";
    let stored = if db.is_postgres() {
        format!("convert_to({truncated}, 'UTF8')")
    } else {
        format!("CAST({truncated} AS BLOB)")
    };
    db.execute(&format!(
        "UPDATE events SET body = {stored} WHERE id = {superseded}"
    ));
    db.execute("UPDATE customers SET snapshot = '{}' WHERE id = 'cus_unparsable'");

    let output = run_cli_async(&app.config_path, &["projection", "rebuild"]).await;
    assert!(
        !output.status.success(),
        "an unparsable body fails the rebuild"
    );
    // The error's own line; progress lines come before it.
    let message = stderr(&output)
        .lines()
        .filter(|line| line.starts_with("rebilly-webhookd:"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(message.contains(&superseded.to_string()), "{message}");
    assert!(message.contains("--skip-unparsable"), "{message}");
    assert!(!message.contains(&current.to_string()), "{message}");
    assert_ne!(db.customers(), table_before, "nothing was changed");

    let output = run_cli_async(
        &app.config_path,
        &["projection", "rebuild", "--skip-unparsable"],
    )
    .await;
    assert_success(&output);
    let report = stdout_json(&output);
    assert_eq!(report["skippedUnparsable"], json!([superseded]), "{report}");
    assert_eq!(report["replayed"], 1, "{report}");
    assert_eq!(db.customers(), table_before);
}
}
