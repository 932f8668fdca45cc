//! `sync` against a fake of Rebilly's Customers API: backfill, incremental runs, the walk over
//! customers sharing one `updatedTime`, throttling and failures, a rejected key, a sync beside
//! a serving daemon, and the revision and merge rules in any interleaving with webhooks.

use crate::common::fake_rebilly::{FAKE_API_KEY, FakeRebilly, Fault, api_customer, time_at};
use crate::common::{self, *};
use proptest::prelude::*;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::progress::Progress;
use rebilly_webhookd::query::{CustomerQuery, ListOptions};
use rebilly_webhookd::query::{EventListOptions, parse_event_query};
use rebilly_webhookd::storage::Store;
use rebilly_webhookd::sync::{self, Summary, SyncError};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

/// A database and configuration for running `sync` in this process.
struct Local {
    _dir: tempfile::TempDir,
    settings: Settings,
    store: Store,
}

impl Local {
    async fn new(fake: &FakeRebilly, api_key: &str, page_size: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}{}",
            common::matrix::storage_table(&dir.path().join("sync.db")),
            fake.config(api_key, page_size)
        );
        let config = write_config(dir.path(), &text);
        let settings = Settings::load(Some(&config)).unwrap();
        let store = Store::open(&settings.storage).unwrap();
        Self {
            _dir: dir,
            settings,
            store,
        }
    }

    async fn sync(&self, full: bool) -> (Summary, Option<SyncError>) {
        let (client, options) = sync::prepare(&self.settings, full).unwrap();
        sync::run(&self.store, &client, &options, &Progress::hidden()).await
    }

    async fn sync_ok(&self, full: bool) -> Summary {
        let (summary, error) = self.sync(full).await;
        assert!(error.is_none(), "sync failed: {error:?}");
        assert!(summary.complete);
        summary
    }

    /// Every projected customer as served, by id.
    async fn projection(&self) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        let mut offset = 0;
        loop {
            let options = ListOptions {
                limit: Some("1000".into()),
                offset: Some(offset.to_string()),
                ..ListOptions::default()
            };
            let page = self
                .store
                .customers(CustomerQuery::parse(&options).unwrap())
                .await
                .unwrap();
            let count = page.customers.len();
            for customer in page.customers {
                all.insert(customer["id"].as_str().unwrap().to_owned(), customer);
            }
            if count < 1000 {
                return all;
            }
            offset += 1000;
        }
    }

    async fn event_count(&self, event_type: Option<&str>) -> u64 {
        let query = parse_event_query(&EventListOptions {
            event_type: event_type.map(str::to_owned),
            limit: Some("0".into()),
            ..EventListOptions::default()
        })
        .unwrap();
        self.store.events(query).await.unwrap().1
    }
}

/// Every customer the fake lists is projected at exactly its listed revision.
fn assert_exact(projection: &BTreeMap<String, Value>, fake: &FakeRebilly) {
    let listed = fake.customers();
    assert_eq!(projection.len(), listed.len(), "projected customer count");
    for (id, customer) in &listed {
        let projected = projection
            .get(id)
            .unwrap_or_else(|| panic!("{id} is missing"));
        assert_eq!(projected["revision"], customer["revision"], "{id}");
        assert_eq!(projected["updatedTime"], customer["updatedTime"], "{id}");
    }
}

backends! {
#[tokio::test]
async fn a_backfill_of_thousands_is_complete_and_exact() {
    let fake = FakeRebilly::start().await;
    // 3000 customers share one updatedTime, far more than a page, then 2000 more in small
    // groups, some of them written with another UTC offset.
    for i in 0..3_000 {
        fake.upsert(api_customer(&format!("cus_same_{i:05}"), 1, &time_at(0)));
    }
    for i in 0..2_000 {
        let mut customer = api_customer(&format!("cus_spread_{i:05}"), 2, &time_at(1 + i / 3));
        if i % 5 == 0 {
            customer["updatedTime"] = json!("2026-01-01T05:30:00+05:30");
        }
        fake.upsert(customer);
    }
    let local = Local::new(&fake, FAKE_API_KEY, 500).await;

    let summary = local.sync_ok(false).await;

    assert_eq!(summary.applied, 5_000);
    assert_eq!((summary.stale, summary.rejected), (0, 0));
    assert_exact(&local.projection().await, &fake);
    assert_eq!(local.event_count(Some("customer-synced")).await, 5_000);
    for served in fake.served() {
        assert!(served.offset < 3_000, "offsets stay within one timestamp");
    }
}
}

backends! {
#[tokio::test]
async fn a_repeated_sync_fetches_only_the_changes_and_logs_nothing_new_without_them() {
    let fake = FakeRebilly::start().await;
    for i in 0..1_000 {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 1, &time_at(i)));
    }
    let local = Local::new(&fake, FAKE_API_KEY, 100).await;
    local.sync_ok(false).await;
    let events_after_backfill = local.event_count(None).await;

    fake.forget_served();
    for i in (0..1_000).step_by(100) {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 2, &time_at(5_000 + i)));
    }
    for i in 0..5 {
        fake.upsert(api_customer(&format!("cus_new_{i}"), 1, &time_at(6_000)));
    }
    let summary = local.sync_ok(false).await;

    assert_eq!(summary.applied, 15);
    // The 15 changes, plus the customer at the previous mark, read again.
    assert_eq!(fake.customers_served(), 16);
    assert_exact(&local.projection().await, &fake);
    assert_eq!(local.event_count(None).await, events_after_backfill + 15);

    // Nothing changed: one customer read, nothing recorded.
    fake.forget_served();
    let summary = local.sync_ok(false).await;
    assert_eq!((summary.applied, summary.fetched), (0, 5));
    assert_eq!(local.event_count(None).await, events_after_backfill + 15);

    // A full sync reads everything again and still records nothing new.
    let summary = local.sync_ok(true).await;
    assert_eq!((summary.applied, summary.stale), (0, 1_005));
    assert_eq!(local.event_count(None).await, events_after_backfill + 15);

    // The log alone rebuilds the same projection.
    let live = local.projection().await;
    local.store.rebuild_projection(false).await.unwrap();
    assert_eq!(local.projection().await, live);
}
}

backends! {
#[tokio::test]
async fn customers_changing_between_pages_are_all_projected_at_their_newest_revision() {
    let fake = FakeRebilly::start().await;
    for i in 0..600 {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 1, &time_at(i / 200)));
    }
    // After every page, a customer early in the list is updated: it moves behind the mark.
    fake.after_each_page(|page, customers| {
        if page < 10 {
            let id = format!("cus_{:04}", page * 7);
            customers.insert(
                id.clone(),
                api_customer(&id, 2, &time_at(1_000 + page as i64)),
            );
        }
    });
    let local = Local::new(&fake, FAKE_API_KEY, 50).await;

    local.sync_ok(false).await;

    assert_exact(&local.projection().await, &fake);
}
}

backends! {
#[tokio::test]
async fn throttling_slow_pages_and_server_errors_are_survived() {
    let fake = FakeRebilly::start().await;
    for i in 0..300 {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 1, &time_at(i)));
    }
    fake.fail_next([
        Fault::Throttle {
            retry_after: Some(1),
        },
        Fault::Status(500),
        Fault::Status(503),
        // Longer than sync.request_timeout_seconds: a timeout, retried like a network error.
        Fault::Slow(Duration::from_millis(1_500)),
        Fault::Exhausted { reset_seconds: 1 },
        Fault::Throttle { retry_after: None },
    ]);
    let local = Local::new(&fake, FAKE_API_KEY, 50).await;

    local.sync_ok(false).await;

    assert_exact(&local.projection().await, &fake);
    let served = fake.served();
    assert_eq!(served[0].status, 429);
    assert!(
        served[1].at.duration_since(served[0].at) >= Duration::from_secs(1),
        "Retry-After is honoured"
    );
    let exhausted = served
        .iter()
        .position(|s| {
            s.fault
                .as_deref()
                .is_some_and(|f| f.starts_with("Exhausted"))
        })
        .unwrap();
    assert!(
        served[exhausted]
            .at
            .duration_since(served[exhausted - 1].at)
            >= Duration::from_secs(1),
        "Rate-Limit-Remaining 0 pauses until Rate-Limit-Reset"
    );
}
}

backends! {
#[tokio::test]
async fn a_sync_that_gives_up_resumes_where_it_stopped() {
    let fake = FakeRebilly::start().await;
    for i in 0..500 {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 1, &time_at(i)));
    }
    let local = Local::new(&fake, FAKE_API_KEY, 100).await;
    // Three pages go through, then every attempt at the fourth fails (sync.max_attempts = 4).
    fake.fail_next([Fault::Pass, Fault::Pass, Fault::Pass]);
    fake.fail_next(std::iter::repeat_n(Fault::Status(502), 4));

    let (summary, error) = local.sync(false).await;

    let error = error.expect("the fourth page never came").to_string();
    assert!(error.contains("failed 4 times"), "{error}");
    assert!(!summary.complete);
    // Pages overlap by one customer: three pages hold 298 new ones.
    assert_eq!(
        summary.applied, 298,
        "the pages before the failure are kept"
    );
    fake.forget_served();

    let resumed = local.sync_ok(false).await;

    assert_eq!(resumed.applied, 202);
    // The rest, the customer at the mark read again, and one overlap per later page.
    assert_eq!(fake.customers_served(), 203 + 2);
    assert_exact(&local.projection().await, &fake);
}
}

backends! {
#[tokio::test]
async fn a_rejected_key_stops_at_once_naming_the_key_with_the_database_unchanged() {
    let fake = FakeRebilly::start().await;
    fake.upsert(api_customer("cus_1", 3, &time_at(0)));
    let app = spawn_app_with(&fake.config("sk_wrong-key-value", 100)).await;
    app.deliver_ok(customer_event("customer-created", "cus_2", 1, json!({})))
        .await;

    let output = run_cli_async(&app.config_path, &["sync"]).await;

    assert!(!output.status.success());
    let text = stderr(&output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.contains("rebilly.api_key"), "{text}");
    assert!(last.contains("401"), "{text}");
    assert!(
        !text.contains("sk_wrong-key-value"),
        "the key is never printed: {text}"
    );
    assert_eq!(fake.served().len(), 1, "no retry after a rejected key");
    let (_, total) = common::events(&app, "").await;
    assert_eq!(total, 1, "nothing recorded");
    let response = app.api_get("/customers/cus_1").await;
    assert_eq!(response.status(), 404);
}
}

backends! {
#[tokio::test]
async fn an_organization_is_sent_when_configured_and_a_403_names_it() {
    let fake = FakeRebilly::start().await;
    fake.require_organization("org_main");
    fake.upsert(api_customer("cus_1", 3, &time_at(0)));
    let local = Local::new(&fake, FAKE_API_KEY, 100).await;
    let (summary, error) = local.sync(false).await;
    let error = error.expect("403 without the organization").to_string();
    assert!(error.contains("rebilly.organization_id"), "{error}");
    assert_eq!(summary.applied, 0);

    let mut settings = local.settings.clone();
    settings.rebilly.organization_id = "org_main".into();
    let (client, options) = sync::prepare(&settings, false).unwrap();
    let (summary, error) = sync::run(&local.store, &client, &options, &Progress::hidden()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(summary.applied, 1);
}
}

backends! {
#[tokio::test]
async fn a_sync_beside_a_serving_daemon_keeps_every_rule() {
    let fake = FakeRebilly::start().await;
    for i in 0..2_000 {
        fake.upsert(api_customer(&format!("cus_{i:04}"), 2, &time_at(i / 10)));
    }
    let app = spawn_app_with(&fake.config(FAKE_API_KEY, 250)).await;
    // Webhooks know newer revisions of some customers, older of others, and one merge.
    for i in (0..2_000).step_by(100) {
        let id = format!("cus_{i:04}");
        app.deliver_ok(customer_event("customer-updated", &id, 5, json!({})))
            .await;
    }
    app.deliver_ok(merge_event("cus_0001", Some(9), "cus_0002", 2))
        .await;

    let cli = run_cli_async(&app.config_path, &["sync"]);
    let deliveries = async {
        for i in (50..2_000).step_by(100) {
            let id = format!("cus_{i:04}");
            let status = app
                .deliver_ok(customer_event("customer-updated", &id, 1, json!({})))
                .await
                .1;
            assert!(status == "applied" || status == "stale", "{status}");
        }
    };
    let (output, ()) = tokio::join!(cli, deliveries);

    assert_success(&output);
    let summary = stdout_json(&output);
    assert_eq!(summary["complete"], true);
    assert!(summary["fetched"].as_u64().unwrap() >= 2_000);
    for i in (0..2_000).step_by(50) {
        let id = format!("cus_{i:04}");
        let customer = app.customer(&id).await;
        let expected = if i % 100 == 0 { 5 } else { 2 };
        assert_eq!(customer["revision"], expected, "{id}");
    }
    let merged = app.customer("cus_0002").await;
    assert_eq!(merged["mergedInto"], "cus_0001", "never brought back");
    assert_eq!(app.customer("cus_0001").await["revision"], 9);
    let (_, synced) = common::events(&app, "?eventType=customer-synced").await;
    assert_eq!(Some(synced), summary["applied"].as_u64());
    let response = app.api_get("/customers?limit=0").await;
    assert_eq!(header(response.headers(), "pagination-total"), "1999");
}
}

backends! {
#[tokio::test]
async fn a_webhook_body_cannot_pass_for_a_synced_snapshot() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&json!({
        "eventType": "customer-synced",
        "customerId": "cus_forged",
        "_embedded": {"customer": {"id": "cus_forged", "revision": 99}}
    }))
    .unwrap();
    assert_eq!(app.deliver_ok(body).await.1, "ignored");
    assert_eq!(app.api_get("/customers/cus_forged").await.status(), 404);
}
}

// ---------------------------------------------------------------------------------------------
// Property: syncs interleaved with webhook deliveries
// ---------------------------------------------------------------------------------------------

const PEOPLE: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    /// Rebilly changes a customer (a new revision, a later updatedTime); its list shows the
    /// change at once, or lags behind until `Publish`.
    Change(usize, bool),
    /// The list catches up with the customer's newest revision.
    Publish(usize),
    /// A webhook for one of the customer's revisions arrives, `back` revisions late.
    Webhook(usize, i64),
    /// A merge of the first customer into the second arrives by webhook.
    Merge(usize, usize),
    Sync {
        full: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..PEOPLE, any::<bool>()).prop_map(|(who, listed)| Op::Change(who, listed)),
        1 => (0..PEOPLE).prop_map(Op::Publish),
        3 => (0..PEOPLE, 0i64..3).prop_map(|(who, back)| Op::Webhook(who, back)),
        1 => (0..PEOPLE, 0..PEOPLE).prop_map(|(a, b)| Op::Merge(a, b)),
        2 => any::<bool>().prop_map(|full| Op::Sync { full }),
    ]
}

fn person(who: usize) -> String {
    format!("cus_p{who}")
}

/// What Rebilly knows: every revision of every customer, and the merges.
struct Truth {
    revisions: Vec<Vec<Value>>,
    clock: i64,
    merged: BTreeMap<usize, usize>,
}

impl Truth {
    fn new() -> Self {
        Self {
            // Several customers share each second, so the walk meets ties.
            revisions: (0..PEOPLE)
                .map(|who| vec![api_customer(&person(who), 1, &time_at(0))])
                .collect(),
            clock: 0,
            merged: BTreeMap::new(),
        }
    }

    fn change(&mut self, who: usize) -> Value {
        self.clock += 1;
        let revision = self.revisions[who].len() as i64 + 1;
        let snapshot = api_customer(&person(who), revision, &time_at(self.clock / 2));
        self.revisions[who].push(snapshot.clone());
        snapshot
    }

    fn latest(&self, who: usize) -> &Value {
        self.revisions[who].last().unwrap()
    }
}

fn webhook(event_type: &str, customer: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": event_type,
        "customerId": customer["id"],
        "_embedded": {"customer": customer},
    }))
    .unwrap()
}

async fn interleave(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fake = FakeRebilly::start().await;
    let mut local = Local::new(&fake, FAKE_API_KEY, 2).await;
    // The list may show a change after newer ones: the look-back window must catch it.
    local.settings.sync.look_back_seconds = 300;
    let pipeline = Pipeline::new(local.store.clone());
    let mut truth = Truth::new();
    for who in 0..PEOPLE {
        fake.upsert(truth.latest(who).clone());
    }
    // The highest revision of each customer that reached the daemon, by either source.
    let mut known = [0i64; PEOPLE];
    // The revision the list shows; webhooks may carry newer ones.
    let mut listed = [1i64; PEOPLE];
    // The revision of the snapshot each merge carried for the customer it merged away.
    let mut merged_snapshot = BTreeMap::new();
    for op in ops {
        match op {
            Op::Change(who, publish) => {
                let snapshot = truth.change(who);
                // Rebilly deletes a merged-away customer; the list may still lag behind, so
                // the fake keeps listing it: the worst case for resurrection.
                if publish {
                    listed[who] = snapshot["revision"].as_i64().unwrap();
                    fake.upsert(snapshot);
                }
            }
            Op::Publish(who) => {
                let snapshot = truth.latest(who).clone();
                listed[who] = snapshot["revision"].as_i64().unwrap();
                fake.upsert(snapshot);
            }
            Op::Webhook(who, back) => {
                let revision = (truth.revisions[who].len() as i64 - back).max(1);
                let snapshot = &truth.revisions[who][revision as usize - 1];
                let body = webhook("customer-updated", snapshot);
                let receipt = pipeline
                    .submit(AuthenticatedBody::from_operator(body.into()))
                    .await
                    .unwrap();
                prop_assert_ne!(receipt.status.as_str(), "rejected");
                if !truth.merged.contains_key(&who) {
                    known[who] = known[who].max(revision);
                }
            }
            Op::Merge(duplicated, target) => {
                if duplicated == target
                    || truth.merged.contains_key(&duplicated)
                    || truth.merged.contains_key(&target)
                {
                    continue;
                }
                let gone = truth.latest(duplicated).clone();
                merged_snapshot.insert(duplicated, gone["revision"].as_i64().unwrap());
                let survivor = truth.change(target);
                listed[target] = survivor["revision"].as_i64().unwrap();
                fake.upsert(survivor.clone());
                let body = serde_json::to_vec(&json!({
                    "eventType": "customer-merged",
                    "targetCustomerId": person(target),
                    "duplicatedCustomer": gone,
                    "_embedded": {"targetCustomer": survivor},
                }))
                .unwrap();
                pipeline
                    .submit(AuthenticatedBody::from_operator(body.into()))
                    .await
                    .unwrap();
                truth.merged.insert(duplicated, target);
                known[target] = known[target].max(truth.revisions[target].len() as i64);
            }
            Op::Sync { full } => {
                let (_, error) = local.sync(full).await;
                prop_assert!(error.is_none(), "{error:?}");
                for (who, known) in known.iter_mut().enumerate() {
                    if !truth.merged.contains_key(&who) {
                        *known = (*known).max(listed[who]);
                    }
                }
            }
        }
        for (who, &expected) in known.iter().enumerate() {
            let served = local.store.customer(person(who)).await.unwrap();
            match truth.merged.get(&who) {
                Some(target) => {
                    let served = served.expect("a merged customer stays known");
                    prop_assert_eq!(&served["mergedInto"], &json!(person(*target)));
                    // Still the snapshot the merge carried: nothing listed later replaces it.
                    prop_assert_eq!(
                        served["revision"].as_i64(),
                        merged_snapshot.get(&who).copied()
                    );
                }
                None if expected == 0 => {}
                None => {
                    let served = served.expect("a known customer is projected");
                    prop_assert_eq!(served["revision"].as_i64(), Some(expected), "{}", who);
                    prop_assert_eq!(&served["mergedInto"], &Value::Null);
                }
            }
        }
    }
    let live = local.projection().await;
    for who in truth.merged.keys() {
        prop_assert!(!live.contains_key(&person(*who)), "merged away, not listed");
    }
    local.store.rebuild_projection(false).await.unwrap();
    prop_assert_eq!(local.projection().await, live, "rebuild equals live");
    local.store.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_sync_never_lowers_a_revision_nor_resurrects_a_merged_customer(
        ops in prop::collection::vec(op(), 1..24)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(interleave(ops))?;
    }
}

#[tokio::test]
async fn sync_without_an_api_key_says_which_key_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("webhookd.db");
    let config = write_config(dir.path(), &common::base_config(&db));

    let output = run_cli_async(&config, &["sync"]).await;

    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("rebilly.api_key is not set"), "{text}");
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert!(!db.exists(), "no database is created for nothing");
}
