//! Crash safety of the real binary: under concurrent load the process is killed with SIGKILL
//! once a random number of deliveries (in the hundreds) were acknowledged, and restarted, several
//! times on one database. Every other cycle the kill lands in the shutdown instead: SIGTERM
//! first, then SIGKILL a random few milliseconds later, while the daemon answers what is in
//! flight or copies its write-ahead log into the database (its final checkpoint). Before each
//! kill every answer must be a 2xx; after each restart the
//! database must pass `PRAGMA integrity_check`, every acknowledged delivery must be in the event
//! log, the projection must show at least the highest acknowledged revision of every customer,
//! and every acknowledged body delivered again must be a `duplicate` (its dedupe key survived).
//!
//! The projection file may be left behind the event log (it is committed after the log, without
//! a sync); a daemon starting then catches it up before it listens. That catch-up is killed too:
//! with a projection restored from an early copy, thousands of events behind, the daemon is
//! started and SIGKILLed again and again while it catches up, and must end with both files
//! intact, every acknowledged delivery served, and a projection equal to a rebuild.

use crate::common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

const USER: &str = "rebilly";
const PASSWORD: &str = "crash-test-password-0123";
const API_TOKEN: &str = "crash-test-api-token-0123456789";
const TASKS: usize = 32;
const CYCLES: usize = 4;
/// The longest wait between SIGTERM and SIGKILL in a shutdown cycle.
const SHUTDOWN_KILL_MAX_MS: u64 = 60;
/// Each cycle kills the daemon once this many deliveries, or a random number up to twice as
/// many, were acknowledged.
const MIN_ACKS: usize = 150;
/// How long a cycle may take to reach its acknowledgements before the test gives up.
const ACK_WAIT: Duration = Duration::from_secs(60);

fn crash_config(dir: &Path) -> (PathBuf, PathBuf) {
    crash_config_syncing(dir, "full")
}

/// The crash test's configuration with `storage.synchronous` set to `synchronous`.
fn crash_config_syncing(dir: &Path, synchronous: &str) -> (PathBuf, PathBuf) {
    let db = dir.join("data").join("webhookd.db");
    let config = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[storage]
path = "{db}"
synchronous = "{synchronous}"

[[auth.basic]]
username = "{USER}"
password = "{PASSWORD}"

[api]
token = "{API_TOKEN}"

[log]
format = "text"
level = "info"
"#,
        db = db.display()
    );
    std::fs::write(&config, text).expect("write config");
    (config, db)
}

/// A customer event with a full-looking Customer resource, unique per customer and revision.
fn customer_event(id: &str, revision: i64) -> Vec<u8> {
    let event_type = if revision == 1 {
        "customer-created"
    } else {
        "customer-updated"
    };
    let countries = ["FR", "DE", "US", "GB", "ES", "IT"];
    let country = countries[id.len() % countries.len()];
    let body = serde_json::json!({
        "eventType": event_type,
        "customerId": id,
        "_embedded": {"customer": {
            "id": id,
            "email": format!("{id}@example.com"),
            "firstName": "Crash",
            "lastName": format!("Test {revision}"),
            "primaryAddress": {
                "firstName": "Crash",
                "lastName": format!("Test {revision}"),
                "organization": "Crash Testing SARL",
                "address": format!("{revision} Rue de la Paix"),
                "address2": null,
                "city": "Lyon",
                "region": "ARA",
                "country": country,
                "postalCode": "69001",
                "phoneNumbers": [{"label": "mobile", "value": "+33612345678", "primary": true}],
                "emails": [{"label": "main", "value": format!("{id}@example.com"), "primary": true}]
            },
            "defaultPaymentInstrument": {"method": "payment-card", "paymentInstrumentId": format!("pin_{id}")},
            "createdTime": "2026-03-01T10:00:00+00:00",
            "updatedTime": format!("2026-03-01T{:02}:{:02}:00+00:00", 10 + revision / 60, revision % 60),
            "revision": revision,
            "websiteId": "web_main_01",
            "customFields": {"loyaltyTier": "silver", "source": "crash-test"},
            "tags": [{"id": "tag_crash", "name": "crash"}],
            "isEddRequired": false,
            "invoiceCount": revision,
            "paymentCount": revision,
            "lifetimeRevenue": {"amount": revision * 10, "currency": "EUR"},
            "organizationId": "org_crash_01",
            "_links": [{"rel": "self", "href": format!("https://api.rebilly.com/customers/{id}")}]
        }},
        "_links": [{"rel": "customer", "href": format!("https://api.rebilly.com/customers/{id}")}]
    });
    serde_json::to_vec(&body).unwrap()
}

/// One delivery answered 2xx.
#[derive(Debug, Clone)]
struct Ack {
    event_id: i64,
    customer: String,
    revision: i64,
    status: String,
    body: Vec<u8>,
}

/// What the load tasks share with the test: how many deliveries were acknowledged, and whether
/// the kill has begun (only after it may a request fail).
#[derive(Default)]
struct Progress {
    acknowledged: AtomicUsize,
    killing: AtomicBool,
}

/// Posts events until the daemon is killed. Each task owns its customers (and their next
/// revisions, kept across cycles), so one customer's revisions are sent in increasing order.
/// Any answer other than a 2xx fails the test, and so does a request that fails before the kill.
async fn load(
    client: reqwest::Client,
    url: String,
    task: usize,
    mut revisions: Vec<i64>,
    progress: Arc<Progress>,
) -> (Vec<Ack>, Vec<i64>) {
    let mut acks = Vec::new();
    loop {
        // A new customer one time in three, else the next revision of one already created.
        let index = if revisions.is_empty() || fastrand::u8(..3) == 0 {
            revisions.push(0);
            revisions.len() - 1
        } else {
            fastrand::usize(..revisions.len())
        };
        let revision = revisions[index] + 1;
        revisions[index] = revision;
        let customer = format!("cus_crash_{task:02}_{index:05}");
        let body = customer_event(&customer, revision);
        let sent = client
            .post(&url)
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", "application/json; charset=utf-8")
            .header("user-agent", "Rebilly/crash-test")
            .body(body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(_) if progress.killing.load(Ordering::SeqCst) => break,
            Err(error) => panic!("delivery failed before the kill: {error}"),
        };
        let status = response.status();
        // Once the shutdown has begun, new deliveries may be refused.
        if !status.is_success() && progress.killing.load(Ordering::SeqCst) {
            break;
        }
        assert!(
            status.is_success(),
            "{customer} revision {revision} answered {status} before the kill: {}",
            response.text().await.unwrap_or_default()
        );
        let json = match response.json::<serde_json::Value>().await {
            Ok(json) => json,
            // A 2xx whose body never fully arrived is not an acknowledgement we can check.
            Err(_) if progress.killing.load(Ordering::SeqCst) => break,
            Err(error) => panic!("a 2xx body failed before the kill: {error}"),
        };
        acks.push(Ack {
            event_id: json["eventId"].as_i64().expect("eventId in a 2xx answer"),
            customer,
            revision,
            status: json["status"].as_str().unwrap_or_default().to_owned(),
            body,
        });
        progress.acknowledged.fetch_add(1, Ordering::SeqCst);
    }
    (acks, revisions)
}

/// How a cycle ends the daemon.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// SIGKILL in the middle of the load.
    UnderLoad,
    /// SIGTERM, then SIGKILL this many milliseconds later: in the drain of the requests in
    /// flight or in the final checkpoint.
    InShutdown(u64),
}

/// Loads the daemon until `kill_at` deliveries are acknowledged, kills it as `kill` says, and
/// returns every acknowledgement with each task's customers.
async fn load_until_killed(
    daemon: &mut Daemon,
    client: &reqwest::Client,
    customers: Vec<Vec<i64>>,
    kill_at: usize,
    kill: Kill,
) -> (Vec<Ack>, Vec<Vec<i64>>) {
    let url = daemon.url("/webhooks/rebilly");
    let progress = Arc::new(Progress::default());
    let tasks: Vec<_> = customers
        .into_iter()
        .enumerate()
        .map(|(task, revisions)| {
            tokio::spawn(load(
                client.clone(),
                url.clone(),
                task,
                revisions,
                progress.clone(),
            ))
        })
        .collect();
    eventually_within(
        ACK_WAIT,
        &format!("{kill_at} acknowledged deliveries"),
        || {
            let progress = progress.clone();
            async move { progress.acknowledged.load(Ordering::SeqCst) >= kill_at }
        },
    )
    .await;
    progress.killing.store(true, Ordering::SeqCst);
    if let Kill::InShutdown(after_ms) = kill {
        daemon.sigterm();
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
    }
    // The daemon may have finished its shutdown already; SIGKILL then finds it exited.
    let _ = daemon.child.kill();
    daemon.child.wait().expect("reap the daemon");
    let mut acks = Vec::new();
    let mut customers = Vec::new();
    for task in tasks {
        let (task_acks, revisions) = task.await.expect("load task");
        acks.extend(task_acks);
        customers.push(revisions);
    }
    (acks, customers)
}

fn assert_integrity(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok", "integrity_check after SIGKILL");
}

/// Every acknowledged delivery is in the event log as applied; returns each customer's highest
/// acknowledged revision.
fn assert_logged(db: &Path, acks: &[Ack]) -> HashMap<String, i64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    let mut lookup = conn
        .prepare("SELECT customer_id, revision, status FROM events WHERE id = ?1")
        .unwrap();
    let mut highest: HashMap<String, i64> = HashMap::new();
    for ack in acks {
        let stored: Option<(String, i64, String)> = lookup
            .query_row([ack.event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .ok();
        assert_eq!(
            stored,
            Some((ack.customer.clone(), ack.revision, "applied".to_owned())),
            "acknowledged event {} ({} revision {}) after the crash",
            ack.event_id,
            ack.customer,
            ack.revision
        );
        let entry = highest.entry(ack.customer.clone()).or_default();
        *entry = (*entry).max(ack.revision);
    }
    highest
}

async fn assert_projected(
    daemon: &Daemon,
    client: &reqwest::Client,
    highest: &HashMap<String, i64>,
) {
    for (customer, revision) in highest {
        let response = client
            .get(daemon.url(&format!("/customers/{customer}")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("query the restarted daemon");
        assert_eq!(
            response.status(),
            200,
            "customer {customer} after the crash"
        );
        let view: serde_json::Value = response.json().await.unwrap();
        let projected = view["revision"].as_i64().expect("projected revision");
        assert!(
            projected >= *revision,
            "{customer}: projected revision {projected} < acknowledged {revision}"
        );
    }
}

/// Delivers every acknowledged body again: each must be a duplicate of its original event.
async fn assert_redeliveries_are_duplicates(
    daemon: &Daemon,
    client: &reqwest::Client,
    acks: &[Ack],
) {
    let url = daemon.url("/webhooks/rebilly");
    let mut workers = tokio::task::JoinSet::new();
    for chunk in acks.chunks(acks.len().div_ceil(8)) {
        let (client, url, chunk) = (client.clone(), url.clone(), chunk.to_vec());
        workers.spawn(async move {
            for ack in chunk {
                let response = client
                    .post(&url)
                    .basic_auth(USER, Some(PASSWORD))
                    .header("content-type", "application/json; charset=utf-8")
                    .body(ack.body.clone())
                    .send()
                    .await
                    .expect("redeliver");
                assert_eq!(
                    response.status(),
                    200,
                    "redelivery of event {}",
                    ack.event_id
                );
                let json: serde_json::Value = response.json().await.unwrap();
                assert_eq!(
                    json["status"], "duplicate",
                    "redelivery of acknowledged event {} ({} revision {})",
                    ack.event_id, ack.customer, ack.revision
                );
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("redelivery worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_deliveries_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (config, db) = crash_config(dir.path());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut daemon = Daemon::start(&config);
    let mut customers = vec![Vec::new(); TASKS];
    let mut highest = HashMap::new();

    for cycle in 1..=CYCLES {
        let kill_at = fastrand::usize(MIN_ACKS..=2 * MIN_ACKS);
        let kill = if cycle % 2 == 0 {
            Kill::InShutdown(fastrand::u64(..=SHUTDOWN_KILL_MAX_MS))
        } else {
            Kill::UnderLoad
        };
        let (acks, next) = load_until_killed(&mut daemon, &client, customers, kill_at, kill).await;
        customers = next;
        eprintln!(
            "cycle {cycle}: {kill:?} at {kill_at}, {} acknowledged",
            acks.len()
        );
        assert!(acks.len() >= kill_at);
        assert!(
            acks.iter().all(|a| a.status == "applied"),
            "unique events are applied: {:?}",
            acks.iter().find(|a| a.status != "applied")
        );
        assert_integrity(&db);

        daemon = Daemon::start(&config);
        for (customer, revision) in assert_logged(&db, &acks) {
            let entry: &mut i64 = highest.entry(customer).or_default();
            *entry = (*entry).max(revision);
        }
        assert_projected(&daemon, &client, &highest).await;
        assert_redeliveries_are_duplicates(&daemon, &client, &acks).await;
    }

    // And it keeps working: the next revision of an acknowledged customer is applied.
    let (customer, _) = highest.iter().next().unwrap();
    let projected = daemon_revision(&daemon, &client, customer).await;
    let response = client
        .post(daemon.url("/webhooks/rebilly"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json; charset=utf-8")
        .body(customer_event(customer, projected + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["status"], "applied");
}

/// A query endpoint's JSON answer.
async fn api_json(daemon: &Daemon, client: &reqwest::Client, path: &str) -> serde_json::Value {
    client
        .get(daemon.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn daemon_revision(daemon: &Daemon, client: &reqwest::Client, customer: &str) -> i64 {
    let view = api_json(daemon, client, &format!("/customers/{customer}")).await;
    view["revision"].as_i64().expect("projected revision")
}

// ---------------------------------------------------------------------------------------------
// SIGKILL while the projection catches up with the event log
// ---------------------------------------------------------------------------------------------

/// Customers seeded before the projection copy is taken, and after it: the restored copy is
/// then thousands of applied events behind, more than two catch-up chunks.
const EARLY_CUSTOMERS: usize = 100;
const LATER_CUSTOMERS: usize = 2_500;
/// Customers have from one to this many revisions, delivered revision after revision across all
/// of them, so that every stretch of the log holds some customer's last revision: a stretch the
/// catch-up lost would show.
const LATER_REVISIONS: i64 = 8;
const SEED_TASKS: usize = 16;
/// Start-ups killed while the projection catches up.
const CATCH_UP_CYCLES: usize = 6;
/// The longest a blind cycle lets the daemon run before SIGKILL.
const CATCH_UP_KILL_MAX_MS: u64 = 1_500;
/// How long a watched cycle lets the daemon run once its projection moved.
const AFTER_PROGRESS_MAX_MS: u64 = 30;

/// Delivers revisions 1 to `1 + index % most` of customer `cus_catch_{index}` for every index in
/// `customers`, each revision of all of them before the next, from [`SEED_TASKS`] concurrent
/// clients; every answer must be 200 `applied`.
async fn seed(
    daemon: &Daemon,
    client: &reqwest::Client,
    customers: std::ops::Range<usize>,
    most: i64,
) -> Vec<Ack> {
    let url = daemon.url("/webhooks/rebilly");
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..SEED_TASKS {
        let (client, url) = (client.clone(), url.clone());
        let customers = customers.clone();
        tasks.spawn(async move {
            let mut acks = Vec::new();
            for revision in 1..=most {
                let mine = customers.clone().skip(task).step_by(SEED_TASKS);
                for index in mine.filter(|index| 1 + (*index as i64) % most >= revision) {
                    let customer = format!("cus_catch_{index:05}");
                    let body = customer_event(&customer, revision);
                    let response = client
                        .post(&url)
                        .basic_auth(USER, Some(PASSWORD))
                        .header("content-type", "application/json; charset=utf-8")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("seed delivery");
                    assert_eq!(response.status(), 200, "{customer} revision {revision}");
                    let json: serde_json::Value = response.json().await.unwrap();
                    assert_eq!(json["status"], "applied", "{customer} revision {revision}");
                    acks.push(Ack {
                        event_id: json["eventId"].as_i64().unwrap(),
                        customer,
                        revision,
                        status: "applied".to_owned(),
                        body,
                    });
                }
            }
            acks
        });
    }
    let mut acks = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acks.extend(done.expect("seed task"));
    }
    acks
}

async fn start_daemon(config: &Path) -> Daemon {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || Daemon::start(&config))
        .await
        .unwrap()
}

/// Copies the files a killed daemon left into `scratch` and returns the copy's event log path,
/// so that opening them (which recovers and checkpoints their WAL) leaves the originals as the
/// next start-up will find them.
fn copy_database(db: &Path, scratch: &Path) -> PathBuf {
    std::fs::create_dir_all(scratch).unwrap();
    let copy = scratch.join("webhookd.db");
    copy_with_journals(db, &copy);
    copy_with_journals(
        &rebilly_webhookd::storage::sqlite::projection_path(db),
        &rebilly_webhookd::storage::sqlite::projection_path(&copy),
    );
    copy
}

/// `integrity_check` of the event log and of the projection file, and the projection's position.
fn integrity_and_position(db: &Path) -> (String, String, i64) {
    let conn = sqlite_connection(db);
    let check = |schema: &str| -> String {
        conn.query_row(&format!("PRAGMA {schema}.integrity_check"), [], |r| {
            r.get(0)
        })
        .unwrap()
    };
    let position = conn
        .query_row(
            "SELECT log_position FROM projection.state WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    (check("main"), check("projection"), position)
}

/// The projection's position, read while a daemon writes (WAL lets a reader in).
fn live_position(db: &Path) -> Option<i64> {
    let projection = rebilly_webhookd::storage::sqlite::projection_path(db);
    let conn = rusqlite::Connection::open_with_flags(
        projection,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.busy_timeout(Duration::from_millis(100)).ok()?;
    conn.query_row("SELECT log_position FROM state WHERE id = 1", [], |r| {
        r.get(0)
    })
    .ok()
}

/// How a catch-up cycle picks its moment.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// A random time after the start.
    Blind(u64),
    /// A random time after the projection's position first moved.
    AfterProgress(u64),
}

/// Starts `serve` (its log in `log`) on a database whose projection is at `from`, waits for
/// `moment`, and SIGKILLs it.
async fn kill_during_start_up(config: &Path, db: &Path, from: i64, log: &Path, moment: Moment) {
    let mut child = binary()
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("serve starts");
    match moment {
        Moment::Blind(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        Moment::AfterProgress(ms) => {
            let db = db.to_owned();
            eventually_within(
                Duration::from_secs(30),
                "the projection's position moves",
                || {
                    let db = db.clone();
                    async move {
                        tokio::task::spawn_blocking(move || live_position(&db))
                            .await
                            .unwrap()
                            .is_some_and(|now| now != from)
                    }
                },
            )
            .await;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
    let _ = child.kill();
    child.wait().expect("reap the daemon");
}

/// Two tables are equal row for row; else the first row that differs is named (whole tables of
/// thousands of snapshots would drown it).
fn assert_same_rows(actual: &[Vec<String>], expected: &[Vec<String>], what: &str) {
    if let Some(row) =
        (0..actual.len().max(expected.len())).find(|&i| actual.get(i) != expected.get(i))
    {
        panic!(
            "{what}: {} rows for {} expected; row {row} begins {:?}, expected {:?}",
            actual.len(),
            expected.len(),
            actual.get(row).map(|r| &r[..4]),
            expected.get(row).map(|r| &r[..4])
        );
    }
}

/// Every customer the API lists, with its revision.
async fn listed_revisions(daemon: &Daemon, client: &reqwest::Client) -> HashMap<String, i64> {
    let mut listed = HashMap::new();
    for offset in (0..).step_by(1000) {
        let path = format!("/customers?sort=id&limit=1000&offset={offset}");
        let page = api_json(daemon, client, &path).await;
        let page = page.as_array().expect("a list");
        if page.is_empty() {
            break;
        }
        for customer in page {
            listed.insert(
                customer["id"].as_str().unwrap().to_owned(),
                customer["revision"].as_i64().unwrap(),
            );
        }
    }
    listed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_the_projection_catches_up_loses_nothing() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (config, db) = crash_config_syncing(dir.path(), "normal");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let started = std::time::Instant::now();

    // A projection copy from early on, then thousands of events it does not reflect.
    let daemon = start_daemon(&config).await;
    let mut acks = seed(&daemon, &client, 0..EARLY_CUSTOMERS, 2).await;
    daemon.stop_cleanly().await;
    let early = dir.path().join("early-projection");
    copy_with_journals(
        &rebilly_webhookd::storage::sqlite::projection_path(&db),
        &early,
    );
    let (_, _, early_position) = integrity_and_position(&db);
    let daemon = start_daemon(&config).await;
    acks.extend(
        seed(
            &daemon,
            &client,
            EARLY_CUSTOMERS..LATER_CUSTOMERS,
            LATER_REVISIONS,
        )
        .await,
    );
    daemon.stop_cleanly().await;
    let newest = acks.iter().map(|a| a.event_id).max().unwrap();
    let expected = customers_table(&db);
    eprintln!(
        "seeded {} events in {:?}; the early projection is at {early_position}",
        acks.len(),
        started.elapsed()
    );
    copy_with_journals(
        &early,
        &rebilly_webhookd::storage::sqlite::projection_path(&db),
    );

    let mut killed_mid_catch_up = 0;
    let mut from = early_position;
    for cycle in 0..CATCH_UP_CYCLES {
        let moment = if cycle % 2 == 0 {
            Moment::AfterProgress(fastrand::u64(..=AFTER_PROGRESS_MAX_MS))
        } else {
            Moment::Blind(fastrand::u64(..=CATCH_UP_KILL_MAX_MS))
        };
        let log = dir.path().join(format!("cycle-{cycle}.log"));
        let cycle_started = std::time::Instant::now();
        kill_during_start_up(&config, &db, from, &log, moment).await;
        let copy = copy_database(&db, &dir.path().join("inspect"));
        let (log_check, projection_check, position) = integrity_and_position(&copy);
        eprintln!(
            "catch-up cycle {cycle}: {moment:?}, killed after {:?} at position {position} \
             (early {early_position}, newest {newest})",
            cycle_started.elapsed()
        );
        assert_eq!(
            log_check, "ok",
            "the event log after SIGKILL in cycle {cycle}"
        );
        assert_eq!(
            projection_check, "ok",
            "the projection after SIGKILL in cycle {cycle}"
        );
        assert!(
            (from..=newest).contains(&position),
            "{position} from {from}"
        );
        // This start-up committed some of its catch-up, and not all of it.
        let killed_mid_way = position > from && position < newest;
        from = position;
        if killed_mid_way {
            killed_mid_catch_up += 1;
            let text = std::fs::read_to_string(&log).unwrap();
            assert!(
                text.contains("catching the projection up with the event log"),
                "{text}"
            );
        }
        if position == newest && cycle + 1 < CATCH_UP_CYCLES {
            // Caught up already, through the kills of earlier cycles: check it, and start
            // again from the early copy.
            assert_same_rows(
                &customers_table(&copy),
                &expected,
                &format!("the projection caught up in cycle {cycle}"),
            );
            copy_with_journals(
                &early,
                &rebilly_webhookd::storage::sqlite::projection_path(&db),
            );
            from = early_position;
        }
    }
    assert!(
        killed_mid_catch_up > 0,
        "no cycle killed the daemon in the middle of a catch-up"
    );

    let daemon = start_daemon(&config).await;
    if from < newest {
        let text = daemon.log_text();
        assert!(
            text.contains(&format!(
                "catching the projection up with the event log from={from} "
            )),
            "{text}"
        );
    }
    let highest = assert_logged(&db, &acks);
    let listed = listed_revisions(&daemon, &client).await;
    assert_eq!(listed.len(), highest.len(), "every customer is listed");
    for (customer, revision) in &highest {
        assert_eq!(listed.get(customer), Some(revision), "{customer}");
    }
    assert_projected(&daemon, &client, &highest).await;
    daemon.stop_cleanly().await;

    let (log_check, projection_check, position) = integrity_and_position(&db);
    assert_eq!(
        (log_check.as_str(), projection_check.as_str()),
        ("ok", "ok")
    );
    assert_eq!(position, newest);
    let caught_up = customers_table(&db);
    assert_same_rows(&caught_up, &expected, "the caught-up projection");
    let output = run_cli_async(&config, &["projection", "rebuild"]).await;
    assert_success(&output);
    assert_same_rows(&customers_table(&db), &caught_up, "the rebuilt projection");
    eprintln!("done in {:?}", started.elapsed());
}
