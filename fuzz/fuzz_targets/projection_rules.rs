//! A short arbitrary sequence of customer events (created and updated snapshots with or without
//! revisions and `updatedTime`, Experian checks, merges) through the real pipeline on a
//! temporary SQLite file: nothing panics, every body is accepted, and the projection ends as
//! it does when the same events arrive sorted by revision, with each customer at its highest
//! snapshot and `experianCheck` showing the latest check received.
//!
//! Snapshots are a function of (customer, version), as Rebilly's are: two events carrying the
//! same version carry the same resource. Each customer is ordered either by `revision` (its
//! `updatedTime` sometimes missing) or by `updatedTime` (its `revision` sometimes missing), so
//! that the rules decide every pair of its snapshots and arrival order never has to.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::query::{CustomerQuery, ListOptions};
use rebilly_webhookd::storage::Status;
use rebilly_webhookd_fuzz::{open_store, runtime, scratch_dir};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

/// Customers 0 and 1 may receive merges; 2 and 3 may be merged away into them.
const CUSTOMERS: [&str; 4] = ["cus_a", "cus_b", "cus_c", "cus_d"];
const TARGETS: usize = 2;
const VERSIONS: u8 = 8;
/// Events per run: enough for every rule to meet every other, few enough to run fast.
const MAX_EVENTS: usize = 12;

#[derive(Debug, Arbitrary, Clone, Copy)]
enum OrderedBy {
    Revision,
    UpdatedTime,
}

/// How one customer's snapshots look: which field orders them, and for which versions the
/// other field is missing (bit `version - 1`).
#[derive(Debug, Arbitrary, Clone, Copy)]
struct Shape {
    ordered_by: OrderedBy,
    missing: u8,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum Step {
    Snapshot {
        created: bool,
        who: u8,
        version: u8,
    },
    Experian {
        who: u8,
        version: Option<u8>,
        outcome: u8,
        reason: u8,
    },
    Merge {
        duplicated: u8,
        target: u8,
        duplicated_version: u8,
        target_version: Option<u8>,
    },
}

#[derive(Debug, Arbitrary)]
struct Scenario {
    shapes: [Shape; 4],
    steps: Vec<Step>,
}

/// One delivery, with what the oracle needs to know about it.
#[derive(Debug, Clone)]
struct Delivery {
    body: Vec<u8>,
    /// The version that orders it in the sorted run.
    version: u8,
    /// Customers whose snapshot it carries, with that snapshot's version.
    snapshots: Vec<(usize, u8)>,
    /// For an Experian check: its customer and the summary the projection should show.
    check: Option<(usize, Value)>,
    /// For a merge: the customer merged away, its last version, and its target.
    merge: Option<(usize, u8, usize)>,
}

fn version(raw: u8) -> u8 {
    raw % VERSIONS + 1
}

/// A customer's snapshot at `version`: the same resource whichever event embeds it.
fn snapshot(shapes: &[Shape; 4], who: usize, version: u8) -> Value {
    let id = CUSTOMERS[who];
    let shape = shapes[who];
    let missing = shape.missing & (1 << (version - 1)) != 0;
    let minutes = i64::from(version) * 7;
    // Odd versions carry a negative offset, so that comparing the text would misorder them.
    let updated = if version % 2 == 1 {
        format!("2026-02-28T19:{minutes:02}:00-05:00")
    } else {
        format!("2026-03-01T00:{minutes:02}:00Z")
    };
    let country = ["FR", "DE", "US"][usize::from(version) % 3];
    let mut customer = json!({
        "id": id,
        "email": format!("{id}.v{version}@example.com"),
        "firstName": "Fuzz",
        "lastName": format!("{id}-{version}"),
        "createdTime": "2026-02-01T00:00:00Z",
        "primaryAddress": {"country": country,
                           "city": format!("City {version}")},
        "customFields": {"version": version},
        "tags": [],
    });
    let with_revision = !(missing && matches!(shape.ordered_by, OrderedBy::UpdatedTime));
    let with_updated = !(missing && matches!(shape.ordered_by, OrderedBy::Revision));
    if with_revision {
        customer["revision"] = json!(version);
    }
    if with_updated {
        customer["updatedTime"] = json!(updated);
    }
    customer
}

fn encode(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON encodes")
}

/// The deliveries of a scenario. A customer is merged away once: every merge of it repeats
/// the first one generated, as a redelivery would.
fn deliveries(scenario: &Scenario) -> Vec<Delivery> {
    let shapes = &scenario.shapes;
    let mut merges: BTreeMap<usize, Delivery> = BTreeMap::new();
    let mut out = Vec::new();
    for step in scenario.steps.iter().take(MAX_EVENTS) {
        let delivery = match *step {
            Step::Snapshot {
                created,
                who,
                version: raw,
            } => {
                let who = usize::from(who) % CUSTOMERS.len();
                let version = version(raw);
                let event_type = if created {
                    "customer-created"
                } else {
                    "customer-updated"
                };
                Delivery {
                    body: encode(&json!({
                        "eventType": event_type,
                        "customerId": CUSTOMERS[who],
                        "_embedded": {"customer": snapshot(shapes, who, version)},
                    })),
                    version,
                    snapshots: vec![(who, version)],
                    check: None,
                    merge: None,
                }
            }
            Step::Experian {
                who,
                version: raw,
                outcome,
                reason,
            } => {
                let who = usize::from(who) % CUSTOMERS.len();
                let outcome = i64::from(outcome % 3) - 1;
                let reason = format!("check {reason}");
                let mut body = json!({
                    "eventType": "experian-check-performed",
                    "customerId": CUSTOMERS[who],
                    "outcome": outcome,
                    "reason": reason,
                    "errorCode": "001",
                    "errorMessage": null,
                });
                let version = raw.map(version);
                if let Some(version) = version {
                    body["_embedded"] = json!({"customer": snapshot(shapes, who, version)});
                }
                let summary = json!({"outcome": outcome, "reason": reason,
                                     "errorCode": "001", "errorMessage": null});
                Delivery {
                    body: encode(&body),
                    version: version.unwrap_or(0),
                    snapshots: version.map(|v| (who, v)).into_iter().collect(),
                    check: Some((who, summary)),
                    merge: None,
                }
            }
            Step::Merge {
                duplicated,
                target,
                duplicated_version,
                target_version,
            } => {
                let duplicated = TARGETS + usize::from(duplicated) % (CUSTOMERS.len() - TARGETS);
                let target = usize::from(target) % TARGETS;
                let duplicated_version = version(duplicated_version);
                let target_version = target_version.map(version);
                let fresh = || {
                    let mut body = json!({
                        "eventType": "customer-merged",
                        "targetCustomerId": CUSTOMERS[target],
                        "duplicatedCustomer": snapshot(shapes, duplicated, duplicated_version),
                    });
                    if let Some(version) = target_version {
                        body["_embedded"] =
                            json!({"targetCustomer": snapshot(shapes, target, version)});
                    }
                    Delivery {
                        body: encode(&body),
                        version: target_version.unwrap_or(duplicated_version),
                        snapshots: target_version.map(|v| (target, v)).into_iter().collect(),
                        check: None,
                        merge: Some((duplicated, duplicated_version, target)),
                    }
                };
                merges.entry(duplicated).or_insert_with(fresh).clone()
            }
        };
        out.push(delivery);
    }
    out
}

/// What the projection shows, with each `experianCheck` taken apart.
#[derive(Debug, PartialEq)]
struct Projection {
    customers: BTreeMap<usize, Value>,
    checks: BTreeMap<usize, Value>,
    listed: Vec<String>,
}

fn deliver(deliveries: &[&Delivery]) -> Projection {
    let dir = scratch_dir();
    runtime().block_on(async {
        let store = open_store(dir.path());
        let pipeline = Pipeline::new(store.clone());
        for delivery in deliveries {
            let body = AuthenticatedBody::from_operator(delivery.body.clone().into());
            let receipt = pipeline
                .submit(body)
                .await
                .expect("storage takes the delivery");
            assert_ne!(
                receipt.status,
                Status::Rejected,
                "a valid body was rejected: {:?}: {}",
                receipt.rejection,
                String::from_utf8_lossy(&delivery.body)
            );
        }
        let mut customers = BTreeMap::new();
        let mut checks = BTreeMap::new();
        for (who, id) in CUSTOMERS.iter().enumerate() {
            let view = store
                .customer((*id).to_owned())
                .await
                .expect("a readable customer");
            if let Some(Value::Object(mut view)) = view {
                checks.insert(who, view.remove("experianCheck").unwrap_or(Value::Null));
                customers.insert(who, Value::Object(view));
            }
        }
        let all = ListOptions {
            limit: Some("1000".into()),
            ..ListOptions::default()
        };
        let page = store
            .customers(CustomerQuery::parse(&all).expect("a valid query"))
            .await
            .expect("a readable list");
        let listed = page
            .customers
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        store.close().await;
        Projection {
            customers,
            checks,
            listed,
        }
    })
}

/// The version each customer's snapshot must end at, and whom it was merged into.
fn expected_versions(deliveries: &[Delivery]) -> BTreeMap<usize, (u8, Option<usize>)> {
    let mut expected: BTreeMap<usize, (u8, Option<usize>)> = BTreeMap::new();
    for delivery in deliveries {
        for &(who, version) in &delivery.snapshots {
            let entry = expected.entry(who).or_insert((version, None));
            entry.0 = entry.0.max(version);
        }
    }
    // A merge's snapshot of the customer merged away is final, whatever arrived before.
    for delivery in deliveries {
        if let Some((duplicated, version, target)) = delivery.merge {
            expected.insert(duplicated, (version, Some(target)));
        }
    }
    expected
}

/// The check each customer shows: the latest received, a redelivery changing nothing.
fn expected_checks(deliveries: &[Delivery]) -> BTreeMap<usize, Value> {
    let mut seen = HashSet::new();
    let mut latest = BTreeMap::new();
    for delivery in deliveries {
        if seen.insert(&delivery.body)
            && let Some((who, summary)) = &delivery.check
        {
            latest.insert(*who, summary.clone());
        }
    }
    latest
}

fuzz_target!(|scenario: Scenario| {
    let arrived = deliveries(&scenario);
    if arrived.is_empty() {
        return;
    }
    let as_arrived: Vec<&Delivery> = arrived.iter().collect();
    let mut sorted = as_arrived.clone();
    sorted.sort_by_key(|d| d.version);

    let actual = deliver(&as_arrived);
    let reference = deliver(&sorted);
    let strip = |p: &Projection| (p.customers.clone(), p.listed.clone());
    assert_eq!(
        strip(&actual),
        strip(&reference),
        "arrival order changed the projection"
    );

    for (who, (version, merged_into)) in expected_versions(&arrived) {
        let view = &actual.customers[&who];
        assert_eq!(
            view["customFields"]["version"],
            json!(version),
            "{} is not at its highest snapshot: {view}",
            CUSTOMERS[who]
        );
        let merged = merged_into
            .map(|t| json!(CUSTOMERS[t]))
            .unwrap_or(Value::Null);
        assert_eq!(view["mergedInto"], merged, "{} mergedInto", CUSTOMERS[who]);
        assert_eq!(
            actual.listed.contains(&CUSTOMERS[who].to_owned()),
            merged_into.is_none(),
            "{} listed while merged away, or missing",
            CUSTOMERS[who]
        );
    }
    let checks = expected_checks(&arrived);
    for who in 0..CUSTOMERS.len() {
        let shown = actual.checks.get(&who).unwrap_or(&Value::Null);
        let expected = checks.get(&who).unwrap_or(&Value::Null);
        assert_eq!(shown, expected, "{} experianCheck", CUSTOMERS[who]);
    }
});
