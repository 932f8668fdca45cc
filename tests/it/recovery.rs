//! Recovery of the SQLite projection file on the real binary: a projection left behind the event
//! log (restored from an older copy), one ahead of it (the log restored from an older copy), and
//! one that is missing are each brought level with the log when the daemon starts, so that the
//! API serves the log's whole history and the customers table equals a `projection rebuild`.

use crate::common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The customers the generated histories use; a merge and an Experian check in each.
const FIRST: std::ops::Range<usize> = 0..8;
const SECOND: std::ops::Range<usize> = 10..14;
/// The customers the fixtures of `fixtures/deliveries` describe.
const FIXTURE_CUSTOMERS: [&str; 4] = ["cus_alice_01", "cus_bob_02", "cus_carol_03", "cus_dave_04"];

fn generated(index: usize) -> String {
    format!("cus_rec_{index:02}")
}

/// A temporary folder with a configuration whose database is `data/webhookd.db`.
struct Site {
    dir: tempfile::TempDir,
    config: PathBuf,
    db: PathBuf,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().expect("temporary folder");
        let db = dir.path().join("data").join("webhookd.db");
        let config = write_config(dir.path(), &base_config(&db));
        Site { dir, config, db }
    }

    fn keep(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn projection(&self) -> PathBuf {
        rebilly_webhookd::storage::sqlite::projection_path(&self.db)
    }
}

/// The log position the projection of a stopped database records.
fn projection_position(db: &Path) -> i64 {
    let conn = sqlite_connection(db);
    conn.query_row(
        "SELECT log_position FROM projection.state WHERE id = 1",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

fn newest_event(db: &Path) -> i64 {
    let conn = sqlite_connection(db);
    conn.query_row("SELECT MAX(id) FROM events", [], |r| r.get(0))
        .unwrap()
}

/// The real binary serving `config`, with a client for it.
struct Running {
    daemon: Daemon,
    client: reqwest::Client,
}

impl Running {
    async fn start(config: &Path) -> Running {
        let config = config.to_owned();
        let daemon = tokio::task::spawn_blocking(move || Daemon::start(&config))
            .await
            .unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Running { daemon, client }
    }

    /// SIGTERM, so that the daemon answers what is in flight and checkpoints; returns its log.
    async fn stop(self) -> String {
        self.daemon.stop_cleanly().await
    }

    /// Delivers each body in turn; every one must be answered 200.
    async fn deliver_all(&self, bodies: &[Vec<u8>]) {
        self.statuses(bodies).await;
    }

    /// Delivers each body in turn, each answered 200; returns the status each got.
    async fn statuses(&self, bodies: &[Vec<u8>]) -> Vec<String> {
        let mut statuses = Vec::with_capacity(bodies.len());
        for body in bodies {
            let response = self
                .client
                .post(self.daemon.url("/webhooks/rebilly"))
                .basic_auth(USER, Some(PASSWORD))
                .header("content-type", "application/json; charset=utf-8")
                .header("user-agent", "Rebilly/recovery-test")
                .body(body.clone())
                .send()
                .await
                .expect("deliver");
            assert_eq!(response.status(), 200, "{}", String::from_utf8_lossy(body));
            let answer: Value = response.json().await.expect("a JSON answer");
            statuses.push(answer["status"].as_str().unwrap_or_default().to_owned());
        }
        statuses
    }

    async fn get(&self, path: &str) -> (u16, Value, Option<String>) {
        let response = self
            .client
            .get(self.daemon.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("query the daemon");
        let status = response.status().as_u16();
        let total = response
            .headers()
            .get("pagination-total")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, response.json().await.unwrap_or(Value::Null), total)
    }

    async fn customer(&self, id: &str) -> Value {
        let (status, view, _) = self.get(&format!("/customers/{id}")).await;
        assert_eq!(status, 200, "customer {id}: {view}");
        view
    }

    async fn is_unknown(&self, id: &str) -> bool {
        self.get(&format!("/customers/{id}")).await.0 == 404
    }

    /// Everything the API says about the test's customers: each one (or its 404), and the
    /// lists sorted by id, by last update and filtered by country, with their totals.
    async fn served(&self) -> Value {
        let mut ids: Vec<String> = FIXTURE_CUSTOMERS.iter().map(|s| s.to_string()).collect();
        ids.extend(FIRST.chain(SECOND).map(generated));
        let mut served = serde_json::Map::new();
        for id in ids {
            let (status, view, _) = self.get(&format!("/customers/{id}")).await;
            served.insert(id, json!({"status": status, "view": view}));
        }
        for list in [
            "/customers?sort=id&limit=1000",
            "/customers?sort=-updatedTime&limit=5&offset=2",
            "/customers?filter=primaryAddress.country:FR&sort=id",
            "/customers?q=cus_rec&sort=-id",
        ] {
            let (status, page, total) = self.get(list).await;
            assert_eq!(status, 200, "{list}: {page}");
            assert!(!page.as_array().unwrap().is_empty(), "{list} lists nobody");
            served.insert(list.to_owned(), json!({"page": page, "total": total}));
        }
        Value::Object(served)
    }
}

/// Compares two [`Running::served`] answers one customer or list at a time, naming the first
/// that differs.
fn assert_served(actual: &Value, expected: &Value) {
    let (actual, expected) = (actual.as_object().unwrap(), expected.as_object().unwrap());
    for (key, want) in expected {
        assert_eq!(actual.get(key), Some(want), "{key} is served as before");
    }
    assert_eq!(actual.len(), expected.len());
}

/// Revisions `revisions` of the generated customers `customers`: created at revision 1, updated
/// after, some with an Experian check.
fn revisions_of(
    customers: impl Iterator<Item = usize>,
    revisions: std::ops::RangeInclusive<i64>,
) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for index in customers {
        let id = generated(index);
        for revision in revisions.clone() {
            let event_type = if revision == 1 {
                "customer-created"
            } else {
                "customer-updated"
            };
            let country = ["FR", "DE", "US"][(index + revision as usize) % 3];
            let extra = json!({"primaryAddress": {"country": country, "city": "Lyon",
                "lastName": format!("Recovery {revision}")}});
            bodies.push(customer_event(event_type, &id, revision, extra));
        }
    }
    bodies
}

/// `bodies` in a random order, with a few of them delivered again, the seed printed so that a
/// failure can be replayed.
fn shuffled(mut bodies: Vec<Vec<u8>>, redeliveries: usize) -> Vec<Vec<u8>> {
    let seed = fastrand::u64(..);
    eprintln!("history seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..redeliveries {
        let again = bodies[rng.usize(..bodies.len())].clone();
        bodies.push(again);
    }
    rng.shuffle(&mut bodies);
    bodies
}

/// The first part of the history: every fixture delivery (a merge, Experian checks, customers
/// without revisions, an unknown type), eight generated customers with five revisions each,
/// one merged into another and one checked by Experian; shuffled, with redeliveries.
fn first_history() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = fixture_names()
        .iter()
        .map(|name| fixture(&format!("deliveries/{name}")))
        .collect();
    bodies.extend(revisions_of(FIRST, 1..=5));
    bodies.push(merge_event(&generated(0), Some(6), &generated(1), 5));
    bodies.push(experian_event(
        &generated(2),
        3,
        1,
        "Record matched",
        "000",
        "",
    ));
    shuffled(bodies, 8)
}

/// The later part: newer revisions of some first customers, older ones (stale), four new
/// customers, a merge among them, a merge into a first customer and Experian checks; shuffled,
/// with redeliveries.
fn second_history() -> Vec<Vec<u8>> {
    let mut bodies = revisions_of(3..6, 6..=8);
    // Older than what the first history left: stale.
    bodies.push(customer_event(
        "customer-updated",
        &generated(6),
        1,
        json!({}),
    ));
    bodies.push(experian_event(
        &generated(5),
        2,
        1,
        "Record matched",
        "000",
        "",
    ));
    bodies.extend(revisions_of(SECOND, 1..=3));
    bodies.push(merge_event(&generated(10), Some(4), &generated(11), 3));
    bodies.push(merge_event(&generated(2), None, &generated(7), 5));
    bodies.push(experian_event(
        &generated(12),
        2,
        -1,
        "Address mismatch",
        "004",
        "Address does not match bureau record",
    ));
    bodies.push(fixture("deliveries/03-customer-updated-alice-rev3.json"));
    shuffled(bodies, 5)
}

/// Runs `projection rebuild` on the stopped database and returns its customers table.
async fn rebuilt_table(site: &Site) -> Vec<Vec<String>> {
    let output = run_cli_async(&site.config, &["projection", "rebuild"]).await;
    assert_success(&output);
    assert!(
        stdout_json(&output)["replayed"].as_u64().unwrap() > 0,
        "{}",
        stdout(&output)
    );
    customers_table(&site.db)
}

/// What the second history leaves, beyond what `served` compares as a whole.
async fn assert_second_history_served(running: &Running) {
    assert_eq!(running.customer(&generated(4)).await["revision"], 8);
    assert_eq!(running.customer(&generated(6)).await["revision"], 5);
    assert_eq!(running.customer(&generated(13)).await["revision"], 3);
    assert_eq!(
        running.customer(&generated(11)).await["mergedInto"],
        generated(10)
    );
    assert_eq!(running.customer(&generated(10)).await["revision"], 4);
    assert_eq!(
        running.customer(&generated(7)).await["mergedInto"],
        generated(2)
    );
    let checked = running.customer(&generated(12)).await;
    assert_eq!(
        checked["experianCheck"]["reason"], "Address mismatch",
        "{checked}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_behind_the_log_is_caught_up_at_start_up_and_equals_a_rebuild() {
    let site = Site::new();
    let running = Running::start(&site.config).await;
    running.deliver_all(&first_history()).await;
    running.stop().await;
    let early_position = projection_position(&site.db);
    assert_eq!(early_position, newest_event(&site.db));
    let early = site.keep("early-projection");
    copy_with_journals(&site.projection(), &early);

    let running = Running::start(&site.config).await;
    running.deliver_all(&second_history()).await;
    let served_before = running.served().await;
    running.stop().await;
    let table_before = customers_table(&site.db);
    assert!(newest_event(&site.db) > early_position);

    copy_with_journals(&early, &site.projection());
    assert_eq!(projection_position(&site.db), early_position);
    assert_ne!(
        customers_table(&site.db),
        table_before,
        "the restored projection is behind the log"
    );

    let running = Running::start(&site.config).await;
    assert_served(&running.served().await, &served_before);
    assert_second_history_served(&running).await;
    let log = running.stop().await;
    assert!(
        log.lines().any(
            |line| line.contains("catching the projection up with the event log")
                && line.contains(&format!("from={early_position} "))
        ),
        "the daemon says it caught up from {early_position}:\n{log}"
    );
    assert_eq!(projection_position(&site.db), newest_event(&site.db));
    let caught_up = customers_table(&site.db);
    assert_eq!(caught_up, table_before);
    assert_eq!(rebuilt_table(&site).await, caught_up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_ahead_of_the_log_is_rebuilt_from_the_log() {
    let site = Site::new();
    let running = Running::start(&site.config).await;
    running.deliver_all(&first_history()).await;
    let served_early = running.served().await;
    running.stop().await;
    let table_early = customers_table(&site.db);
    let early_newest = newest_event(&site.db);
    let early_log = site.keep("early-log");
    copy_with_journals(&site.db, &early_log);

    let running = Running::start(&site.config).await;
    running.deliver_all(&second_history()).await;
    assert_second_history_served(&running).await;
    running.stop().await;
    let later_position = projection_position(&site.db);
    assert!(later_position > early_newest);

    copy_with_journals(&early_log, &site.db);
    assert_eq!(newest_event(&site.db), early_newest);
    assert_eq!(projection_position(&site.db), later_position);

    let running = Running::start(&site.config).await;
    assert_served(&running.served().await, &served_early);
    for index in SECOND {
        assert!(
            running.is_unknown(&generated(index)).await,
            "{} came only from events the restored log does not hold",
            generated(index)
        );
    }
    assert_eq!(running.customer(&generated(4)).await["revision"], 5);
    assert_eq!(
        running.customer(&generated(7)).await["mergedInto"],
        Value::Null
    );
    let log = running.stop().await;
    assert!(
        log.contains("the projection reflects events the log does not hold"),
        "the daemon says it rebuilt an ahead projection:\n{log}"
    );
    assert_eq!(projection_position(&site.db), early_newest);
    let recovered = customers_table(&site.db);
    assert_eq!(recovered, table_early);
    assert_eq!(rebuilt_table(&site).await, recovered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_file_that_is_missing_is_rebuilt_from_the_log() {
    let site = Site::new();
    let running = Running::start(&site.config).await;
    running.deliver_all(&first_history()).await;
    running.deliver_all(&second_history()).await;
    let served_before = running.served().await;
    running.stop().await;
    let table_before = customers_table(&site.db);

    remove_with_journals(&site.projection());
    assert!(!site.projection().exists());

    let running = Running::start(&site.config).await;
    assert_served(&running.served().await, &served_before);
    assert_second_history_served(&running).await;
    // The dedupe index came back with the projection: every redelivery is known.
    let again = running.statuses(&first_history()).await;
    assert!(again.iter().all(|s| s == "duplicate"), "{again:?}");
    let log = running.stop().await;
    assert!(
        log.lines().any(
            |line| line.contains("catching the projection up with the event log")
                && line.contains("from=0 ")
        ),
        "the daemon says it caught up from the start:\n{log}"
    );
    assert_eq!(customers_table(&site.db), table_before);
    assert_eq!(rebuilt_table(&site).await, table_before);
}
