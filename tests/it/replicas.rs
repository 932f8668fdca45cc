//! Several daemons on one PostgreSQL database: every rule holds across them, whichever daemon
//! each delivery reaches. Histories shuffled over three daemons converge to the in-order
//! projection; a race of one customer's revisions ends at the highest; a daemon killed under
//! load loses nothing any daemon acknowledged; handlers on two daemons deliver every event in
//! order per customer; and the database going away and coming back is survived without a
//! restart.

use crate::common::cluster::{Cluster, api_get};
use crate::common::postgres::{LocalServer, fresh_database};
use crate::common::{self, *};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long the cluster may take to settle before a test fails.
const SETTLE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Histories
// ---------------------------------------------------------------------------------------------

/// A history Rebilly could send: customers updated revision after revision (with gaps), one
/// customer merged into another in the middle, unrevisioned records, in the order it happened.
fn history() -> Vec<Vec<u8>> {
    let mut events = Vec::new();
    for revision in 1..=9i64 {
        for customer in 0..6 {
            // Gaps: not every revision of every customer is ever sent.
            if (revision + customer) % 4 == 0 {
                continue;
            }
            let id = format!("cus_rep_{customer}");
            let kind = if revision == 1 {
                "customer-created"
            } else {
                "customer-updated"
            };
            events.push(customer_event(kind, &id, revision, json!({})));
        }
        if revision == 5 {
            events.push(merge_event("cus_rep_4", Some(6), "cus_rep_5", 5));
        }
    }
    events.push(unrevisioned_event(
        "customer-created",
        "cus_rep_old",
        Some("2020-01-01T00:00:00Z"),
        json!({}),
    ));
    events.push(unrevisioned_event(
        "customer-updated",
        "cus_rep_old",
        Some("2021-01-01T00:00:00Z"),
        json!({"lastName": "Newer"}),
    ));
    events
}

/// The ids the history speaks of.
fn history_customers() -> Vec<String> {
    let mut ids: Vec<String> = (0..6).map(|c| format!("cus_rep_{c}")).collect();
    ids.push("cus_rep_old".into());
    ids
}

/// Every delivery once or more (a redelivery is the same bytes), in a seeded random order.
fn shuffled_with_redeliveries(events: &[Vec<u8>], seed: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut deliveries = Vec::new();
    for body in events {
        for _ in 0..rng.usize(1..=3) {
            deliveries.push(body.clone());
        }
    }
    rng.shuffle(&mut deliveries);
    deliveries
}

/// The projection one daemon on its own builds from the history delivered in order.
async fn in_order_projection(events: &[Vec<u8>]) -> BTreeMap<String, Value> {
    let app = common::spawn_app().await;
    for body in events {
        app.deliver_ok(body.clone()).await;
    }
    let mut projection = BTreeMap::new();
    for id in history_customers() {
        projection.insert(id.clone(), app.customer(&id).await);
    }
    projection
}

/// Delivers every body to the cluster from `lanes` concurrent clients, round robin over the
/// daemons; every answer must be 200.
async fn deliver_concurrently(cluster: &Arc<Cluster>, deliveries: Vec<Vec<u8>>, lanes: usize) {
    let deliveries = Arc::new(deliveries);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..lanes {
        let (cluster, deliveries, next) = (cluster.clone(), deliveries.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = deliveries.get(n) else {
                    return;
                };
                let response = cluster
                    .deliver_to(n, body.clone())
                    .await
                    .expect("the daemon answers");
                assert_eq!(
                    response.status(),
                    200,
                    "delivery {n}: {}",
                    response.text().await.unwrap_or_default()
                );
            }
        }));
    }
    for task in tasks {
        task.await.expect("a delivering client");
    }
}

// ---------------------------------------------------------------------------------------------
// Ingest across daemons
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_concurrent_redelivered_histories_across_three_daemons_converge_to_the_in_order_projection()
 {
    let Some(url) = fresh_database().await else {
        return;
    };
    let events = history();
    let expected = in_order_projection(&events).await;
    let cluster = Arc::new(Cluster::start(&url, 3, "").await);

    for seed in [7, 1_000_003] {
        deliver_concurrently(&cluster, shuffled_with_redeliveries(&events, seed), 12).await;
        for daemon in 0..cluster.daemons.len() {
            for (id, want) in &expected {
                let got = cluster.customer(daemon, id).await;
                assert_eq!(
                    got.as_ref(),
                    Some(want),
                    "customer {id} as daemon {daemon} serves it (seed {seed})"
                );
            }
        }
    }
    // The merged-away customer is gone from the list on every daemon; the rest are there.
    for daemon in 0..cluster.daemons.len() {
        let listed: Vec<String> = cluster
            .all_customers(daemon)
            .await
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = expected
            .iter()
            .filter(|(_, c)| c["mergedInto"].is_null())
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(listed, want, "the list daemon {daemon} serves");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_simultaneous_revisions_of_one_customer_across_daemons_end_at_the_highest() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let cluster = Arc::new(Cluster::start(&url, 3, "").await);
    let start = Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for revision in 1..=50i64 {
        let (cluster, start) = (cluster.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            let body = customer_event("customer-updated", "cus_race", revision, json!({}));
            start.wait().await;
            let response = cluster
                .deliver_to(revision as usize, body)
                .await
                .expect("the daemon answers");
            assert_eq!(response.status(), 200, "revision {revision}");
            let answer: Value = response.json().await.unwrap();
            (revision, answer["status"].as_str().unwrap().to_owned())
        }));
    }
    let mut statuses = BTreeMap::new();
    for task in tasks {
        let (revision, status) = task.await.unwrap();
        statuses.insert(revision, status);
    }
    assert_eq!(
        statuses[&50], "applied",
        "the highest revision can never be stale"
    );
    assert!(
        statuses.values().all(|s| s == "applied" || s == "stale"),
        "{statuses:?}"
    );
    for daemon in 0..cluster.daemons.len() {
        let customer = cluster.customer(daemon, "cus_race").await.unwrap();
        assert_eq!(customer["revision"], 50, "as daemon {daemon} serves it");
        assert_eq!(customer["lastName"], "Customer 50");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_daemon_under_load_loses_nothing_any_daemon_acknowledged() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let cluster = Arc::new(Cluster::start(&url, 3, "").await);
    let victim = cluster.daemons[0].pid();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, i64, i64)>::new()));

    let mut lanes = Vec::new();
    for lane in 0..9usize {
        let (cluster, stop, acknowledged) = (cluster.clone(), stop.clone(), acknowledged.clone());
        lanes.push(tokio::spawn(async move {
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("cus_load_{lane}_{n}");
                let revision = 1 + n % 3;
                let body = customer_event("customer-updated", &id, revision, json!({}));
                // A delivery cut off by the kill is not acknowledged: Rebilly would retry it.
                let Ok(response) = cluster.deliver_to(lane, body).await else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                if response.status() == 200
                    && let Ok(answer) = response.json::<Value>().await
                {
                    let event = answer["eventId"].as_i64().unwrap();
                    acknowledged.lock().unwrap().push((id, revision, event));
                }
            }
        }));
    }
    // Let load build up on every daemon, then kill one of them mid-flight.
    eventually_within(SETTLE, "deliveries are acknowledged", || async {
        acknowledged.lock().unwrap().len() >= 60
    })
    .await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let at_kill = acknowledged.lock().unwrap().len();
    eventually_within(SETTLE, "the survivors keep acknowledging", || async {
        acknowledged.lock().unwrap().len() >= at_kill + 60
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for lane in lanes {
        lane.await.expect("a delivering client");
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    // Daemon 1 survived; it serves what every daemon acknowledged, the killed one included.
    let survivor = &cluster.daemons[1];
    for (id, revision, event) in &acknowledged {
        let customer = api_get(&cluster.client, survivor, &format!("/customers/{id}"))
            .await
            .unwrap_or_else(|| panic!("acknowledged customer {id} is lost"));
        assert_eq!(&customer["revision"], &json!(revision), "{id}");
        let detail = api_get(&cluster.client, survivor, &format!("/events/{event}")).await;
        assert!(detail.is_some(), "acknowledged event {event} is lost");
    }
    // A daemon started again on the same database serves them too.
    let again = Cluster::start(&url, 1, "").await;
    for (id, revision, _) in acknowledged.iter().step_by(7) {
        let customer = again.customer(0, id).await.expect("still there");
        assert_eq!(&customer["revision"], &json!(revision));
    }
}

// ---------------------------------------------------------------------------------------------
// Handlers across daemons
// ---------------------------------------------------------------------------------------------

/// A forward target that records what it accepts and how many requests for one customer were
/// in flight at once.
#[derive(Default)]
struct Recorder {
    accepted: Mutex<Vec<(String, i64, i64)>>,
    in_flight: Mutex<HashMap<String, usize>>,
    overlaps: AtomicUsize,
    requests: AtomicUsize,
    /// While set, requests get no answer: the sender stays mid-attempt.
    hold: AtomicBool,
    /// Requests that were held.
    held: AtomicUsize,
}

async fn record(
    State(recorder): State<Arc<Recorder>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let customer = json["customerId"].as_str().unwrap_or("").to_owned();
    let revision = json["_embedded"]["customer"]["revision"]
        .as_i64()
        .unwrap_or(-1);
    let event: i64 = headers
        .get("x-rebilly-webhookd-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1);
    let n = recorder.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut in_flight = recorder.in_flight.lock().unwrap();
        let count = in_flight.entry(customer.clone()).or_default();
        *count += 1;
        if *count > 1 {
            recorder.overlaps.fetch_add(1, Ordering::Relaxed);
        }
    }
    if recorder.hold.load(Ordering::Relaxed) {
        recorder.held.fetch_add(1, Ordering::Relaxed);
        while recorder.hold.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Long enough for another daemon to try the same customer meanwhile, were it allowed to.
    tokio::time::sleep(Duration::from_millis(15)).await;
    *recorder
        .in_flight
        .lock()
        .unwrap()
        .get_mut(&customer)
        .unwrap() -= 1;
    // Every fifth request fails: retries interleave with new work on the other daemon.
    if n % 5 == 4 {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    recorder
        .accepted
        .lock()
        .unwrap()
        .push((customer, revision, event));
    StatusCode::OK
}

/// A forward handler to `hook` that retries quickly and does not give up.
fn handler_table(hook: &str) -> String {
    format!(
        "[[handlers]]\nname = \"crm\"\nkind = \"forward\"\nurl = \"{hook}\"\n\
         max_attempts = 1000\nbackoff_initial_ms = 5\nbackoff_max_ms = 50\n"
    )
}

/// What the target accepted, by customer, in the order it accepted it.
fn received(recorder: &Recorder) -> BTreeMap<String, Vec<i64>> {
    let mut by_customer: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (customer, revision, _) in recorder.accepted.lock().unwrap().iter() {
        by_customer
            .entry(customer.clone())
            .or_default()
            .push(*revision);
    }
    by_customer
}

/// Whether the target accepted every revision `expected` lists.
fn received_all(recorder: &Recorder, expected: &BTreeMap<String, Vec<i64>>) -> bool {
    let got = received(recorder);
    expected.iter().all(|(id, revisions)| {
        let seen: HashSet<&i64> = got.get(id).map(|r| r.iter().collect()).unwrap_or_default();
        revisions.iter().all(|r| seen.contains(r))
    })
}

async fn start_recorder() -> (Arc<Recorder>, String) {
    let recorder = Arc::new(Recorder::default());
    let app = Router::new()
        .route("/hook", post(record))
        .with_state(recorder.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (recorder, format!("http://{address}/hook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_on_two_daemons_deliver_every_event_in_order_per_customer() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let (recorder, hook) = start_recorder().await;
    let handler = handler_table(&hook);
    let cluster = Arc::new(Cluster::start(&url, 2, &handler).await);

    // Each customer's revisions in order, alternating daemons; customers interleaved.
    let customers: Vec<String> = (0..8).map(|c| format!("cus_fwd_{c}")).collect();
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut tasks = Vec::new();
    for (c, id) in customers.iter().enumerate() {
        let (cluster, id) = (cluster.clone(), id.clone());
        let revisions: Vec<i64> = (1..=12).map(|r| r * 2 + (c as i64 % 2)).collect();
        expected.insert(id.clone(), revisions.clone());
        tasks.push(tokio::spawn(async move {
            for (n, revision) in revisions.into_iter().enumerate() {
                let body = customer_event("customer-updated", &id, revision, json!({}));
                let response = cluster.deliver_to(n + c, body).await.unwrap();
                assert_eq!(response.status(), 200);
                let answer: Value = response.json().await.unwrap();
                assert_eq!(answer["status"], "applied", "{id} revision {revision}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    eventually_within(SETTLE, "every event reaches the target", || async {
        received_all(&recorder, &expected)
    })
    .await;
    // In revision order per customer. At least once: a repeat is allowed only right after the
    // same event (an answer lost in a crash); nothing crashes here, so none is expected.
    assert_eq!(received(&recorder), expected, "what the target accepted");
    assert_eq!(
        recorder.overlaps.load(Ordering::Relaxed),
        0,
        "two daemons worked on one customer's events at the same time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_attempt_does_not_strand_its_events() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let (recorder, hook) = start_recorder().await;
    recorder.hold.store(true, Ordering::Relaxed);
    let handler = handler_table(&hook);
    let first = Cluster::start(&url, 1, &handler).await;
    let mut expected: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for revision in 1..=4i64 {
        for c in 0..3 {
            let id = format!("cus_strand_{c}");
            let body = customer_event("customer-updated", &id, revision, json!({}));
            let response = first.deliver_to(0, body).await.unwrap();
            assert_eq!(response.status(), 200);
            expected.entry(id).or_default().push(revision);
        }
    }
    eventually_within(SETTLE, "the first daemon is mid-attempt", || async {
        recorder.held.load(Ordering::Relaxed) >= 1
    })
    .await;

    let second = Cluster::start(&url, 1, &handler).await;
    let killed = std::process::Command::new("kill")
        .args(["-9", &first.daemons[0].pid().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    recorder.hold.store(false, Ordering::Relaxed);

    // The survivor takes the handler over once the dead daemon's lease runs out.
    eventually_within(SETTLE, "every event reaches the target", || async {
        received_all(&recorder, &expected)
    })
    .await;
    // At least once, in order: an event may come again only right after itself.
    let mut got = received(&recorder);
    for revisions in got.values_mut() {
        revisions.dedup();
    }
    assert_eq!(got, expected, "what the target accepted");
    drop(second);
}

// ---------------------------------------------------------------------------------------------
// The database going away
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_going_away_answers_503_with_retry_after_and_recovers_without_a_restart() {
    let Some(server) = tokio::task::spawn_blocking(LocalServer::private)
        .await
        .unwrap()
    else {
        return;
    };
    let server = Arc::new(server);
    let url = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.fresh_database_url())
            .await
            .unwrap()
    };
    let cluster = Arc::new(Cluster::start(&url, 2, "").await);

    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let mut lanes = Vec::new();
    for lane in 0..4usize {
        let (cluster, stop, acknowledged, unavailable) = (
            cluster.clone(),
            stop.clone(),
            acknowledged.clone(),
            unavailable.clone(),
        );
        lanes.push(tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("cus_outage_{lane}_{n}");
                let body = customer_event("customer-created", &id, 1, json!({}));
                let response = cluster
                    .deliver_to(lane + n, body)
                    .await
                    .expect("the daemon stays up while its database is away");
                match response.status().as_u16() {
                    200 => acknowledged.lock().unwrap().push(id),
                    503 => {
                        let retry_after = response
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        assert!(retry_after.is_some(), "a 503 says when to retry");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => panic!(
                        "while the database is away: {other} {}",
                        response.text().await.unwrap_or_default()
                    ),
                }
            }
        }));
    }

    eventually_within(SETTLE, "deliveries flow", || async {
        acknowledged.lock().unwrap().len() >= 20
    })
    .await;
    {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .unwrap();
    }
    eventually_within(SETTLE, "deliveries are refused with 503", || async {
        unavailable.load(Ordering::Relaxed) >= 10
    })
    .await;
    let readiness = |cluster: Arc<Cluster>| async move {
        let mut statuses = Vec::new();
        for daemon in &cluster.daemons {
            let response = cluster.client.get(daemon.url("/readyz")).send().await;
            statuses.push(response.map(|r| r.status().as_u16()).unwrap_or(0));
        }
        statuses
    };
    eventually_within(SETTLE, "no daemon says it is ready", || {
        let cluster = cluster.clone();
        async move { readiness(cluster).await.iter().all(|s| *s == 503) }
    })
    .await;
    let during_outage = acknowledged.lock().unwrap().len();
    {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.restart())
            .await
            .unwrap();
    }
    eventually_within(
        SETTLE,
        "deliveries flow again without a restart",
        || async { acknowledged.lock().unwrap().len() >= during_outage + 20 },
    )
    .await;
    eventually_within(SETTLE, "every daemon is ready again", || {
        let cluster = cluster.clone();
        async move { readiness(cluster).await.iter().all(|s| *s == 200) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for lane in lanes {
        lane.await.expect("a delivering client");
    }

    let acknowledged = acknowledged.lock().unwrap().clone();
    for (n, id) in acknowledged.iter().enumerate() {
        let customer = cluster.customer(n, id).await;
        assert!(customer.is_some(), "acknowledged customer {id} is lost");
    }
}
