//! The PostgreSQL store on its own: the same statuses and projection as SQLite for the same
//! history, several stores (daemons) on one database, migrations racing, commit order, the
//! classification of PostgreSQL's errors, and the database going away and coming back.

use crate::common::*;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::storage::{Status, StorageError, Store};
use serde_json::json;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

/// A fresh, empty database on the test PostgreSQL, or `None` when there is none (which fails
/// the test under `CI=true`).
async fn database_url() -> Option<String> {
    crate::common::postgres::fresh_database().await
}

/// Skips the test when PostgreSQL is not available (and fails it under CI).
macro_rules! database_or_skip {
    () => {
        match database_url().await {
            Some(url) => url,
            None => {
                eprintln!("skipped: no PostgreSQL to test against");
                return;
            }
        }
    };
}

struct Local {
    _dir: tempfile::TempDir,
    store: Store,
}

fn open(storage_lines: &str) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\npath = \"{}\"\nsynchronous = \"normal\"\n{storage_lines}",
        dir.path().join("local.db").display()
    );
    let config = write_config(dir.path(), &text);
    let settings = Settings::load(Some(&config)).unwrap();
    let store = Store::open(&settings.storage).unwrap();
    Local { _dir: dir, store }
}

fn open_postgres(url: &str) -> Local {
    open(&format!(
        "backend = \"postgres\"\nurl = \"{url}\"\nconnect_timeout_seconds = 2\n"
    ))
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// What the projection holds, column by column, comparable across backends.
type CustomerRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

const CUSTOMER_COLUMNS: &str = "SELECT id, revision, event_id, snapshot, merged_into, \
     experian_event_id, experian_check FROM customers ORDER BY id";

async fn postgres_customers(url: &str) -> Vec<CustomerRow> {
    connect(url)
        .await
        .query(CUSTOMER_COLUMNS, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
            )
        })
        .collect()
}

fn sqlite_customers(local: &Local) -> Vec<CustomerRow> {
    let conn = crate::common::sqlite_connection(&local._dir.path().join("local.db"));
    let mut statement = conn.prepare(CUSTOMER_COLUMNS).unwrap();
    statement
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The log's tables as text, in the columns both backends share.
const LOG_TABLES: [&str; 3] = [
    "SELECT id, event_type, customer_id, revision, status, error, error_field, duplicate_of, \
     body_size, body IS NULL, projected_revision, source FROM events ORDER BY id",
    "SELECT event_id, customer_id FROM event_customers ORDER BY event_id, customer_id",
    "SELECT key, event_id FROM dedupe_keys ORDER BY event_id, key",
];

/// Every value as the same text whichever database it came from.
fn text_of_postgres(row: &tokio_postgres::Row, i: usize) -> String {
    use tokio_postgres::types::Type;
    let column = &row.columns()[i];
    match *column.type_() {
        Type::INT8 => format!("{:?}", row.get::<_, Option<i64>>(i)),
        Type::BOOL => format!("{:?}", row.get::<_, Option<bool>>(i).map(i64::from)),
        Type::BYTEA => format!("{:?}", row.get::<_, Option<Vec<u8>>>(i)),
        _ => format!("{:?}", row.get::<_, Option<String>>(i)),
    }
}

async fn postgres_rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    connect(url)
        .await
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (0..row.len()).map(|i| text_of_postgres(row, i)).collect())
        .collect()
}

fn sqlite_rows(local: &Local, sql: &str) -> Vec<Vec<String>> {
    use rusqlite::types::Value;
    let conn = crate::common::sqlite_connection(&local._dir.path().join("local.db"));
    let mut statement = conn.prepare(sql).unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            (0..columns)
                .map(|i| {
                    Ok(match row.get::<_, Value>(i)? {
                        Value::Null => "None".to_owned(),
                        Value::Integer(n) => format!("{:?}", Some(n)),
                        Value::Text(t) => format!("{:?}", Some(t)),
                        Value::Blob(b) => format!("{:?}", Some(b)),
                        Value::Real(r) => format!("{:?}", Some(r)),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A shuffled, redelivered history over every rule: revisions out of order, byte-identical and
/// semantic redeliveries, snapshots without revisions, Experian checks, merges arriving before
/// and after the customers' events, events of other types and unusable bodies.
fn history(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut bodies = Vec::new();
    for customer in 0..5 {
        let id = format!("cus_{customer}");
        for revision in 1..=6 {
            bodies.push(customer_event("customer-updated", &id, revision, json!({})));
        }
        bodies.push(customer_event(
            "customer-updated",
            &id,
            rng.i64(1..=6),
            json!({"note": "same revision, other bytes"}),
        ));
        bodies.push(experian_event(
            &id,
            rng.i64(1..=6),
            rng.i64(-1..=1),
            &format!("check {}", rng.u32(..)),
            "001",
            "",
        ));
    }
    for (i, updated) in [
        Some("2026-03-01T10:00:00Z"),
        Some("2026-03-01T11:00:00Z"),
        Some("2026-03-01T11:00:00Z"),
        None,
        Some("2026-03-01T09:00:00+02:00"),
    ]
    .into_iter()
    .enumerate()
    {
        bodies.push(unrevisioned_event(
            "customer-updated",
            "cus_plain",
            updated,
            json!({"step": i}),
        ));
    }
    bodies.push(merge_event("cus_3", Some(rng.i64(1..=8)), "cus_4", 9));
    bodies.push(merge_event("cus_2", None, "cus_4", 10));
    bodies.push(merge_event("cus_target", Some(2), "cus_gone", 1));
    bodies.push(customer_event("customer-created", "cus_gone", 5, json!({})));
    bodies.push(br#"{"eventType":"invoice-paid","invoiceId":"in_1"}"#.to_vec());
    // NUL characters, which PostgreSQL's text cannot hold, in copied and kept fields alike.
    bodies.push(customer_event(
        "customer-created",
        "cus_nul",
        1,
        json!({"lastName": "Nul\u{0}Byte", "email": "a\u{0}@example.com",
               "customFields": {"note": "\u{0}"}}),
    ));
    bodies.push(br#"{"eventType":"customer-updated","customerId":"cus_nul","_embedded":{"customer":{"id":"cus_nul","revision":"2\u0000"}}}"#.to_vec());
    bodies.push(br#"{"eventType":"customer-updated","customerId":"not valid!"}"#.to_vec());
    bodies.push(b"[1, 2, 3]".to_vec());
    rng.shuffle(&mut bodies);
    // Redeliveries, byte for byte, of a few bodies seen earlier.
    for _ in 0..8 {
        let again = bodies[rng.usize(..bodies.len())].clone();
        let at = rng.usize(..=bodies.len());
        bodies.insert(at, again);
    }
    bodies
}

fn authenticated(body: &[u8]) -> AuthenticatedBody {
    AuthenticatedBody::from_operator(body.to_vec().into())
}

/// Submits one body after the other, each its own batch.
async fn submit_one_by_one(store: &Store, bodies: &[Vec<u8>]) -> Vec<(i64, Status)> {
    let pipeline = Pipeline::new(store.clone());
    let mut answers = Vec::new();
    for body in bodies {
        let receipt = pipeline.submit(authenticated(body)).await.unwrap();
        answers.push((receipt.event_id, receipt.status));
    }
    answers
}

/// Queues every body at once, so that the writer commits them in batches.
async fn submit_as_burst(store: &Store, bodies: &[Vec<u8>]) -> Vec<(i64, Status)> {
    let pipeline = Pipeline::new(store.clone());
    let mut pending = Vec::new();
    for body in bodies {
        pending.push(pipeline.enqueue(authenticated(body)).await.unwrap());
    }
    let mut answers = Vec::new();
    for answer in pending {
        let receipt = answer.await.unwrap();
        answers.push((receipt.event_id, receipt.status));
    }
    answers
}

#[tokio::test]
async fn statuses_and_projection_equal_sqlites_for_the_same_history() {
    let url = database_or_skip!();
    for seed in [1, 2] {
        let url = if seed == 1 {
            url.clone()
        } else {
            match database_url().await {
                Some(url) => url,
                None => return,
            }
        };
        let bodies = history(seed);
        let sqlite = open("");
        let expected = submit_one_by_one(&sqlite.store, &bodies).await;
        let postgres = open_postgres(&url);
        let got = submit_as_burst(&postgres.store, &bodies).await;
        assert_eq!(got, expected, "seed {seed}");
        let statuses: BTreeSet<&str> = got.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(
            statuses.len(),
            5,
            "the history covers every status: {statuses:?}"
        );
        assert_eq!(postgres_customers(&url).await, sqlite_customers(&sqlite));
        for sql in LOG_TABLES {
            assert_eq!(
                postgres_rows(&url, sql).await,
                sqlite_rows(&sqlite, sql),
                "seed {seed}: {sql}"
            );
        }
        sqlite.store.close().await;
        postgres.store.close().await;
    }
}

#[tokio::test]
async fn a_rebuild_reproduces_the_live_projection() {
    let url = database_or_skip!();
    let postgres = open_postgres(&url);
    submit_as_burst(&postgres.store, &history(3)).await;
    let live = postgres_customers(&url).await;
    let reported = Arc::new(Mutex::new(Vec::new()));
    let seen = reported.clone();
    let report = postgres
        .store
        .rebuild_projection_reporting(false, move |done, total| {
            seen.lock().unwrap().push((done, total))
        })
        .await
        .unwrap();
    assert!(report.replayed > 40, "{report:?}");
    assert!(report.skipped_unparsable.is_empty());
    assert_eq!(postgres_customers(&url).await, live);
    let last = *reported.lock().unwrap().last().unwrap();
    assert_eq!(last, (report.replayed, report.replayed));
    // Dedupe keys were recomputed: a redelivery is still a duplicate.
    let again = submit_one_by_one(&postgres.store, &history(3)[..1]).await;
    assert_eq!(again[0].1, Status::Duplicate);
    postgres.store.close().await;
}

#[tokio::test]
async fn fifty_revisions_across_two_daemons_end_at_the_highest() {
    let url = database_or_skip!();
    let daemons = [open_postgres(&url), open_postgres(&url)];
    let mut order: Vec<i64> = (1..=50).collect();
    fastrand::Rng::with_seed(7).shuffle(&mut order);
    let mut deliveries = Vec::new();
    for (i, revision) in order.iter().enumerate() {
        let store = daemons[i % 2].store.clone();
        let body = customer_event("customer-updated", "cus_race", *revision, json!({}));
        // Every revision twice, byte for byte, through the other daemon as well.
        let other = daemons[(i + 1) % 2].store.clone();
        for (store, body) in [(store, body.clone()), (other, body)] {
            deliveries.push(tokio::spawn(async move {
                Pipeline::new(store)
                    .submit(authenticated(&body))
                    .await
                    .unwrap()
            }));
        }
    }
    let mut receipts = Vec::new();
    for delivery in deliveries {
        receipts.push(delivery.await.unwrap());
    }
    let ids: BTreeSet<i64> = receipts.iter().map(|r| r.event_id).collect();
    assert_eq!(ids, (1..=100).collect(), "one id each, in one sequence");
    let duplicates = receipts
        .iter()
        .filter(|r| r.status == Status::Duplicate)
        .count();
    assert_eq!(duplicates, 50, "each revision is stored once");
    let customers = postgres_customers(&url).await;
    assert_eq!(customers[0].1, Some(50));
    // The status of each event is the one SQLite gives the same history in commit order.
    let client = connect(&url).await;
    let bodies: Vec<Vec<u8>> = client
        .query(
            "SELECT COALESCE(e.body, o.body) FROM events e
             LEFT JOIN events o ON o.id = e.duplicate_of ORDER BY e.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let sqlite = open("");
    let expected = submit_one_by_one(&sqlite.store, &bodies).await;
    let mut got: Vec<(i64, Status)> = receipts.iter().map(|r| (r.event_id, r.status)).collect();
    got.sort_by_key(|(id, _)| *id);
    assert_eq!(got, expected);
    for daemon in &daemons {
        daemon.store.close().await;
    }
    sqlite.store.close().await;
}

#[tokio::test]
async fn a_daemon_learns_of_the_commits_of_another() {
    let url = database_or_skip!();
    let first = open_postgres(&url);
    let second = open_postgres(&url);
    // The first call migrates; then the second's listener is up.
    second.store.probe_write().await.unwrap();
    let mut watch = second.store.committed();
    let receipts = submit_one_by_one(
        &first.store,
        &[customer_event(
            "customer-created",
            "cus_elsewhere",
            1,
            json!({}),
        )],
    )
    .await;
    let id = receipts[0].0;
    tokio::time::timeout(Duration::from_secs(10), async {
        while *watch.borrow_and_update() < id {
            watch.changed().await.unwrap();
        }
    })
    .await
    .expect("the other daemon's commit was announced");
    first.store.close().await;
    second.store.close().await;
}

#[tokio::test]
async fn daemons_starting_at_once_migrate_once() {
    let url = database_or_skip!();
    let daemons: Vec<Local> = (0..4).map(|_| open_postgres(&url)).collect();
    let probes = daemons.iter().map(|d| {
        let store = d.store.clone();
        tokio::spawn(async move { store.probe_write().await })
    });
    for probe in probes.collect::<Vec<_>>() {
        probe.await.unwrap().unwrap();
    }
    let versions: i64 = connect(&url)
        .await
        .query_one("SELECT COUNT(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(versions >= 1);
    for daemon in &daemons {
        daemon.store.close().await;
    }
}

#[tokio::test]
async fn postgres_errors_that_pass_are_transient_and_defects_are_not() {
    let url = database_or_skip!();
    let client = connect(&url).await;
    let defect = client.query("SELECT 1 / 0", &[]).await.unwrap_err();
    assert!(!StorageError::from(defect).is_transient());
    let syntax = client.query("SELEC 1", &[]).await.unwrap_err();
    assert!(!StorageError::from(syntax).is_transient());
    client
        .batch_execute(
            "CREATE TABLE unique_probe (id INT PRIMARY KEY); INSERT INTO unique_probe VALUES (1)",
        )
        .await
        .unwrap();
    let constraint = client
        .execute("INSERT INTO unique_probe VALUES (1)", &[])
        .await
        .unwrap_err();
    assert!(!StorageError::from(constraint).is_transient());

    // An administrator ending the session (57P01), then the closed connection.
    let victim = connect(&url).await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    for _ in 0..2 {
        let ended = victim.query("SELECT 1", &[]).await.unwrap_err();
        assert!(StorageError::from(ended).is_transient());
    }

    // A deadlock between two transactions: whichever PostgreSQL aborts is told to retry.
    client
        .batch_execute("CREATE TABLE deadlock_probe (id INT PRIMARY KEY); INSERT INTO deadlock_probe VALUES (1), (2)")
        .await
        .unwrap();
    let (a, b) = (connect(&url).await, connect(&url).await);
    a.batch_execute("BEGIN; UPDATE deadlock_probe SET id = id WHERE id = 1")
        .await
        .unwrap();
    b.batch_execute("BEGIN; UPDATE deadlock_probe SET id = id WHERE id = 2")
        .await
        .unwrap();
    let (first, second) = tokio::join!(
        a.batch_execute("UPDATE deadlock_probe SET id = id WHERE id = 2"),
        b.batch_execute("UPDATE deadlock_probe SET id = id WHERE id = 1"),
    );
    let lost = first.err().or(second.err()).expect("one side deadlocked");
    assert_eq!(
        lost.code(),
        Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED)
    );
    assert!(StorageError::from(lost).is_transient());

    // Nothing listening: refused at once.
    let closed = free_port().await;
    let refused = tokio_postgres::connect(
        &format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
        NoTls,
    )
    .await
    .err()
    .unwrap();
    assert!(StorageError::from(refused).is_transient());
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP relay to the database that the test can cut (every connection dropped, nothing
/// accepted) and restore on the same port: the database going away and coming back.
struct Relay {
    port: u16,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: SocketAddr) -> Self {
        let relay = Self {
            port: free_port().await,
            upstream,
            tasks: Arc::default(),
        };
        relay.restore().await;
        relay
    }

    async fn restore(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let upstream = self.upstream;
        let tasks = self.tasks.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relayed = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(relayed);
            }
        });
        self.tasks.lock().unwrap().push(accepting);
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test]
async fn losing_the_database_answers_transient_errors_and_recovers_by_itself() {
    let url = database_or_skip!();
    let config = tokio_postgres::Config::from_str(&url).unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("a TCP host is needed: {other:?}"),
    };
    let upstream: SocketAddr = tokio::net::lookup_host((host.as_str(), config.get_ports()[0]))
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(upstream).await;
    let relayed = url
        .replacen(
            &format!(":{}/", upstream.port()),
            &format!(":{}/", relay.port),
            1,
        )
        .replacen(&host, "127.0.0.1", 1);
    assert!(relayed.contains(&format!(":{}/", relay.port)), "{relayed}");
    let postgres = open_postgres(&relayed);
    let pipeline = Pipeline::new(postgres.store.clone());
    let mut acknowledged = Vec::new();
    let mut revision = 0;
    let mut deliver = |pipeline: Pipeline| {
        revision += 1;
        let body = customer_event("customer-updated", "cus_outage", revision, json!({}));
        async move { pipeline.submit(authenticated(&body)).await }
    };
    acknowledged.push(deliver(pipeline.clone()).await.unwrap().event_id);
    postgres.store.probe_write().await.unwrap();

    relay.cut();
    for _ in 0..3 {
        let error = deliver(pipeline.clone()).await.expect_err("no database");
        assert!(error.is_transient(), "{error}");
        let probe = postgres.store.probe_write().await.expect_err("not ready");
        assert!(probe.is_transient(), "{probe}");
    }

    relay.restore().await;
    let mut recovered = None;
    for _ in 0..50 {
        match deliver(pipeline.clone()).await {
            Ok(receipt) => {
                recovered = Some(receipt);
                break;
            }
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let receipt = recovered.expect("deliveries flow again without a restart");
    assert_eq!(receipt.status, Status::Applied);
    acknowledged.push(receipt.event_id);
    postgres.store.probe_write().await.unwrap();
    let stored: Vec<i64> = connect(&url)
        .await
        .query("SELECT id FROM events ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, acknowledged, "exactly the acknowledged deliveries");
    postgres.store.close().await;
    relay.cut();
}

/// Five deliveries queued at once, the third of which the database refuses (a constraint of
/// the operator's): it fails alone, not transient, and the others commit, numbered without a
/// gap. `customers` lists the projected ids.
async fn assert_a_refused_delivery_fails_alone(
    store: &Store,
    customers: impl AsyncFn() -> Vec<String>,
) {
    let bodies: Vec<Vec<u8>> = ["cus_a", "cus_b", "cus_poison", "cus_c", "cus_d"]
        .iter()
        .map(|id| customer_event("customer-created", id, 1, json!({})))
        .collect();
    let pipeline = Pipeline::new(store.clone());
    let mut pending = Vec::new();
    for body in &bodies {
        pending.push(pipeline.enqueue(authenticated(body)).await.unwrap());
    }
    let mut answers = Vec::new();
    for answer in pending {
        answers.push(answer.await);
    }
    let Err(error) = &answers[2] else {
        panic!("the poisoned delivery fails");
    };
    assert!(!error.is_transient(), "{error}");
    let stored: Vec<(i64, Status)> = answers
        .iter()
        .filter_map(|answer| answer.as_ref().ok())
        .map(|receipt| (receipt.event_id, receipt.status))
        .collect();
    assert_eq!(
        stored,
        (1..=4).map(|id| (id, Status::Applied)).collect::<Vec<_>>(),
        "the others are committed, numbered without a gap"
    );
    assert_eq!(customers().await, ["cus_a", "cus_b", "cus_c", "cus_d"]);
}

#[tokio::test]
async fn a_delivery_the_database_refuses_fails_alone_and_its_batch_commits() {
    let url = database_or_skip!();
    let postgres = open_postgres(&url);
    postgres.store.probe_write().await.unwrap();
    connect(&url)
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.id = 'cus_poison' THEN RAISE EXCEPTION 'poisoned customer'; END IF;
                 RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON customers
                 FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .unwrap();
    assert_a_refused_delivery_fails_alone(&postgres.store, async || {
        postgres_customers(&url)
            .await
            .into_iter()
            .map(|row| row.0)
            .collect()
    })
    .await;
    postgres.store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sqlite_a_delivery_the_database_refuses_fails_alone_and_its_batch_commits() {
    let sqlite = open("");
    sqlite.store.probe_write().await.unwrap();
    let db = sqlite._dir.path().join("local.db");
    sqlite_connection(&db)
        .execute_batch(
            "CREATE TRIGGER projection.refuse_poison BEFORE INSERT ON customers
             WHEN NEW.id = 'cus_poison' BEGIN SELECT RAISE(ABORT, 'poisoned customer'); END;",
        )
        .unwrap();
    // The write lock, held while the deliveries queue, gathers them into batches of several.
    let lock = WriteLock::take(&db);
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lock.release();
    });
    assert_a_refused_delivery_fails_alone(&sqlite.store, async || {
        sqlite_customers(&sqlite)
            .into_iter()
            .map(|row| row.0)
            .collect()
    })
    .await;
    release.await.unwrap();
    sqlite.store.close().await;
}
