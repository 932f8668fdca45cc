//! Asynchronous handlers: forwarding, retries, dead events and redrive, order per customer.

use crate::common::{self, *};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FWD_USER: &str = "fwd";
const FWD_PASSWORD: &str = "fwd-secret";

// ---------------------------------------------------------------------------------------------
// A local forward target that records every request and fails by a programmable rule.
// ---------------------------------------------------------------------------------------------

/// One request the target received.
#[derive(Debug, Clone)]
struct Received {
    body: Vec<u8>,
    authorization: Option<String>,
    event_id: Option<i64>,
    customer: Option<String>,
    revision: Option<i64>,
    /// What the projection held for the customer, as the daemon says.
    projected_revision: Option<i64>,
    /// Whether the target answered 2xx.
    accepted: bool,
}

#[derive(Default)]
struct Rules {
    /// Fail this many more requests, whatever they carry.
    fail_next: usize,
    /// Fail every request while set.
    fail_all: bool,
    /// Fail every request for these customers.
    fail_customers: HashSet<String>,
    /// Fail at random with this probability, from a seeded generator.
    random: Option<(fastrand::Rng, f64)>,
}

struct TargetState {
    requests: Mutex<Vec<Received>>,
    rules: Mutex<Rules>,
}

#[derive(Clone)]
struct Target {
    url: String,
    state: Arc<TargetState>,
}

impl Target {
    async fn start() -> Target {
        let state = Arc::new(TargetState {
            requests: Mutex::new(Vec::new()),
            rules: Mutex::new(Rules::default()),
        });
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the target");
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("target serves");
        });
        Target {
            url: format!("http://{address}/hook"),
            state,
        }
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.state.rules.lock().unwrap()
    }

    fn requests(&self) -> Vec<Received> {
        self.state.requests.lock().unwrap().clone()
    }

    fn accepted(&self) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.accepted).collect()
    }

    fn attempts_for(&self, event_id: i64) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.event_id == Some(event_id))
            .collect()
    }

    fn was_accepted(&self, event_id: i64) -> bool {
        self.attempts_for(event_id).iter().any(|r| r.accepted)
    }

    /// The `[[handlers]]` table of a forward handler to this target.
    fn handler_toml(&self, name: &str, max_attempts: u32, initial_ms: u64, max_ms: u64) -> String {
        format!(
            r#"
[[handlers]]
name = "{name}"
kind = "forward"
url = "{url}"
basic = {{ username = "{FWD_USER}", password = "{FWD_PASSWORD}" }}
max_attempts = {max_attempts}
backoff_initial_ms = {initial_ms}
backoff_max_ms = {max_ms}
"#,
            url = self.url
        )
    }
}

async fn hook(
    State(state): State<Arc<TargetState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let customer = json["customerId"]
        .as_str()
        .or(json["targetCustomerId"].as_str())
        .map(str::to_owned);
    let revision = json["_embedded"]["customer"]["revision"]
        .as_i64()
        .or(json["_embedded"]["targetCustomer"]["revision"].as_i64());
    let fail = {
        let mut rules = state.rules.lock().unwrap();
        let mut fail = rules.fail_all;
        if rules.fail_next > 0 {
            rules.fail_next -= 1;
            fail = true;
        }
        if customer
            .as_ref()
            .is_some_and(|c| rules.fail_customers.contains(c))
        {
            fail = true;
        }
        if let Some((rng, rate)) = &mut rules.random
            && rng.f64() < *rate
        {
            fail = true;
        }
        fail
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    state.requests.lock().unwrap().push(Received {
        body: body.to_vec(),
        authorization: header("authorization"),
        event_id: header("x-rebilly-webhookd-event-id").and_then(|v| v.parse().ok()),
        customer,
        revision,
        projected_revision: header("x-rebilly-webhookd-projected-revision")
            .and_then(|v| v.parse().ok()),
        accepted: !fail,
    });
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

// ---------------------------------------------------------------------------------------------
// Polling helpers: bounded waits, never a fixed long sleep.
// ---------------------------------------------------------------------------------------------

/// The `handlers` entry of `handler` for event `id`, if the event is owed to it.
async fn handler_entry(app: &TestApp, id: i64, handler: &str) -> Option<Value> {
    event_detail(app, id).await["handlers"]
        .as_array()
        .expect("handlers is an array")
        .iter()
        .find(|h| h["handler"] == handler)
        .cloned()
}
// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn forwards_applied_events_verbatim_with_credentials_and_nothing_else() {
    let target = Target::start().await;
    let app = common::spawn_app_with(&target.handler_toml("crm", 3, 20, 100)).await;

    let created = customer_event("customer-created", "cus_fwd_a", 1, json!({}));
    let updated = customer_event("customer-updated", "cus_fwd_a", 3, json!({"city": "Nice"}));
    let stale = customer_event("customer-updated", "cus_fwd_a", 2, json!({}));
    let ignored = common::fixture("deliveries/10-invoice-paid.json");
    let rejected = common::fixture("rejected/created-missing-customer-id.json");
    let other = customer_event("customer-created", "cus_fwd_b", 7, json!({}));

    let first = deliver_applied(&app, &created).await;
    let (duplicate_id, status) = app.deliver_ok(created.clone()).await;
    assert_eq!(status, "duplicate");
    let second = deliver_applied(&app, &updated).await;
    let (stale_id, status) = app.deliver_ok(stale).await;
    assert_eq!(status, "stale");
    let (ignored_id, status) = app.deliver_ok(ignored).await;
    assert_eq!(status, "ignored");
    let response = app.deliver(rejected).await;
    assert_eq!(response.status(), 422);
    // The same customer and revision under another body is a semantic duplicate.
    let (semantic_id, status) = app
        .deliver_ok(customer_event(
            "customer-updated",
            "cus_fwd_a",
            3,
            json!({"note": "again"}),
        ))
        .await;
    assert_eq!(status, "duplicate");
    // The last event is a marker: events are dispatched in log order, so once it has arrived,
    // every earlier one has been considered.
    let marker = deliver_applied(&app, &other).await;

    eventually("the marker event is forwarded", || async {
        target.was_accepted(marker)
    })
    .await;

    let requests = target.requests();
    let ids: Vec<i64> = requests.iter().map(|r| r.event_id.unwrap()).collect();
    assert_eq!(ids, vec![first, second, marker], "only applied events");
    for never in [duplicate_id, stale_id, ignored_id, semantic_id] {
        assert!(!ids.contains(&never), "event {never} must not be forwarded");
    }
    let expected_auth = common::basic_value(FWD_USER, FWD_PASSWORD);
    for (request, body) in requests.iter().zip([&created, &updated, &other]) {
        assert_eq!(
            &request.body, body,
            "the raw body is forwarded byte for byte"
        );
        assert_eq!(
            request.authorization.as_deref(),
            Some(expected_auth.as_str())
        );
        assert!(request.accepted);
    }
    // Nothing is owed once delivered.
    for id in [first, second, marker] {
        eventually("the delivered event owes nothing", || async {
            handler_entry(&app, id, "crm").await.is_none()
        })
        .await;
    }
}
}

backends! {
#[tokio::test]
async fn a_failing_target_is_retried_until_it_accepts() {
    let target = Target::start().await;
    target.rules().fail_next = 2;
    let app = common::spawn_app_with(&target.handler_toml("crm", 5, 20, 100)).await;

    let body = customer_event("customer-created", "cus_retry", 1, json!({}));
    let id = deliver_applied(&app, &body).await;

    eventually("the event is accepted by the target", || async {
        target.was_accepted(id)
    })
    .await;
    let attempts = target.attempts_for(id);
    assert_eq!(
        attempts.len(),
        3,
        "two failures, then success: {attempts:?}"
    );
    assert!(!attempts[0].accepted && !attempts[1].accepted && attempts[2].accepted);
    assert!(attempts.iter().all(|a| a.body == body));

    eventually("no handler state is left for the event", || async {
        event_detail(&app, id).await["handlers"] == json!([])
    })
    .await;
    // Delivered means delivered: no further attempt follows.
    let other = deliver_applied(
        &app,
        &customer_event("customer-created", "cus_retry_2", 1, json!({})),
    )
    .await;
    eventually("a later event is forwarded", || async {
        target.was_accepted(other)
    })
    .await;
    assert_eq!(target.attempts_for(id).len(), 3);
}
}

backends! {
#[tokio::test]
async fn a_dead_event_holds_its_customer_back_until_redriven() {
    let target = Target::start().await;
    target.rules().fail_customers.insert("cus_dead".into());
    let app = common::spawn_app_with(&target.handler_toml("crm", 3, 20, 100)).await;

    let dead_body = customer_event("customer-created", "cus_dead", 1, json!({}));
    let dead = deliver_applied(&app, &dead_body).await;

    eventually("the event is marked dead", || async {
        handler_entry(&app, dead, "crm")
            .await
            .is_some_and(|h| h["state"] == "dead")
    })
    .await;
    let entry = handler_entry(&app, dead, "crm").await.unwrap();
    assert_eq!(entry["attempts"], 3, "{entry}");
    let error = entry["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("500"), "lastError names the status: {entry}");
    assert!(entry["nextAttemptTime"].is_null(), "{entry}");
    assert_eq!(
        target.attempts_for(dead).len(),
        3,
        "exactly max_attempts tries"
    );

    // The customer's next event waits behind the dead one; other customers go ahead.
    let held_body = customer_event("customer-updated", "cus_dead", 2, json!({}));
    let held = deliver_applied(&app, &held_body).await;
    let mut others = Vec::new();
    for revision in 1..=3 {
        let body = customer_event("customer-updated", "cus_alive", revision, json!({}));
        others.push(deliver_applied(&app, &body).await);
    }
    eventually("the other customer's events are forwarded", || async {
        others.iter().all(|id| target.was_accepted(*id))
    })
    .await;
    assert!(
        target.attempts_for(held).is_empty(),
        "the held-back event must not be attempted"
    );
    let held_entry = handler_entry(&app, held, "crm")
        .await
        .expect("the held-back event is owed");
    assert_eq!(held_entry["state"], "pending", "{held_entry}");
    assert_eq!(
        handler_entry(&app, dead, "crm").await.unwrap()["state"],
        "dead"
    );

    // Unknown handlers and missing tokens are refused.
    let response = app.api_post("/handlers/unknown/redrive").await;
    assert_eq!(response.status(), 404);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json")
    );
    let response = app
        .client
        .post(app.url("/handlers/crm/redrive"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        handler_entry(&app, dead, "crm").await.unwrap()["state"],
        "dead"
    );

    // Retention never takes the body of an event a handler still owes.
    let pruned = std::process::Command::new(env!("CARGO_BIN_EXE_rebilly-webhookd"))
        .args([
            "events",
            "prune",
            "--older-than-days",
            "0",
            "--yes",
            "--config",
        ])
        .arg(&app.config_path)
        .output()
        .unwrap();
    assert!(pruned.status.success(), "{pruned:?}");
    for (id, owed) in [(dead, true), (held, true), (others[0], false)] {
        let detail: Value = app
            .api_get(&format!("/events/{id}"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(detail["body"].is_string(), owed, "event {id}: {detail}");
    }

    // The target recovers; the operator redrives.
    target.rules().fail_customers.clear();
    let response = app.api_post("/handlers/crm/redrive").await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer, json!({"handler": "crm", "redriven": 1}));

    eventually("the held-back event arrives after the redrive", || async {
        target.was_accepted(held)
    })
    .await;
    let accepted: Vec<Received> = target
        .accepted()
        .into_iter()
        .filter(|r| r.customer.as_deref() == Some("cus_dead"))
        .collect();
    let order: Vec<(i64, i64)> = accepted
        .iter()
        .map(|r| (r.event_id.unwrap(), r.revision.unwrap()))
        .collect();
    assert_eq!(order, vec![(dead, 1), (held, 2)], "in revision order");
    assert_eq!(accepted[0].body, dead_body);
    assert_eq!(accepted[1].body, held_body);
    for id in [dead, held] {
        eventually("nothing is owed after the redrive", || async {
            handler_entry(&app, id, "crm").await.is_none()
        })
        .await;
    }
    // Nothing dead is left to redrive.
    let answer: Value = app
        .api_post("/handlers/crm/redrive")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer, json!({"handler": "crm", "redriven": 0}));
}
}

backends! {
#[tokio::test]
async fn the_command_line_redrives_a_dead_event_of_a_running_daemon() {
    let target = Target::start().await;
    target.rules().fail_all = true;
    let app = common::spawn_app_with(&target.handler_toml("crm", 2, 20, 40)).await;

    let id = deliver_applied(
        &app,
        &customer_event("customer-created", "cus_cli_dead", 1, json!({})),
    )
    .await;
    eventually("the event is marked dead", || async {
        handler_entry(&app, id, "crm")
            .await
            .is_some_and(|h| h["state"] == "dead")
    })
    .await;
    target.rules().fail_all = false;

    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rebilly-webhookd"))
            .args(args)
            .arg("--config")
            .arg(&app.config_path)
            .output()
            .expect("the binary runs")
    };
    let unknown = run(&["handlers", "redrive", "nope"]);
    assert!(!unknown.status.success(), "an unknown handler is an error");
    let output = run(&["handlers", "redrive", "crm"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(answer, json!({"handler": "crm", "redriven": 1}));

    // The running daemon notices the redrive made by another process.
    eventually("the redriven event is delivered", || async {
        target.was_accepted(id)
    })
    .await;
    eventually("nothing is owed after the redrive", || async {
        handler_entry(&app, id, "crm").await.is_none()
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn one_customers_revisions_arrive_in_order_despite_random_failures() {
    let target = Target::start().await;
    target.rules().random = Some((fastrand::Rng::with_seed(0x5eed_0f0d), 0.3));
    let app = common::spawn_app_with(&target.handler_toml("crm", 1000, 2, 10)).await;

    // Revisions arrive mostly in order, with a few late ones (stale, not forwarded) and a
    // second customer interleaved.
    let mut expected_a = Vec::new();
    let mut expected_b = Vec::new();
    for revision in 1..=24i64 {
        let a = customer_event("customer-updated", "cus_order_a", revision, json!({}));
        app.deliver_ok(a).await;
        expected_a.push(revision);
        if revision % 5 == 0 {
            let again = customer_event("customer-updated", "cus_order_a", revision - 2, json!({}));
            let (_, status) = app.deliver_ok(again).await;
            assert_eq!(status, "duplicate", "a redelivery is a duplicate");
            let late = customer_event("customer-created", "cus_order_a", revision - 2, json!({}));
            let (_, status) = app.deliver_ok(late).await;
            assert_eq!(status, "stale", "a late revision is stale");
        }
        if revision % 2 == 0 {
            let b = customer_event("customer-updated", "cus_order_b", revision, json!({}));
            deliver_applied(&app, &b).await;
            expected_b.push(revision);
        }
    }

    let received = |customer: &str| -> Vec<i64> {
        target
            .accepted()
            .into_iter()
            .filter(|r| r.customer.as_deref() == Some(customer))
            .map(|r| r.revision.unwrap())
            .collect()
    };
    eventually_within(
        Duration::from_secs(30),
        "every revision of both customers is received",
        || async {
            let a: HashSet<i64> = received("cus_order_a").into_iter().collect();
            let b: HashSet<i64> = received("cus_order_b").into_iter().collect();
            expected_a.iter().all(|r| a.contains(r)) && expected_b.iter().all(|r| b.contains(r))
        },
    )
    .await;
    let failures = target.requests().iter().filter(|r| !r.accepted).count();
    assert!(failures > 0, "the target did fail sometimes");
    // The exact sequence: every applied revision once, in revision order. Stale and duplicate
    // events are never forwarded. Delivery is at-least-once only across a crash between the
    // target's answer and its record; nothing crashes here, so no event may come twice.
    assert_eq!(
        received("cus_order_a"),
        expected_a,
        "cus_order_a as received"
    );
    assert_eq!(
        received("cus_order_b"),
        expected_b,
        "cus_order_b as received"
    );
    assert_each_event_accepted_once(&target);
}
}

/// No event was accepted twice by the target.
fn assert_each_event_accepted_once(target: &Target) {
    let mut ids: Vec<i64> = target
        .accepted()
        .iter()
        .map(|r| r.event_id.expect("the event id header"))
        .collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        count,
        "an event was forwarded twice: {:?}",
        target.accepted()
    );
}

backends! {
#[tokio::test]
async fn a_log_handler_next_to_a_forward_handler_does_not_disturb_it() {
    let target = Target::start().await;
    target.rules().fail_next = 1;
    let log_handler = r#"
[[handlers]]
name = "audit_log_next_to_forward"
kind = "log"
"#;
    let config = format!(
        "{}\n{log_handler}",
        target.handler_toml("crm_next_to_log", 5, 20, 100)
    );
    let app = common::spawn_app_with(&config).await;
    let before = metrics_text(&app).await;
    let delivered_before = common::metric_value(
        &before,
        "rebilly_webhookd_handler_attempts_total",
        &[
            ("handler", "audit_log_next_to_forward"),
            ("result", "delivered"),
        ],
    );

    let mut ids = Vec::new();
    for (customer, revision) in [("cus_log_a", 1), ("cus_log_b", 1), ("cus_log_a", 2)] {
        let body = customer_event("customer-updated", customer, revision, json!({}));
        ids.push(deliver_applied(&app, &body).await);
    }
    eventually("every event is forwarded", || async {
        ids.iter().all(|id| target.was_accepted(*id))
    })
    .await;
    // The first request failed and was retried: the other customer may go first, but each
    // event is accepted once and one customer's events keep their order.
    let mut accepted: Vec<i64> = target
        .accepted()
        .iter()
        .map(|r| r.event_id.unwrap())
        .collect();
    let position = |id: i64| accepted.iter().position(|a| *a == id).unwrap();
    assert!(position(ids[0]) < position(ids[2]), "{accepted:?}");
    accepted.sort_unstable();
    assert_eq!(accepted, ids, "each event accepted exactly once");
    for &id in &ids {
        eventually("neither handler owes anything", || async {
            event_detail(&app, id).await["handlers"] == json!([])
        })
        .await;
    }
    eventually("the log handler handled every event", || async {
        let text = metrics_text(&app).await;
        let delivered = common::metric_value(
            &text,
            "rebilly_webhookd_handler_attempts_total",
            &[
                ("handler", "audit_log_next_to_forward"),
                ("result", "delivered"),
            ],
        );
        delivered - delivered_before >= ids.len() as f64
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn handler_state_survives_a_restart() {
    let target = Target::start().await;
    target.rules().fail_all = true;
    let app = common::spawn_app_with(&target.handler_toml("crm", 1000, 20, 50)).await;

    let mut ids = Vec::new();
    for (customer, revision) in [
        ("cus_restart_a", 1),
        ("cus_restart_b", 1),
        ("cus_restart_a", 2),
    ] {
        let body = customer_event("customer-updated", customer, revision, json!({}));
        ids.push(deliver_applied(&app, &body).await);
    }
    eventually("the first events have been attempted", || async {
        target.attempts_for(ids[0]).len() >= 2 && !target.attempts_for(ids[1]).is_empty()
    })
    .await;
    assert!(target.accepted().is_empty());

    let app = app.restart().await;
    // One more event applied right before the target recovers.
    let late = deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_restart_b", 2, json!({})),
    )
    .await;
    ids.push(late);
    target.rules().fail_all = false;

    eventually(
        "every event applied before the restart is delivered",
        || async { ids.iter().all(|id| target.was_accepted(*id)) },
    )
    .await;
    // The exact sequence per customer. The target accepted nothing before the (graceful)
    // restart, so no event can have been forwarded twice.
    for customer in ["cus_restart_a", "cus_restart_b"] {
        let revisions: Vec<i64> = target
            .accepted()
            .into_iter()
            .filter(|r| r.customer.as_deref() == Some(customer))
            .map(|r| r.revision.unwrap())
            .collect();
        assert_eq!(revisions, [1, 2], "{customer} as received");
    }
    assert_each_event_accepted_once(&target);
    for &id in &ids {
        eventually("nothing is owed after delivery", || async {
            handler_entry(&app, id, "crm").await.is_none()
        })
        .await;
    }
}
}

// ---------------------------------------------------------------------------------------------
// Where a handler starts, pruned bodies, and order across the customers an event touches
// ---------------------------------------------------------------------------------------------

/// Adds `table` to the configuration file of `app`, for its next start.
fn add_to_config(app: &TestApp, table: &str) {
    let config = std::fs::read_to_string(&app.config_path).unwrap();
    std::fs::write(&app.config_path, format!("{config}\n{table}")).unwrap();
}

backends! {
#[tokio::test]
async fn a_handler_added_later_starts_after_the_newest_event() {
    let target = Target::start().await;
    let app = common::spawn_app().await;
    let mut before = Vec::new();
    for revision in 1..=3 {
        let body = customer_event("customer-updated", "cus_added_later", revision, json!({}));
        before.push(deliver_applied(&app, &body).await);
    }
    add_to_config(&app, &target.handler_toml("crm", 3, 20, 100));
    let app = app.restart().await;

    let after = deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_added_later", 4, json!({})),
    )
    .await;
    eventually("the event after the start is forwarded", || async {
        target.was_accepted(after)
    })
    .await;
    let forwarded: Vec<i64> = target
        .requests()
        .iter()
        .filter_map(|r| r.event_id)
        .collect();
    assert_eq!(
        forwarded,
        [after],
        "nothing from before the handler existed"
    );
    for id in before {
        assert_eq!(handler_entry(&app, id, "crm").await, None);
    }
}
}

backends! {
#[tokio::test]
async fn a_handler_from_the_beginning_skips_pruned_bodies_and_records_why() {
    let target = Target::start().await;
    let app = common::spawn_app().await;
    let superseded = deliver_applied(
        &app,
        &customer_event("customer-created", "cus_from_start", 1, json!({})),
    )
    .await;
    let current_body = customer_event("customer-updated", "cus_from_start", 2, json!({}));
    let current = deliver_applied(&app, &current_body).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let output = run_cli_async(
        &app.config_path,
        &["events", "prune", "--older-than-days", "0", "--yes"],
    )
    .await;
    assert_success(&output);
    assert!(event_detail(&app, superseded).await["body"].is_null());

    add_to_config(
        &app,
        &format!(
            "{}start = \"beginning\"\n",
            target.handler_toml("crm", 3, 20, 100)
        ),
    );
    let app = app.restart().await;
    eventually("the kept event is forwarded", || async {
        target.was_accepted(current)
    })
    .await;
    let requests = target.requests();
    assert!(
        requests.iter().all(|r| r.event_id != Some(superseded)),
        "a pruned body is never dispatched: {requests:?}"
    );
    assert!(requests.iter().all(|r| !r.body.is_empty()));
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body, current_body);
    let entry = handler_entry(&app, superseded, "crm").await.unwrap();
    assert_eq!(entry["state"], "skipped", "{entry}");
    assert!(
        entry["lastError"].as_str().unwrap().contains("pruned"),
        "{entry}"
    );
    assert_eq!(handler_entry(&app, current, "crm").await, None);
}
}

backends! {
#[tokio::test]
async fn a_merge_waits_for_an_undelivered_update_of_the_customer_merged_away() {
    let target = Target::start().await;
    target
        .rules()
        .fail_customers
        .insert("cus_merged_away".into());
    let app = common::spawn_app_with(&target.handler_toml("crm", 100, 20, 50)).await;

    let update = deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_merged_away", 3, json!({})),
    )
    .await;
    eventually("the update of the merged-away customer failed", || async {
        !target.attempts_for(update).is_empty()
    })
    .await;
    let merge = deliver_applied(
        &app,
        &merge_event("cus_merge_into", Some(2), "cus_merged_away", 4),
    )
    .await;
    // Events are considered in log order: once the marker is through, the merge was reached.
    let marker = deliver_applied(
        &app,
        &customer_event("customer-created", "cus_merge_marker", 1, json!({})),
    )
    .await;
    eventually("the marker is forwarded", || async {
        target.was_accepted(marker)
    })
    .await;
    assert!(
        target.attempts_for(merge).is_empty(),
        "the merge waits behind the undelivered update of the customer it merges away"
    );
    // The pass that forwarded the marker records the merge as owed once it ends.
    eventually("the merge is recorded as waiting", || async {
        handler_entry(&app, merge, "crm")
            .await
            .is_some_and(|entry| entry["state"] == "pending")
    })
    .await;

    target.rules().fail_customers.clear();
    eventually("the merge is forwarded", || async {
        target.was_accepted(merge)
    })
    .await;
    let accepted: Vec<i64> = target
        .accepted()
        .iter()
        .filter_map(|r| r.event_id)
        .collect();
    let position = |id| accepted.iter().position(|a| *a == id).unwrap();
    assert!(position(update) < position(merge), "{accepted:?}");
}
}

backends! {
#[tokio::test]
async fn handlers_are_told_what_revision_the_projection_holds() {
    let target = Target::start().await;
    let app = common::spawn_app_with(&target.handler_toml("crm", 3, 20, 100)).await;
    let current = deliver_applied(
        &app,
        &customer_event("customer-updated", "cus_projected", 5, json!({})),
    )
    .await;
    // An Experian check embedding an older revision: the check is new, the snapshot is not.
    let check = deliver_applied(
        &app,
        &experian_event("cus_projected", 3, 1, "match", "000", ""),
    )
    .await;
    eventually("both events are forwarded", || async {
        target.was_accepted(current) && target.was_accepted(check)
    })
    .await;
    let forwarded = target.attempts_for(check).remove(0);
    assert_eq!(
        forwarded.revision,
        Some(3),
        "the body is forwarded as received"
    );
    assert_eq!(forwarded.projected_revision, Some(5));
    assert_eq!(target.attempts_for(current)[0].projected_revision, Some(5));
}
}
