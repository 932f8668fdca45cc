//! Operations: readiness, request ids, inspection and replay, rebuild, pruning, SIGTERM,
//! healthcheck and logs.

use crate::common::{self, *};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

async fn customers_page(app: &TestApp) -> Value {
    let response = app.api_get("/customers?limit=1000").await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}
// ---------------------------------------------------------------------------------------------
// Health, readiness, request ids
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_whether_the_database_accepts_writes() {
    // Every probe reaches the database here; reusing answers is tested on its own.
    let app = common::spawn_app_with(&format!(
        "#replace{}",
        common::config_text(
            "127.0.0.1:0",
            std::path::Path::new("{db}"),
            "readiness_cache_ms = 0"
        )
    ))
    .await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz needs no token");
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "/readyz needs no token");

    // Another connection takes the write lock and holds it.
    let db = app.db_path.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
        conn.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv_timeout(Duration::from_secs(15)).unwrap();

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    let status = ready.status();
    assert!(is_problem(&ready));
    assert_eq!(status, 503, "a locked database is not ready");
    let health = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        health.status(),
        200,
        "liveness does not depend on the database"
    );

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "ready again once the lock is released");
}

backends! {
#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = common::spawn_app().await;
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");

    let response = app
        .api_get("/customers/nobody")
        .await
        .headers()
        .get("x-request-id")
        .cloned();
    let first = response.expect("a generated request id");
    assert!(!first.is_empty());
    let second = app.client.get(app.url("/healthz")).send().await.unwrap();
    let second = second.headers()["x-request-id"].clone();
    assert!(!second.is_empty());
    assert_ne!(first, second, "generated ids differ");
}
}

// ---------------------------------------------------------------------------------------------
// Event inspection and replay
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_can_be_inspected_and_replayed() {
    let app = common::spawn_app().await;
    let body = common::fixture("deliveries/01-customer-created-alice.json");
    let (applied, status) = app.deliver_ok(body.clone()).await;
    assert_eq!(status, "applied");
    let response = app
        .deliver(common::fixture(
            "rejected/updated-revision-not-integer.json",
        ))
        .await;
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    let rejected = problem["eventId"]
        .as_i64()
        .expect("the problem names the event");

    let detail = event_detail(&app, applied).await;
    assert_eq!(detail["id"], applied);
    assert_eq!(detail["eventType"], "customer-created");
    assert_eq!(detail["customerId"], "cus_alice_01");
    assert_eq!(detail["revision"], 1);
    assert_eq!(detail["status"], "applied");
    assert!(
        detail["receivedTime"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(detail["body"].as_str().unwrap().as_bytes(), body.as_slice());
    assert_eq!(detail["bodySize"], body.len());
    assert_eq!(detail["handlers"], json!([]));

    let detail = event_detail(&app, rejected).await;
    assert_eq!(detail["status"], "rejected");
    assert!(detail["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(detail["body"].as_str().is_some());

    let response = app.api_get("/events/987654").await;
    assert_eq!(response.status(), 404);
    assert!(is_problem(&response));
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["status"], 404);
    let response = app
        .client
        .get(app.url(&format!("/events/{applied}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401, "the event API needs the token");

    // Replays over HTTP.
    let response = app.api_post(&format!("/events/{applied}/replay")).await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["replayOf"], applied);
    assert_eq!(answer["status"], "duplicate");
    let replayed = answer["eventId"].as_i64().unwrap();
    assert!(replayed > rejected, "a replay is a new event");
    let detail = event_detail(&app, replayed).await;
    assert_eq!(detail["status"], "duplicate");
    // A byte-identical duplicate keeps no body of its own: replaying it replays its original's.
    let answer: Value = app
        .api_post(&format!("/events/{replayed}/replay"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["replayOf"], replayed);
    assert_eq!(answer["status"], "duplicate");
    let replayed = answer["eventId"].as_i64().unwrap();

    let answer: Value = app
        .api_post(&format!("/events/{rejected}/replay"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["replayOf"], rejected);
    assert_eq!(answer["status"], "rejected");
    assert!(answer["eventId"].as_i64().unwrap() > replayed);
    assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
    let response = app.api_post("/events/987654/replay").await;
    assert_eq!(response.status(), 404);
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);

    // The same through the command line, against the database the server is using.
    let output = run_cli_async(&app.config_path, &["events", "show", &applied.to_string()]).await;
    assert_success(&output);
    let shown = stdout_json(&output);
    assert_eq!(shown["id"], applied);
    assert_eq!(shown["status"], "applied");
    assert_eq!(shown["body"].as_str().unwrap().as_bytes(), body.as_slice());
    let output = run_cli_async(&app.config_path, &["events", "show", "987654"]).await;
    assert!(!output.status.success(), "an unknown event is an error");

    let output = run_cli_async(
        &app.config_path,
        &["events", "replay", &applied.to_string()],
    )
    .await;
    assert_success(&output);
    let answer = stdout_json(&output);
    assert_eq!(answer["replayOf"], applied);
    assert_eq!(answer["status"], "duplicate");
    let cli_replayed = answer["eventId"].as_i64().unwrap();
    // The server sees the event the other process wrote.
    assert_eq!(
        event_detail(&app, cli_replayed).await["status"],
        "duplicate"
    );

    let output = run_cli_async(
        &app.config_path,
        &["events", "replay", &rejected.to_string()],
    )
    .await;
    assert!(!output.status.success(), "a rejected replay exits non-zero");
    let answer = stdout_json(&output);
    assert_eq!(answer["status"], "rejected");
    assert_eq!(answer["replayOf"], rejected);

    // The server still ingests after the other process wrote.
    let (next, status) = app
        .deliver_ok(customer_event(
            "customer-updated",
            "cus_alice_01",
            5,
            json!({}),
        ))
        .await;
    assert_eq!(status, "applied");
    assert!(next > answer["eventId"].as_i64().unwrap());
}
}

// ---------------------------------------------------------------------------------------------
// Projection rebuild and pruning
// ---------------------------------------------------------------------------------------------

/// A history with reordered revisions, redeliveries, a merge that arrives first, Experian
/// checks, unknown event types and rejected bodies.
async fn deliver_messy_history(app: &TestApp) {
    for name in [
        "08-customer-merged-carol-into-alice.json",
        "03-customer-updated-alice-rev3.json",
        "01-customer-created-alice.json",
        "09-customer-updated-carol-late.json",
        "07-experian-check-bob-mismatch.json",
        "02-customer-created-bob.json",
        "04-customer-updated-alice-rev2.json",
        "06-experian-check-bob-match.json",
        "05-customer-created-carol.json",
        "10-invoice-paid.json",
        "12-customer-updated-dave-no-revision.json",
        "11-customer-created-dave-no-revision.json",
        "03-customer-updated-alice-rev3.json",
        "08-customer-merged-carol-into-alice.json",
        "07-experian-check-bob-mismatch.json",
    ] {
        let response = app
            .deliver(common::fixture(&format!("deliveries/{name}")))
            .await;
        assert_eq!(response.status(), 200, "{name}");
    }
    for revision in [3, 1, 2, 6, 4, 5, 6, 2] {
        let body = customer_event("customer-updated", "cus_mess", revision, json!({}));
        assert_eq!(app.deliver(body).await.status(), 200);
    }
    let created = customer_event("customer-created", "cus_mess", 4, json!({"tags": ["x"]}));
    assert_eq!(app.deliver(created).await.status(), 200);
    for unknown in [
        json!({"eventType": "subscription-renewed", "customerId": "cus_mess"}),
        json!({"eventType": "a-type-from-the-future", "anything": [1, 2, 3]}),
    ] {
        let (_, status) = app.deliver_ok(serde_json::to_vec(&unknown).unwrap()).await;
        assert_eq!(status, "ignored");
    }
    let merge_mess = serde_json::to_vec(&json!({
        "eventType": "customer-merged",
        "targetCustomerId": "cus_mess",
        "duplicatedCustomer": {"id": "cus_mess_dup", "revision": 9,
            "email": "dup@example.com", "updatedTime": "2026-03-01T11:00:00+00:00"},
        "_embedded": {"targetCustomer": {"id": "cus_mess", "revision": 7,
            "email": "cus_mess@example.com", "updatedTime": "2026-03-01T11:00:00+00:00"}}
    }))
    .unwrap();
    assert_eq!(app.deliver(merge_mess).await.status(), 200);
    let late_dup = customer_event("customer-updated", "cus_mess_dup", 12, json!({}));
    assert_eq!(app.deliver(late_dup).await.status(), 200);
    for name in ["truncated.json", "experian-bad-outcome.json"] {
        let response = app
            .deliver(common::fixture(&format!("rejected/{name}")))
            .await;
        assert!(response.status().is_client_error(), "{name}");
    }
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_the_projection_reproduces_it_exactly() {
    let mut app = common::spawn_app().await;
    deliver_messy_history(&app).await;

    let list_before = customers_page(&app).await;
    let merged_before = app.customer("cus_carol_03").await;
    let merged_mess_before = app.customer("cus_mess_dup").await;
    assert_eq!(merged_before["mergedInto"], "cus_alice_01");
    assert_eq!(merged_mess_before["mergedInto"], "cus_mess");
    assert_eq!(app.customer("cus_mess").await["revision"], 7);
    assert_eq!(app.customer("cus_alice_01").await["revision"], 4);
    assert!(list_before.as_array().unwrap().len() >= 4);

    app.stop().await;
    let db = Database::of_config(&app.config_path);
    let table_before = db.customers();
    assert!(table_before.len() >= 6);

    // Damage the projection and the dedupe keys, then rebuild them from the log alone.
    db.execute(
        "DELETE FROM customers WHERE id IN ('cus_alice_01', 'cus_carol_03');
         UPDATE customers SET snapshot = '{}', revision = 99 WHERE id = 'cus_mess';
         DELETE FROM dedupe_keys;",
    );
    assert_ne!(db.customers(), table_before);

    let output = run_cli_async(&app.config_path, &["projection", "rebuild"]).await;
    assert_success(&output);
    let report = stdout_json(&output);
    assert!(report["replayed"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(db.customers(), table_before);

    let app = app.restart().await;
    assert_eq!(customers_page(&app).await, list_before);
    assert_eq!(app.customer("cus_carol_03").await, merged_before);
    assert_eq!(app.customer("cus_mess_dup").await, merged_mess_before);
    // The dedupe keys were rebuilt too: a redelivery is still a duplicate.
    let (_, status) = app
        .deliver_ok(common::fixture(
            "deliveries/03-customer-updated-alice-rev3.json",
        ))
        .await;
    assert_eq!(status, "duplicate");
    let (_, status) = app
        .deliver_ok(customer_event(
            "customer-updated",
            "cus_mess",
            5,
            json!({"other": "bytes"}),
        ))
        .await;
    assert_eq!(status, "duplicate");
}
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_clears_the_bodies_nothing_needs_and_keeps_metadata_and_the_projection() {
    let app = common::spawn_app().await;
    let mut ids = Vec::new();
    // (fixture, whether its body outlives pruning: the projection rests on it)
    let deliveries = [
        ("01-customer-created-alice.json", false),
        ("03-customer-updated-alice-rev3.json", true),
        ("02-customer-created-bob.json", false),
        // Embeds Bob's revision 2: his current snapshot.
        ("06-experian-check-bob-match.json", true),
        // Bob's latest Experian check.
        ("07-experian-check-bob-mismatch.json", true),
        ("10-invoice-paid.json", false),
    ];
    for (name, _) in deliveries {
        let (id, _) = app
            .deliver_ok(common::fixture(&format!("deliveries/{name}")))
            .await;
        ids.push(id);
    }
    let list_before = customers_page(&app).await;
    let mut details_before = Vec::new();
    for &id in &ids {
        details_before.push(event_detail(&app, id).await);
    }
    // `--older-than-days 0` prunes what was received before now: wait until the clock has
    // passed the millisecond of the last answer.
    let answered = now_ms();
    eventually("the clock moves past the last delivery", || async {
        now_ms() > answered
    })
    .await;

    // Without --yes nothing happens.
    let output = run_cli_async(
        &app.config_path,
        &["events", "prune", "--older-than-days", "0"],
    )
    .await;
    assert!(!output.status.success(), "prune needs --yes");
    assert!(!output.stderr.is_empty(), "and says so");
    for &id in &ids {
        assert!(event_detail(&app, id).await["body"].is_string());
    }

    let output = run_cli_async(
        &app.config_path,
        &["events", "prune", "--older-than-days", "0", "--yes"],
    )
    .await;
    assert_success(&output);
    assert_eq!(stdout_json(&output)["pruned"], 3);

    for ((id, before), (name, kept)) in ids.iter().zip(&details_before).zip(deliveries) {
        let after = event_detail(&app, *id).await;
        assert_eq!(after["body"].is_string(), kept, "{name}: {after}");
        for key in [
            "id",
            "receivedTime",
            "eventType",
            "customerId",
            "revision",
            "status",
            "error",
            "bodySize",
        ] {
            assert_eq!(after[key], before[key], "event {id}: {key}");
        }
    }
    assert_eq!(customers_page(&app).await, list_before);
    assert_eq!(
        app.customer("cus_bob_02").await["experianCheck"]["outcome"],
        -1
    );
    // A pruned event cannot be replayed; the projection can still be rebuilt, unchanged.
    let response = app.api_post(&format!("/events/{}/replay", ids[0])).await;
    assert_eq!(response.status(), 404);
    let output = run_cli_async(&app.config_path, &["projection", "rebuild"]).await;
    assert_success(&output);
    assert_eq!(customers_page(&app).await, list_before);
    // New deliveries keep their bodies.
    let (id, _) = app
        .deliver_ok(common::fixture("deliveries/05-customer-created-carol.json"))
        .await;
    assert!(event_detail(&app, id).await["body"].is_string());
}
}

fn config_text(listen: &str, db: &Path, extra: &str) -> String {
    let base = common::config_text(listen, db, "shutdown_grace_seconds = 10");
    format!("{base}\n{extra}\n")
}

/// Deliveries held in flight at the signal: their headers read, their handlers waiting for
/// the body.
const HELD: usize = 40;
/// Deliveries posted (and all acknowledged) by concurrent clients before the signal.
const BEFORE: usize = 200;
/// Deliveries attempted once the listener is closed: every one must be refused.
const AFTER: usize = 50;

fn is_connection_refused(error: &reqwest::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    false
}

/// Posts `count` deliveries from 16 concurrent clients; each answer must be 200 `applied`.
async fn acknowledged_load(
    client: &reqwest::Client,
    url: &str,
    count: usize,
) -> Vec<(String, i64)> {
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, url) = (client.clone(), url.to_owned());
        workers.spawn(async move {
            let mut acknowledged = Vec::new();
            for i in (worker..count).step_by(16) {
                let customer = format!("cus_term_{i}");
                let body = customer_event("customer-created", &customer, 1, json!({}));
                let response = client
                    .post(&url)
                    .basic_auth(USER, Some(PASSWORD))
                    .header("content-type", "application/json; charset=utf-8")
                    .body(body)
                    .send()
                    .await
                    .expect("a delivery before the signal is answered");
                assert_eq!(response.status(), 200, "delivery {i} before the signal");
                let json: Value = response.json().await.unwrap();
                assert_eq!(json["status"], "applied");
                acknowledged.push((customer, json["eventId"].as_i64().unwrap()));
            }
            acknowledged
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(done) = workers.join_next().await {
        acknowledged.extend(done.expect("load worker"));
    }
    acknowledged
}

/// Waits until a new connection to `address` is refused: the listener is closed. (A probe
/// caught in the accept queue as the listener closes is reset instead; it is only a probe.)
async fn wait_for_listener_closed(address: std::net::SocketAddr) {
    eventually("the listener closes", || async move {
        match tokio::net::TcpStream::connect(address).await {
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionRefused,
            Ok(_) => false,
        }
    })
    .await;
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("webhookd.db");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text("127.0.0.1:0", &db, "")).unwrap();
    let stored_in = Database::of_config(&config);
    let mut daemon = tokio::task::spawn_blocking(move || Daemon::start(&config))
        .await
        .unwrap();
    let address = daemon.address;
    let url = daemon.url("/webhooks/rebilly");
    // A new connection for every delivery, as Rebilly does: a pooled connection the daemon
    // closed at the signal would fail in other ways than refusal.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let authorization = basic_value(USER, PASSWORD);

    // Under load, and with deliveries provably in flight: each held one has had its headers
    // read and its handler started (the daemon answered 100 Continue), and waits for its body.
    let (mut acknowledged, held) = tokio::join!(acknowledged_load(&client, &url, BEFORE), async {
        let mut held = Vec::new();
        for i in 0..HELD {
            let body = customer_event("customer-created", &format!("cus_held_{i}"), 1, json!({}));
            held.push(HeldDelivery::start(address, &authorization, body).await);
        }
        held
    });
    assert_eq!(acknowledged.len(), BEFORE);

    let kill = Command::new("kill")
        .args(["-TERM", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for_listener_closed(address).await;

    // Once the listener is closed, a delivery fails in one way only: its connection is refused.
    for i in 0..AFTER {
        let body = customer_event("customer-created", &format!("cus_late_{i}"), 1, json!({}));
        match client
            .post(&url)
            .basic_auth(USER, Some(PASSWORD))
            .body(body)
            .send()
            .await
        {
            Err(error) => assert!(
                is_connection_refused(&error),
                "a delivery after the listener closed fails only by refusal: {error:?}"
            ),
            Ok(response) => panic!("answered {} after the listener closed", response.status()),
        }
    }

    // What was in flight at the signal is answered, and applied.
    for (i, delivery) in held.into_iter().enumerate() {
        let response = delivery.finish().await;
        assert_eq!(response.status, 200, "held delivery {i}: {}", response.body);
        let json = response.json();
        assert_eq!(json["status"], "applied", "held delivery {i}");
        acknowledged.push((format!("cus_held_{i}"), json["eventId"].as_i64().unwrap()));
    }

    let (status, daemon) = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(Duration::from_secs(15));
        (status, daemon)
    })
    .await
    .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}:\n{}",
        daemon.log.lock().unwrap()
    );
    // The log is drained by a thread that may read the last line after the exit is seen.
    eventually("the daemon logs a clean stop", || async {
        daemon.log.lock().unwrap().contains("stopped")
    })
    .await;

    // Each backend prints values its own way: compare the text inside.
    let digits = |value: &str| -> String { value.chars().filter(char::is_ascii_digit).collect() };
    let text = |sql: String| -> Vec<String> {
        stored_in
            .table(&sql)
            .concat()
            .iter()
            .map(|value| value.chars().filter(|c| c.is_alphanumeric() || *c == '_').collect())
            .collect()
    };
    for (customer, id) in &acknowledged {
        let stored = text(format!(
            "SELECT customer_id, status FROM events WHERE id = {id}"
        ));
        assert!(
            stored.len() == 2
                && stored[0].ends_with(customer.as_str())
                && stored[1].ends_with("applied"),
            "acknowledged event {id} of {customer}: {stored:?}"
        );
        let projected = text(format!(
            "SELECT COUNT(*) FROM customers WHERE id = '{customer}'"
        ));
        assert_eq!(digits(&projected[0]), "1", "{customer} is projected");
    }
    let late = text("SELECT COUNT(*) FROM events WHERE customer_id LIKE 'cus_late_%'".into());
    assert_eq!(digits(&late[0]), "0", "nothing refused was stored");
}
}

backends! {
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_reports_whether_the_daemon_answers() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let config = config_text(&format!("127.0.0.1:{port}"), Path::new("{db}"), "");
    let mut app = common::spawn_app_with(&format!("#replace{config}")).await;
    assert_eq!(app.address.port(), port);

    let output = run_cli_async(&app.config_path, &["healthcheck"]).await;
    assert_success(&output);
    let output = run_cli_async(&app.config_path, &["healthcheck", "--ready"]).await;
    assert_success(&output);

    app.stop().await;
    let output = run_cli_async(&app.config_path, &["healthcheck"]).await;
    assert!(
        !output.status.success(),
        "nothing listens: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(!output.stderr.is_empty(), "and the reason is printed");
}
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id_and_no_secret_or_personal_data() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("webhookd.db");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(
            "127.0.0.1:0",
            &db,
            "[log]\nformat = \"json\"\nlevel = \"info,rebilly_webhookd=debug\"\n",
        ),
    )
    .unwrap();
    let mut child = binary()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let address = loop {
        let line = lines.next().expect("a log line").unwrap();
        let entry: Value = serde_json::from_str(&line).expect("every log line is JSON");
        seen.push(line);
        if entry["message"] == "listening" {
            break entry["address"].as_str().unwrap().to_owned();
        }
    };

    let body = customer_event("customer-created", "cus_logged", 1, json!({}));
    let email = "cus_logged@example.com";
    assert!(String::from_utf8_lossy(&body).contains(email));
    let response = reqwest::Client::new()
        .post(format!("http://{address}/webhooks/rebilly"))
        .basic_auth(USER, Some(PASSWORD))
        .header("x-request-id", "trace-me-42")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = reqwest::Client::new()
        .post(format!("http://{address}/webhooks/rebilly"))
        .basic_auth(USER, Some("a-wrong-password-value"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for line in lines {
        seen.push(line.unwrap());
    }
    assert!(child.wait().unwrap().success());

    let entries: Vec<Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let stored = entries
        .iter()
        .find(|e| e["message"] == "delivery stored")
        .unwrap_or_else(|| panic!("no `delivery stored` line in {seen:#?}"));
    let text = stored.to_string();
    assert!(text.contains("trace-me-42"), "{text}");
    assert!(text.contains("cus_logged"), "{text}");
    assert!(text.contains("applied"), "{text}");
    let all = seen.join("\n");
    for secret in [PASSWORD, "a-wrong-password-value", API_TOKEN, email, "Test"] {
        assert!(
            !all.contains(secret),
            "`{secret}` leaked into the logs:\n{all}"
        );
    }
}
