//! Metrics, in a test binary of their own: the recorder is process-wide, so exact deltas need
//! a process where no other test delivers meanwhile. The tests here take turns for the same
//! reason.
mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const DELIVERIES: &str = "rebilly_webhookd_deliveries_total";
const REQUEST_SECONDS: &str = "rebilly_webhookd_request_duration_seconds";
const BATCH_SIZE: &str = "rebilly_webhookd_writer_batch_size";
const COMMIT_SECONDS: &str = "rebilly_webhookd_writer_commit_seconds";
const EVENT_LOG: &str = "rebilly_webhookd_event_log_events";
const HANDLER_ATTEMPTS: &str = "rebilly_webhookd_handler_attempts_total";

/// One test at a time: they share the process-wide recorder.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Two scrapes, to read how much a series moved between them.
struct Scrapes {
    before: String,
    after: String,
}

impl Scrapes {
    fn delta(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.after, name, labels) - metric_value(&self.before, name, labels)
    }

    fn outcome(&self, outcome: &str) -> f64 {
        self.delta(DELIVERIES, &[("outcome", outcome)])
    }
}

#[tokio::test]
async fn metrics_count_every_delivery_outcome() {
    let _turn = SERIAL.lock().await;
    let app = common::spawn_app().await;
    let fenced = common::spawn_app_with("[auth]\nallowed_networks = [\"203.0.113.0/24\"]\n").await;
    let before = metrics_text(&app).await;

    let response = fenced
        .deliver(customer_event(
            "customer-created",
            "cus_fenced",
            1,
            json!({}),
        ))
        .await;
    assert_eq!(response.status(), 403);
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

    let scrapes = Scrapes {
        before,
        after: metrics_text(&app).await,
    };
    let expected = [
        ("applied", 2.0),
        ("stale", 1.0),
        ("duplicate", 2.0),
        ("ignored", 1.0),
        ("rejected", 2.0),
        ("unauthorized", 2.0),
        ("too_large", 1.0),
        ("forbidden", 1.0),
        ("overloaded", 0.0),
        ("failed", 0.0),
    ];
    for (outcome, expected) in expected {
        assert_eq!(
            scrapes.outcome(outcome),
            expected,
            "deliveries_total{{outcome=\"{outcome}\"}}"
        );
    }
    let after = &scrapes.after;
    assert!(
        after.contains("# TYPE rebilly_webhookd_deliveries_total counter"),
        "{after}"
    );

    // Every webhook request is timed, whatever its answer: 12 requests.
    let webhook = [("route", "webhook")];
    assert_eq!(
        scrapes.delta(&format!("{REQUEST_SECONDS}_count"), &webhook),
        12.0
    );
    assert_eq!(
        scrapes.delta(
            &format!("{REQUEST_SECONDS}_bucket"),
            &[("route", "webhook"), ("le", "+Inf")]
        ),
        12.0
    );

    // The 8 deliveries that reached storage were committed one at a time (each was answered
    // before the next was sent): 8 batches of one, each with its commit timed.
    assert_eq!(scrapes.delta(&format!("{BATCH_SIZE}_count"), &[]), 8.0);
    assert_eq!(scrapes.delta(&format!("{BATCH_SIZE}_sum"), &[]), 8.0);
    assert_eq!(
        scrapes.delta(&format!("{BATCH_SIZE}_bucket"), &[("le", "1")]),
        8.0
    );
    assert_eq!(scrapes.delta(&format!("{COMMIT_SECONDS}_count"), &[]), 8.0);
    assert_eq!(
        scrapes.delta(&format!("{COMMIT_SECONDS}_bucket"), &[("le", "+Inf")]),
        8.0
    );
    assert!(
        scrapes.delta(&format!("{COMMIT_SECONDS}_sum"), &[]) > 0.0,
        "commits take time"
    );
    assert!(
        after.contains(&format!("# TYPE {COMMIT_SECONDS} histogram")),
        "{after}"
    );

    // The event log gauge is the newest event id; the queue is empty once everything is answered.
    let (newest, total) = events(&app, "?limit=1").await;
    assert_eq!(total, 8);
    assert_eq!(
        metric_value(after, EVENT_LOG, &[]),
        newest[0]["id"].as_f64().unwrap()
    );
    assert!(
        after.contains(&format!("# TYPE {QUEUE_DEPTH} gauge")),
        "{after}"
    );
    assert_eq!(metric_value(after, QUEUE_DEPTH, &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_and_failed_deliveries_are_counted() {
    let _turn = SERIAL.lock().await;
    let config = config_text("127.0.0.1:0", std::path::Path::new("{db}"), "")
        .replace("[storage]", "[storage]\nqueue_capacity = 1\nmax_batch = 1");
    let app = common::spawn_app_with(&format!("#replace{config}")).await;
    let warm_up = customer_event("customer-created", "cus_warm", 1, json!({}));
    assert_eq!(app.deliver_ok(warm_up).await.1, "applied");
    let before = metrics_text(&app).await;

    // Overloaded: the writer stalls on a lock held elsewhere and its queue of one is full.
    let lock = WriteLock::take(&app.db_path);
    let filled = fill_writer(&app, 1, "cus_over").await;
    assert_eq!(queue_depth(&app).await, 1.0);
    for n in 0..2 {
        let answer = spawn_delivery(&app, &format!("cus_over_beyond_{n}"))
            .await
            .unwrap();
        assert_eq!(answer.0, 503);
    }
    lock.release();
    for task in filled.held {
        assert_eq!(task.await.unwrap().0, 200);
    }

    // Failed: the database refuses this one delivery's row.
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER refuse_cus_fail BEFORE INSERT ON events WHEN NEW.customer_id = 'cus_fail'
         BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
    )
    .unwrap();
    let failing = customer_event("customer-created", "cus_fail", 1, json!({}));
    let response = app.deliver(failing.clone()).await;
    assert!(response.status().is_server_error(), "{}", response.status());

    let scrapes = Scrapes {
        before,
        after: metrics_text(&app).await,
    };
    assert_eq!(scrapes.outcome("overloaded"), (filled.refused + 2) as f64);
    assert_eq!(scrapes.outcome("failed"), 1.0);
    assert_eq!(scrapes.outcome("applied"), 2.0);
    assert_eq!(scrapes.outcome("rejected"), 0.0);
    // Three batches: the two held deliveries, and the one that failed inside its batch.
    assert_eq!(scrapes.delta(&format!("{BATCH_SIZE}_count"), &[]), 3.0);
    assert_eq!(scrapes.delta(&format!("{COMMIT_SECONDS}_count"), &[]), 3.0);
    assert_eq!(metric_value(&scrapes.after, QUEUE_DEPTH, &[]), 0.0);

    // Storage takes it again as soon as it can, without a restart.
    conn.execute_batch("DROP TRIGGER refuse_cus_fail").unwrap();
    assert_eq!(app.deliver_ok(failing).await.1, "applied");
}

/// A forward target that fails while told to.
#[derive(Clone, Default)]
struct Target {
    failing: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
}

impl Target {
    async fn start(&self) -> String {
        let state = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let state = state.clone();
                async move {
                    state.requests.fetch_add(1, Ordering::SeqCst);
                    if state.failing.load(Ordering::SeqCst) {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{address}/hook")
    }
}

/// The handler's gauges `(behind, pending, dead)`.
fn handler_gauges(text: &str, handler: &str) -> (f64, f64, f64) {
    let of = |name: &str| metric_value(text, name, &[("handler", handler)]);
    (
        of("rebilly_webhookd_handler_events_behind"),
        of("rebilly_webhookd_handler_retries_pending"),
        of("rebilly_webhookd_handler_dead_events"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_attempts_and_gauges_follow_a_failing_handler() {
    let _turn = SERIAL.lock().await;
    let target = Target::default();
    target.failing.store(true, Ordering::SeqCst);
    let url = target.start().await;
    let handler = "metrics_crm";
    let app = common::spawn_app_with(&format!(
        "[[handlers]]\nname = \"{handler}\"\nkind = \"forward\"\nurl = \"{url}\"\n\
         max_attempts = 2\nbackoff_initial_ms = 10\nbackoff_max_ms = 20\n"
    ))
    .await;
    let before = metrics_text(&app).await;
    let attempts = |scrapes: &Scrapes, result: &str| {
        scrapes.delta(
            HANDLER_ATTEMPTS,
            &[("handler", handler), ("result", result)],
        )
    };

    // Two attempts, then the event is dead; the customer's next event waits behind it.
    deliver_applied(
        &app,
        &customer_event("customer-created", "cus_h", 1, json!({})),
    )
    .await;
    eventually("the first event is dead", || async {
        handler_gauges(&metrics_text(&app).await, handler).2 == 1.0
    })
    .await;
    deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_h", 2, json!({})),
    )
    .await;
    eventually("the second event waits behind the dead one", || async {
        handler_gauges(&metrics_text(&app).await, handler) == (0.0, 1.0, 1.0)
    })
    .await;
    let scrapes = Scrapes {
        before: before.clone(),
        after: metrics_text(&app).await,
    };
    assert_eq!(attempts(&scrapes, "retry"), 1.0);
    assert_eq!(attempts(&scrapes, "dead"), 1.0);
    assert_eq!(attempts(&scrapes, "delivered"), 0.0);
    assert_eq!(target.requests.load(Ordering::SeqCst), 2);

    // Once the target recovers and the dead event is redriven, both go through, in order.
    target.failing.store(false, Ordering::SeqCst);
    let response = app.api_post(&format!("/handlers/{handler}/redrive")).await;
    assert_eq!(response.status(), 200);
    eventually("nothing is owed any more", || async {
        handler_gauges(&metrics_text(&app).await, handler) == (0.0, 0.0, 0.0)
    })
    .await;
    let scrapes = Scrapes {
        before,
        after: metrics_text(&app).await,
    };
    assert_eq!(attempts(&scrapes, "delivered"), 2.0);
    assert_eq!(attempts(&scrapes, "retry"), 1.0);
    assert_eq!(attempts(&scrapes, "dead"), 1.0);
    assert_eq!(target.requests.load(Ordering::SeqCst), 4);
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
