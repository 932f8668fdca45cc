//! Metrics, in a test binary of their own: the recorder is process-wide, so exact deltas need
//! a process where no other test delivers meanwhile.
mod common;

use common::*;
use serde_json::json;
// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_every_delivery_outcome() {
    let app = common::spawn_app().await;
    let outcomes = [
        "applied",
        "stale",
        "duplicate",
        "ignored",
        "rejected",
        "unauthorized",
        "too_large",
    ];
    let count = |text: &str, outcome: &str| {
        common::metric_value(
            text,
            "rebilly_webhookd_deliveries_total",
            &[("outcome", outcome)],
        )
    };
    let before = metrics_text(&app).await;

    let rev2 = customer_event("customer-created", "cus_metrics", 2, json!({}));
    assert_eq!(app.deliver_ok(rev2.clone()).await.1, "applied");
    let rev3 = customer_event("customer-updated", "cus_metrics", 3, json!({}));
    assert_eq!(app.deliver_ok(rev3).await.1, "applied");
    let rev1 = customer_event("customer-updated", "cus_metrics", 1, json!({}));
    assert_eq!(app.deliver_ok(rev1).await.1, "stale");
    assert_eq!(app.deliver_ok(rev2).await.1, "duplicate");
    let same_revision = customer_event("customer-updated", "cus_metrics", 3, json!({"x": 1}));
    assert_eq!(app.deliver_ok(same_revision).await.1, "duplicate");
    let invoice = common::fixture("deliveries/10-invoice-paid.json");
    assert_eq!(app.deliver_ok(invoice).await.1, "ignored");
    let response = app
        .deliver(common::fixture("rejected/created-missing-customer-id.json"))
        .await;
    assert_eq!(response.status(), 422);
    let response = app
        .deliver(common::fixture("rejected/array-body.json"))
        .await;
    assert_eq!(response.status(), 400);
    let response = app
        .webhook_request()
        .body(customer_event("customer-created", "cus_anon", 1, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app
        .webhook_request()
        .basic_auth(USER, Some("wrong-password"))
        .body(customer_event("customer-created", "cus_anon", 1, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = app.deliver(vec![b' '; 1024 * 1024 + 1]).await;
    assert_eq!(response.status(), 413);

    let after = metrics_text(&app).await;
    let expected = [2.0, 1.0, 2.0, 1.0, 2.0, 2.0, 1.0];
    for (outcome, expected) in outcomes.iter().zip(expected) {
        let delta = count(&after, outcome) - count(&before, outcome);
        assert_eq!(delta, expected, "deliveries_total{{outcome=\"{outcome}\"}}");
    }
    assert!(
        after.contains("# TYPE rebilly_webhookd_deliveries_total counter"),
        "{after}"
    );
    assert!(
        after.contains("# TYPE rebilly_webhookd_writer_queue_depth gauge"),
        "the writer queue depth is exported:\n{after}"
    );
    assert!(
        common::metric_value(&after, "rebilly_webhookd_event_log_events", &[]) >= 8.0,
        "the event log size counts the deliveries:\n{after}"
    );
    for histogram in [
        "rebilly_webhookd_request_duration_seconds",
        "rebilly_webhookd_writer_batch_size",
    ] {
        assert!(
            common::metric_value(&after, &format!("{histogram}_count"), &[]) > 0.0,
            "{histogram} is recorded:\n{after}"
        );
        assert!(
            after.contains(&format!("{histogram}_bucket{{")),
            "{histogram} has buckets"
        );
    }
    assert!(
        common::metric_value(
            &after,
            "rebilly_webhookd_request_duration_seconds_count",
            &[("route", "webhook")]
        ) - common::metric_value(
            &before,
            "rebilly_webhookd_request_duration_seconds_count",
            &[("route", "webhook")]
        ) >= 10.0,
        "every webhook request is timed"
    );
}
