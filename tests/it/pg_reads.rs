//! The PostgreSQL read side and handler state through the `Store`: the same answers as SQLite
//! for the same history (lists with the whole filter grammar, sorting, search, paging, the
//! event log, event details and bodies), and a handler worked by one daemon at a time, handed
//! over when its daemon stops or dies, never stranding what that daemon had in hand.

use crate::common::cluster::Cluster;
use crate::common::postgres::{fresh_database, with_database};
use crate::common::*;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::{HandlerKind, HandlerSettings, HandlerStart, Settings};
use rebilly_webhookd::dispatch::Worker;
use rebilly_webhookd::handlers::{AsyncHandler, DispatchedEvent, HandlerFuture};
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::query::{CustomerQuery, EventListOptions, ListOptions, parse_event_query};
use rebilly_webhookd::storage::{HANDLER_LEASE, Outcome, StorageError, Store, Work};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::NoTls;

struct Daemon {
    _dir: tempfile::TempDir,
    store: Store,
}

fn open(storage_lines: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[storage]\npath = \"{}\"\n{storage_lines}",
        dir.path().join("local.db").display()
    );
    let settings = Settings::load(Some(&write_config(dir.path(), &text))).unwrap();
    let store = Store::open(&settings.storage).unwrap();
    Daemon { _dir: dir, store }
}

fn open_postgres(url: &str) -> Daemon {
    open(&format!("backend = \"postgres\"\nurl = \"{url}\"\n"))
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A fresh database, or the test returns (having said so, or failed under `CI=true`).
macro_rules! database_or_skip {
    () => {
        match fresh_database().await {
            Some(url) => url,
            None => return,
        }
    };
}

async fn submit(store: &Store, bodies: &[Vec<u8>]) -> Vec<i64> {
    let pipeline = Pipeline::new(store.clone());
    let mut ids = Vec::new();
    for body in bodies {
        let receipt = pipeline
            .submit(AuthenticatedBody::from_operator(body.clone().into()))
            .await
            .unwrap();
        ids.push(receipt.event_id);
    }
    ids
}

/// Customers that differ in every listed field: mixed-case and accented names (ordered by code
/// point), missing fields (ordered first ascending), custom fields of every JSON type, merges,
/// Experian checks, revisions out of order and redeliveries.
fn varied_history() -> Vec<Vec<u8>> {
    let names = [
        "Smith", "smith", "Émile", "adams", "Zed", "O'Brien", "50% off",
    ];
    let countries = ["FR", "DE", "US"];
    let tiers = [
        json!("gold"),
        json!("silver"),
        json!(42),
        json!(1.50),
        json!(true),
        json!({"nested": 1}),
        json!(["gold"]),
        json!(null),
    ];
    let mut rng = fastrand::Rng::with_seed(23);
    let mut bodies = Vec::new();
    for n in 0..60 {
        let id = format!("cus_{}{n}", ["a", "B", "z", "_"][n % 4]);
        let mut address = json!({
            "firstName": "Test",
            "lastName": names[rng.usize(..names.len())],
            "city": "Lyon",
            "emails": [{"value": format!("mail{}@example.com", n % 9)}],
        });
        if rng.u8(..5) > 0 {
            address["country"] = json!(countries[rng.usize(..countries.len())]);
        }
        if rng.bool() {
            address["region"] = json!(["QC", "ON"][rng.usize(..2)]);
        }
        let mut extra = json!({
            "lastName": address["lastName"].clone(),
            "email": format!("mail{}@example.com", n % 9),
            "primaryAddress": address,
            "createdTime": format!("2026-0{}-0{}T1{}:00:00+0{}:00",
                rng.u8(1..10), rng.u8(1..10), rng.u8(0..10), rng.u8(0..4)),
        });
        if rng.u8(..4) > 0 {
            extra["customFields"] = json!({"tier": tiers[rng.usize(..tiers.len())].clone()});
        }
        // Null rather than left out: the base resource has them.
        if rng.u8(..6) == 0 {
            extra["createdTime"] = json!(null);
        }
        if rng.u8(..7) == 0 {
            extra["lastName"] = json!(null);
            extra["primaryAddress"]
                .as_object_mut()
                .unwrap()
                .remove("lastName");
        }
        let revisions = rng.i64(1..4);
        for revision in (1..=revisions).rev() {
            bodies.push(customer_event(
                "customer-updated",
                &id,
                revision,
                extra.clone(),
            ));
        }
        if n % 11 == 3 {
            bodies.push(experian_event(&id, 1, 1, "ok", "", ""));
        }
    }
    bodies.push(merge_event("cus_a0", Some(9), "cus_B1", 5));
    bodies.push(bodies[0].clone());
    bodies
}

fn customer_queries() -> Vec<ListOptions> {
    let filters = [
        "",
        "country:FR",
        "country:!FR",
        "country:!FR,!DE",
        "country:FR,!DE;lastName:Smith,smith",
        "revision:2..3,!3",
        "revision:..1",
        "createdTime:2026-03-01T00:00:00Z..",
        "createdTime:..2026-05-01T02:00:00+02:00",
        "customFields.tier:gold",
        "customFields.tier:!gold",
        "customFields.tier:42,1.50,true",
        "primaryAddress.region:QC",
        "region:!QC;country:DE",
        "id:cus_a0,cus_B1,cus_z2",
        // A NUL character, which PostgreSQL's text cannot hold: it matches nothing.
        "lastName:!a\u{0}b;country:FR,x\u{0}",
    ];
    let sorts = [
        None,
        Some("lastName"),
        Some("-primaryAddress.lastName"),
        Some("-createdTime,lastName"),
        Some("createdTime"),
        Some("revision,-id"),
        Some("-email"),
    ];
    let searches = [
        None,
        Some("mail3"),
        Some("SMI"),
        Some("%"),
        Some("_"),
        Some("smi\u{0}"),
    ];
    let mut queries = Vec::new();
    for filter in filters {
        for sort in sorts {
            for q in searches {
                for (limit, offset) in [("100", "0"), ("4", "3"), ("5", "1000")] {
                    queries.push(ListOptions {
                        filter: (!filter.is_empty()).then(|| filter.to_owned()),
                        sort: sort.map(str::to_owned),
                        q: q.map(str::to_owned),
                        limit: Some(limit.to_owned()),
                        offset: Some(offset.to_owned()),
                        fields: (offset == "3").then(|| "id,mergedInto,experianCheck".to_owned()),
                    });
                }
            }
        }
    }
    queries
}

/// A database beside the one at `url` whose text collation is a natural language's (where
/// `adams` sorts before `Smith`), as production databases often have, when the server offers
/// ICU; else the database at `url`.
async fn database_sorting_by_language(url: &str) -> String {
    let name = format!("by_language_{:016x}", fastrand::u64(..));
    let created = connect(url)
        .await
        .batch_execute(&format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' \
             LOCALE 'C.UTF-8'"
        ))
        .await;
    match created {
        Ok(()) => with_database(url, &name),
        Err(error) => {
            eprintln!("no ICU collation ({error}): lists are compared on the server's own");
            url.to_owned()
        }
    }
}

#[tokio::test]
async fn reads_answer_as_sqlite_does_for_the_same_history() {
    let url = database_sorting_by_language(&database_or_skip!()).await;
    let postgres = open_postgres(&url);
    let sqlite = open("");
    let history = varied_history();
    let ids = submit(&postgres.store, &history).await;
    assert_eq!(submit(&sqlite.store, &history).await, ids);

    let mut compared = 0;
    for options in customer_queries() {
        let query = CustomerQuery::parse(&options).unwrap();
        let want = sqlite.store.customers(query.clone()).await.unwrap();
        let got = postgres.store.customers(query).await.unwrap();
        assert_eq!(got.total, want.total, "{options:?}");
        assert_eq!(got.customers, want.customers, "{options:?}");
        compared += usize::from(!want.customers.is_empty());
    }
    assert!(compared > 300, "most queries list someone: {compared}");
    for id in ["cus_a0", "cus_B1", "cus_z2", "cus_unknown", "cus_a0\u{0}"] {
        let want = sqlite.store.customer(id.to_owned()).await.unwrap();
        assert_eq!(postgres.store.customer(id.to_owned()).await.unwrap(), want);
    }

    for filter in [
        None,
        Some("status:applied"),
        Some("status:!applied,!stale"),
        Some("revision:2..;eventType:customer-updated"),
        Some("id:..10,!3"),
        Some("receivedTime:2000-01-01T00:00:00Z.."),
        Some("customerId:cus_a0,x\u{0}"),
        Some("customerId:!cus_a0"),
        Some("customerId:cus_a0,cus_B1,!cus_B1;status:!duplicate"),
        Some("customerId:!cus_a0,!cus_z2;revision:2.."),
    ] {
        for (limit, offset) in [("100", "0"), ("7", "5"), ("3", "900")] {
            let query = parse_event_query(&EventListOptions {
                filter: filter.map(str::to_owned),
                customer_id: None,
                status: None,
                event_type: None,
                limit: Some(limit.to_owned()),
                offset: Some(offset.to_owned()),
            })
            .unwrap();
            let (want, want_total) = sqlite.store.events(query.clone()).await.unwrap();
            let (got, got_total) = postgres.store.events(query).await.unwrap();
            assert_eq!(got_total, want_total, "{filter:?}");
            let strip = |records: Vec<rebilly_webhookd::storage::EventRecord>| {
                // Received times differ between the two runs; everything else is the same.
                records
                    .into_iter()
                    .map(|r| {
                        (
                            r.id,
                            r.event_type,
                            r.customer_id,
                            r.revision,
                            r.status,
                            r.error,
                        )
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(strip(got), strip(want), "{filter:?}");
        }
    }
    for &id in ids.iter().chain([&0, &99_999]) {
        let want = sqlite.store.event(id).await.unwrap();
        let got = postgres.store.event(id).await.unwrap();
        assert_eq!(
            got.map(|d| (
                d.record.id,
                d.record.status,
                d.duplicate_of,
                d.body_size,
                d.body
            )),
            want.map(|d| (
                d.record.id,
                d.record.status,
                d.duplicate_of,
                d.body_size,
                d.body
            )),
            "event {id}"
        );
        assert_eq!(
            postgres.store.raw_body(id).await.unwrap(),
            sqlite.store.raw_body(id).await.unwrap(),
            "body {id}"
        );
    }
    postgres.store.close().await;
    sqlite.store.close().await;
}

fn ids(work: &Work) -> Vec<i64> {
    work.due
        .iter()
        .chain(&work.fresh)
        .map(|c| c.event.id)
        .collect()
}

/// Lets every lease lapse, as if its daemon had died `LEASE` ago.
async fn lapse_leases(url: &str) {
    connect(url)
        .await
        .execute("UPDATE handler_cursors SET lease_until_ms = 0", &[])
        .await
        .unwrap();
}

fn delivered(work: &Work) -> Vec<(DispatchedEvent, Outcome)> {
    work.fresh
        .iter()
        .map(|c| (c.event.clone(), Outcome::Delivered))
        .collect()
}

#[tokio::test]
async fn one_daemon_at_a_time_works_a_handler_and_a_dead_one_strands_nothing() {
    let url = database_or_skip!();
    let first = open_postgres(&url);
    let second = open_postgres(&url);
    let events: Vec<Vec<u8>> = (1..=3)
        .map(|revision| customer_event("customer-updated", "cus_lease", revision, json!({})))
        .collect();
    let applied = submit(&first.store, &events).await;
    for daemon in [&first, &second] {
        let cursor = daemon
            .store
            .start_handler("crm".into(), HandlerStart::Beginning)
            .await
            .unwrap();
        assert_eq!(cursor, 0);
    }

    let work = first.store.handler_work("crm".into(), 10).await.unwrap();
    assert_eq!(ids(&work), applied);
    let idle = second.store.handler_work("crm".into(), 10).await.unwrap();
    assert!(ids(&idle).is_empty(), "the first daemon holds the handler");

    // The first daemon dies in the middle of its pass: nothing recorded. Once its lease lapses,
    // the second takes the handler over from where it was, the same events in hand.
    lapse_leases(&url).await;
    let taken_over = second.store.handler_work("crm".into(), 10).await.unwrap();
    assert_eq!(ids(&taken_over), applied);
    // A daemon that lost the handler records nothing of its pass.
    let late = first
        .store
        .record_handler_pass("crm".into(), work.fresh[2].event.id, delivered(&work))
        .await;
    assert!(matches!(late, Err(StorageError::LeaseLost(_))), "{late:?}");
    let stats = second.store.handler_stats("crm".into()).await.unwrap();
    assert_eq!(stats.behind, 3, "nothing of the dead daemon's pass counts");

    second
        .store
        .record_handler_pass(
            "crm".into(),
            taken_over.fresh[2].event.id,
            delivered(&taken_over),
        )
        .await
        .unwrap();
    let stats = first.store.handler_stats("crm".into()).await.unwrap();
    assert_eq!((stats.behind, stats.pending, stats.dead), (0, 0, 0));
    // The first daemon waits while the second renews its lease with every look.
    let more = submit(
        &first.store,
        &[customer_event(
            "customer-updated",
            "cus_lease",
            4,
            json!({}),
        )],
    )
    .await;
    assert!(ids(&first.store.handler_work("crm".into(), 10).await.unwrap()).is_empty());
    assert_eq!(
        ids(&second.store.handler_work("crm".into(), 10).await.unwrap()),
        more
    );
    first.store.close().await;
    second.store.close().await;
}

#[tokio::test]
async fn a_stopping_daemon_hands_its_handlers_over_at_once() {
    let url = database_or_skip!();
    let first = open_postgres(&url);
    let second = open_postgres(&url);
    let applied = submit(
        &first.store,
        &[customer_event(
            "customer-created",
            "cus_handover",
            1,
            json!({}),
        )],
    )
    .await;
    first
        .store
        .start_handler("crm".into(), HandlerStart::Beginning)
        .await
        .unwrap();
    assert_eq!(
        ids(&first.store.handler_work("crm".into(), 10).await.unwrap()),
        applied
    );
    assert!(ids(&second.store.handler_work("crm".into(), 10).await.unwrap()).is_empty());
    first.store.close().await;
    assert_eq!(
        ids(&second.store.handler_work("crm".into(), 10).await.unwrap()),
        applied
    );
    second.store.close().await;
}

#[tokio::test]
async fn daemons_racing_for_a_lapsed_handler_take_it_once() {
    let url = database_or_skip!();
    let daemons: Vec<Daemon> = (0..4).map(|_| open_postgres(&url)).collect();
    submit(
        &daemons[0].store,
        &[customer_event("customer-created", "cus_race", 1, json!({}))],
    )
    .await;
    daemons[0]
        .store
        .start_handler("crm".into(), HandlerStart::Beginning)
        .await
        .unwrap();
    for round in 0..10 {
        lapse_leases(&url).await;
        let looks: Vec<_> = daemons
            .iter()
            .map(|daemon| {
                let store = daemon.store.clone();
                tokio::spawn(async move { store.handler_work("crm".into(), 10).await.unwrap() })
            })
            .collect();
        let mut holders = 0;
        for look in looks {
            holders += usize::from(!ids(&look.await.unwrap()).is_empty());
        }
        assert_eq!(holders, 1, "round {round}");
    }
    for daemon in &daemons {
        daemon.store.close().await;
    }
}

/// One handler call: the event, when it started and when it ended.
type Call = (i64, Instant, Option<Instant>);

/// Records every call, and takes `slow` over the first one.
struct Recorder {
    calls: Arc<Mutex<Vec<Call>>>,
    slow: Duration,
}

impl AsyncHandler for Recorder {
    fn handle<'a>(&'a self, event: &'a DispatchedEvent) -> HandlerFuture<'a> {
        Box::pin(async move {
            let at = {
                let mut calls = self.calls.lock().unwrap();
                calls.push((event.id, Instant::now(), None));
                calls.len() - 1
            };
            if at == 0 {
                tokio::time::sleep(self.slow).await;
            }
            self.calls.lock().unwrap()[at].2 = Some(Instant::now());
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_pass_longer_than_the_lease_keeps_the_handler_to_itself() {
    let url = database_or_skip!();
    let first = open_postgres(&url);
    let second = open_postgres(&url);
    let applied = submit(
        &first.store,
        &[1, 2].map(|revision| customer_event("customer-updated", "cus_slow", revision, json!({}))),
    )
    .await;
    let settings = HandlerSettings {
        name: "crm".into(),
        kind: HandlerKind::Log,
        max_attempts: 3,
        backoff_initial_ms: 10,
        backoff_max_ms: 10,
        start: HandlerStart::Beginning,
    };
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (stop, stopped) = watch::channel(false);
    let recorder = || {
        Box::new(Recorder {
            calls: calls.clone(),
            // Longer than the lease: only renewals during the pass keep it.
            slow: HANDLER_LEASE + Duration::from_secs(3),
        })
    };
    let workers = [
        tokio::spawn(
            Worker::with_handler(&settings, recorder(), first.store.clone()).run(stopped.clone()),
        ),
        tokio::spawn(
            Worker::with_handler(&settings, recorder(), second.store.clone()).run(stopped.clone()),
        ),
    ];
    let deadline = Instant::now() + HANDLER_LEASE * 3;
    loop {
        let delivered: Vec<i64> = calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, ended)| ended.is_some())
            .map(|(id, _, _)| *id)
            .collect();
        if applied.iter().all(|id| delivered.contains(id)) {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {delivered:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    for worker in workers {
        worker.await.unwrap();
    }
    let calls = calls.lock().unwrap().clone();
    let ids: Vec<i64> = calls.iter().map(|(id, _, _)| *id).collect();
    assert_eq!(
        ids, applied,
        "each once, in order: the slow pass kept its lease"
    );
    for pair in calls.windows(2) {
        assert!(
            pair[0].2.unwrap() <= pair[1].1,
            "one call at a time: {calls:?}"
        );
    }
    first.store.close().await;
    second.store.close().await;
}

/// A forward target whose first request never gets an answer (its daemon dies while it
/// waits); it accepts every later one, recording (customer revision, event).
#[derive(Default)]
struct HangingTarget {
    requests: std::sync::atomic::AtomicUsize,
    accepted: Mutex<Vec<i64>>,
}

async fn hang_first(
    axum::extract::State(target): axum::extract::State<Arc<HangingTarget>>,
    body: axum::body::Bytes,
) -> axum::http::StatusCode {
    if target
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        == 0
    {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let revision = json["_embedded"]["customer"]["revision"].as_i64().unwrap();
    target.accepted.lock().unwrap().push(revision);
    axum::http::StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_mid_attempt_strands_nothing() {
    let url = database_or_skip!();
    let target = Arc::new(HangingTarget::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hang_first))
        .with_state(target.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let handler = format!(
        "[[handlers]]\nname = \"crm\"\nkind = \"forward\"\nurl = \"{hook}\"\n\
         timeout_seconds = 600\nstart = \"beginning\"\n"
    );
    let mut cluster = Cluster::start(&url, 2, &handler).await;
    for revision in 1..=3 {
        let body = customer_event("customer-updated", "cus_killed", revision, json!({}));
        let response = cluster.deliver_to(revision as usize, body).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    eventually_within(
        Duration::from_secs(30),
        "the first attempt hangs",
        || async { target.requests.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    // The daemon holding the handler is named by its lease: `{pid}-{random}`.
    let owner: String = connect(&url)
        .await
        .query_one(
            "SELECT lease_owner FROM handler_cursors WHERE handler = 'crm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let pid: u32 = owner.split('-').next().unwrap().parse().unwrap();
    let holder = cluster
        .daemons
        .iter()
        .position(|d| d.pid() == pid)
        .expect("a daemon of the cluster holds the handler");
    cluster.daemons[holder].kill();
    eventually_within(
        HANDLER_LEASE + Duration::from_secs(30),
        "the other daemon delivers what the killed one had in hand",
        || async { target.accepted.lock().unwrap().len() >= 3 },
    )
    .await;
    assert_eq!(*target.accepted.lock().unwrap(), [1, 2, 3]);
}
