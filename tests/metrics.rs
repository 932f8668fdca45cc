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

/// The scheduled sync is the only sync in this binary, so its metrics are read as absolute
/// values.
#[tokio::test]
async fn the_scheduled_sync_runs_reconciles_and_updates_its_metrics() {
    use common::fake_rebilly::{FAKE_API_KEY, FakeRebilly, Fault, api_customer, time_at};
    let fake = FakeRebilly::start().await;
    for i in 0..150 {
        fake.upsert(api_customer(&format!("cus_sched_{i:03}"), 1, &time_at(i)));
    }
    let config = fake
        .config(FAKE_API_KEY, 100)
        .replace("[sync]\n", "[sync]\ninterval_seconds = 1\n");
    let app = common::spawn_app_with(&config).await;
    let sample = |text: &str, name: &str, labels: &[(&str, &str)]| {
        common::metric_value(text, &format!("rebilly_webhookd_sync_{name}"), labels)
    };

    eventually("the first scheduled sync", || async {
        let text = metrics_text(&app).await;
        sample(&text, "last_success_timestamp_seconds", &[]) > 0.0
    })
    .await;
    let text = metrics_text(&app).await;
    assert!(sample(&text, "customers_total", &[("outcome", "applied")]) >= 150.0);
    assert!(sample(&text, "customers_total", &[("outcome", "fetched")]) >= 150.0);
    assert!(sample(&text, "runs_total", &[]) >= 1.0);
    let response = app.api_get("/customers?limit=0").await;
    assert_eq!(header(response.headers(), "pagination-total"), "150");

    // A change Rebilly never sent a webhook for arrives by the next run.
    fake.upsert(api_customer("cus_sched_000", 2, &time_at(1_000)));
    eventually("the change is reconciled", || async {
        app.customer("cus_sched_000").await["revision"] == 2
    })
    .await;
    let text = metrics_text(&app).await;
    assert!(sample(&text, "customers_total", &[("outcome", "applied")]) >= 151.0);

    // A run that cannot reach the API counts as a failure; the daemon keeps serving.
    fake.fail_next(std::iter::repeat_n(Fault::Status(500), 8));
    eventually("a failed run is counted", || async {
        let text = metrics_text(&app).await;
        sample(&text, "failures_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(app.api_get("/healthz").await.status(), 200);
}
