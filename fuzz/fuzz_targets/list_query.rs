//! Arbitrary list options (`limit`, `offset`, `sort`, `filter`, `q`, `fields` and the event
//! list's) through the query parsers: parsing never panics, and whatever it accepts storage
//! runs without an error, over a store holding the fixture deliveries (an accepted query that
//! storage cannot run would be a 500 instead of a 400 naming the parameter).

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::query::{
    CustomerQuery, EventListOptions, ListOptions, MAX_LIMIT, parse_event_query,
};
use rebilly_webhookd::storage::Store;
use rebilly_webhookd_fuzz::{open_store, runtime, scratch_dir};
use std::sync::OnceLock;
use tokio::runtime::Runtime;

#[derive(Debug, Arbitrary)]
struct Options {
    limit: Option<String>,
    offset: Option<String>,
    sort: Option<String>,
    filter: Option<String>,
    q: Option<String>,
    fields: Option<String>,
    customer_id: Option<String>,
    status: Option<String>,
    event_type: Option<String>,
    event_filter: Option<String>,
}

struct Fixture {
    runtime: Runtime,
    store: Store,
    _dir: tempfile::TempDir,
}

/// One store for the whole run, holding every fixture delivery.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = scratch_dir();
        let runtime = runtime();
        let store = runtime.block_on(async {
            let store = open_store(dir.path());
            let pipeline = Pipeline::new(store.clone());
            let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/deliveries");
            let mut paths: Vec<_> = std::fs::read_dir(fixtures)
                .expect("the fixtures folder")
                .map(|entry| entry.expect("a fixture").path())
                .collect();
            paths.sort();
            for path in paths {
                let body = std::fs::read(&path).expect("a fixture body");
                let body = AuthenticatedBody::from_operator(body.into());
                pipeline.submit(body).await.expect("a stored fixture");
            }
            store
        });
        Fixture {
            runtime,
            store,
            _dir: dir,
        }
    })
}

fuzz_target!(|options: Options| {
    let fixture = fixture();
    let list = ListOptions {
        limit: options.limit,
        offset: options.offset,
        sort: options.sort,
        filter: options.filter,
        q: options.q,
        fields: options.fields,
    };
    if let Ok(query) = CustomerQuery::parse(&list) {
        assert!(query.limit <= MAX_LIMIT);
        let page = fixture
            .runtime
            .block_on(fixture.store.customers(query.clone()));
        if let Err(error) = page {
            panic!("an accepted query failed in storage: {query:?}: {error}");
        }
    }
    let events = EventListOptions {
        customer_id: options.customer_id,
        status: options.status,
        event_type: options.event_type,
        filter: options.event_filter,
        limit: list.limit,
        offset: list.offset,
    };
    if let Ok(filter) = parse_event_query(&events) {
        let debug = format!("{filter:?}");
        if let Err(error) = fixture.runtime.block_on(fixture.store.events(filter)) {
            panic!("an accepted event filter failed in storage: {debug}: {error}");
        }
    }
});
