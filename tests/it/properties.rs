//! Property tests for the ordering and dedupe rules. A generator draws histories the way
//! Rebilly produces them (gaps in revisions, re-encoded and byte-identical redeliveries, merges
//! in pairs and chains, merge targets older than what is stored, customers without revisions,
//! Experian checks embedding stale customers, events of other types), delivers them in any
//! order through the library pipeline, and compares every answered status and the final
//! projection with a small model of the rules written here, independently of the daemon.
//!
//! On failure proptest prints the minimal failing history and records its seed in
//! `tests/it/properties.proptest-regressions`, so that the next run replays it first.

use crate::common::matrix::{Backend, storage_table_for};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::query::{CustomerQuery, ListOptions};
use rebilly_webhookd::storage::{Status, Store};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};

/// Customers whose snapshots carry revisions; merges happen among them.
const REVISIONED: [&str; 3] = ["cus_a", "cus_b", "cus_c"];
/// Customers from older records, whose snapshots carry no revision.
const UNREVISIONED: [&str; 2] = ["old_x", "old_y"];
const HIGHEST_REVISION: i64 = 6;

fn all_customers() -> impl Iterator<Item = &'static str> {
    REVISIONED.into_iter().chain(UNREVISIONED)
}

/// A customer snapshot as some event embeds it.
#[derive(Debug, Clone, PartialEq)]
struct Snap {
    id: &'static str,
    revision: Option<i64>,
    /// Minutes past a fixed hour: small so that ties happen.
    updated_minute: Option<u8>,
}

/// One event of the history, before encoding.
#[derive(Debug, Clone)]
enum Spec {
    Snapshot {
        created: bool,
        customer: Snap,
    },
    Merge {
        duplicated: Snap,
        target: Snap,
        embeds_target: bool,
    },
    Experian {
        customer: &'static str,
        outcome: i64,
        embedded: Option<Snap>,
    },
    Other,
}

/// An event and its bytes. Every customer resource carries `marker`, the event's index, so the
/// test can tell which event's snapshot the projection holds.
#[derive(Clone)]
struct Delivery {
    spec: Spec,
    body: Vec<u8>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} as {}",
            self.spec,
            String::from_utf8_lossy(&self.body)
        )
    }
}

fn resource(snap: &Snap, marker: usize) -> Value {
    let mut customer = json!({
        "id": snap.id,
        "email": format!("{}@example.com", snap.id),
        "lastName": format!("{} #{marker}", snap.id),
        "createdTime": "2026-03-01T00:00:00Z",
        "marker": marker,
    });
    if let Some(revision) = snap.revision {
        customer["revision"] = json!(revision);
    }
    if let Some(minute) = snap.updated_minute {
        customer["updatedTime"] = json!(format!("2026-03-01T10:{minute:02}:00Z"));
    }
    customer
}

/// Encodes an event; `pretty` gives other bytes for the same content, as a re-encoding does.
fn encode(spec: &Spec, marker: usize, pretty: bool) -> Vec<u8> {
    let value = match spec {
        Spec::Snapshot { created, customer } => json!({
            "eventType": if *created { "customer-created" } else { "customer-updated" },
            "customerId": customer.id,
            "_embedded": {"customer": resource(customer, marker)},
        }),
        Spec::Merge {
            duplicated,
            target,
            embeds_target,
        } => {
            let mut merge = json!({
                "eventType": "customer-merged",
                "targetCustomerId": target.id,
                "duplicatedCustomer": resource(duplicated, marker),
            });
            if *embeds_target {
                merge["_embedded"] = json!({"targetCustomer": resource(target, marker)});
            }
            merge
        }
        Spec::Experian {
            customer,
            outcome,
            embedded,
        } => {
            let mut check = json!({
                "eventType": "experian-check-performed",
                "customerId": customer,
                "outcome": outcome,
                "reason": format!("check #{marker}"),
                "errorCode": format!("{marker:03}"),
                "errorMessage": "",
            });
            if let Some(snap) = embedded {
                check["_embedded"] = json!({"customer": resource(snap, marker)});
            }
            check
        }
        Spec::Other => json!({"eventType": "invoice-paid", "invoiceId": format!("in_{marker}")}),
    };
    if pretty {
        serde_json::to_vec_pretty(&value).unwrap()
    } else {
        serde_json::to_vec(&value).unwrap()
    }
}

fn minute_of(revision: i64) -> Option<u8> {
    Some(revision as u8 * 5)
}

fn revisioned(id: usize, revision: i64) -> Snap {
    Snap {
        id: REVISIONED[id],
        revision: Some(revision),
        updated_minute: minute_of(revision),
    }
}

/// Snapshot events of the revisioned customers: any subset of revisions, each as
/// `customer-created` for revision 1 and `customer-updated` after it, sometimes the other type
/// instead or as well (a second event of another type at the same revision is stale).
fn revisioned_snapshots() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(
        prop::collection::vec(0u8..6, HIGHEST_REVISION as usize),
        REVISIONED.len(),
    )
    .prop_map(|choices| {
        let mut specs = Vec::new();
        for (id, per_revision) in choices.iter().enumerate() {
            for (r, &choice) in per_revision.iter().enumerate() {
                let revision = r as i64 + 1;
                let natural = revision == 1;
                let types: &[bool] = match choice {
                    0 | 1 => &[],
                    2 | 3 => &[natural],
                    4 => &[!natural],
                    _ => &[natural, !natural],
                };
                for &created in types {
                    specs.push(Spec::Snapshot {
                        created,
                        customer: revisioned(id, revision),
                    });
                }
            }
        }
        specs
    })
}

fn unrevisioned_snap() -> impl Strategy<Value = Snap> {
    (0..UNREVISIONED.len(), prop::option::weighted(0.8, 0u8..4)).prop_map(|(id, minute)| Snap {
        id: UNREVISIONED[id],
        revision: None,
        updated_minute: minute,
    })
}

fn unrevisioned_snapshots() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(
        (any::<bool>(), unrevisioned_snap())
            .prop_map(|(created, customer)| Spec::Snapshot { created, customer }),
        0..6,
    )
}

/// Merges among the revisioned customers: random pairs (so chains and a second merge of the
/// same customer happen), any revision on either side, the target sometimes not embedded.
fn merges() -> impl Strategy<Value = Vec<Spec>> {
    prop::collection::vec(
        (
            0..REVISIONED.len(),
            1..REVISIONED.len(),
            1..=HIGHEST_REVISION + 1,
            1..=HIGHEST_REVISION + 1,
            prop::bool::weighted(0.85),
        )
            .prop_map(
                |(dup, offset, dup_revision, target_revision, embeds_target)| {
                    let target = (dup + offset) % REVISIONED.len();
                    Spec::Merge {
                        duplicated: revisioned(dup, dup_revision),
                        target: revisioned(target, target_revision),
                        embeds_target,
                    }
                },
            ),
        0..4,
    )
}

/// Experian checks on any customer, embedding a snapshot at any revision (often stale), or none.
fn experian_checks() -> impl Strategy<Value = Vec<Spec>> {
    let on_revisioned = (
        0..REVISIONED.len(),
        prop::option::weighted(0.8, 1..=HIGHEST_REVISION),
    )
        .prop_map(|(id, revision)| {
            (
                REVISIONED[id],
                revision.map(|revision| revisioned(id, revision)),
            )
        });
    let on_unrevisioned = prop::option::weighted(0.8, unrevisioned_snap()).prop_flat_map(|snap| {
        let id = snap.as_ref().map_or(UNREVISIONED[0], |s| s.id);
        Just((id, snap))
    });
    prop::collection::vec(
        (prop_oneof![on_revisioned, on_unrevisioned], -1i64..=1).prop_map(
            |((customer, embedded), outcome)| Spec::Experian {
                customer,
                outcome,
                embedded,
            },
        ),
        0..5,
    )
}

/// A history: its deliveries, and the delivery order (indexes, byte-identical redeliveries
/// appear twice or more).
#[derive(Debug, Clone)]
struct Scenario {
    deliveries: Vec<Delivery>,
    order: Vec<usize>,
}

fn history() -> impl Strategy<Value = Vec<Delivery>> {
    (
        revisioned_snapshots(),
        unrevisioned_snapshots(),
        merges(),
        experian_checks(),
        0usize..3,
        prop::collection::vec(any::<prop::sample::Index>(), 0..4),
    )
        .prop_map(
            |(snapshots, unrevisioned, merges, checks, others, re_encoded)| {
                let mut specs: Vec<(Spec, bool)> = snapshots
                    .into_iter()
                    .chain(unrevisioned)
                    .chain(merges)
                    .chain(checks)
                    .chain(std::iter::repeat_n(Spec::Other, others))
                    .map(|spec| (spec, false))
                    .collect();
                // Re-encoded redeliveries: same type, customer and revision, other bytes.
                let with_revision: Vec<Spec> = specs
                    .iter()
                    .filter(|(spec, _)| {
                        matches!(spec, Spec::Snapshot { customer, .. } if customer.revision.is_some())
                    })
                    .map(|(spec, _)| spec.clone())
                    .collect();
                if !with_revision.is_empty() {
                    for pick in re_encoded {
                        specs.push((pick.get(&with_revision).clone(), true));
                    }
                }
                specs
                    .into_iter()
                    .enumerate()
                    .map(|(marker, (spec, pretty))| Delivery {
                        body: encode(&spec, marker, pretty),
                        spec,
                    })
                    .collect()
            },
        )
}

fn scenario() -> impl Strategy<Value = Scenario> {
    history().prop_flat_map(|deliveries| {
        let n = deliveries.len();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let again = prop::collection::vec(
            (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            0..5,
        );
        (Just(deliveries), order, again).prop_map(|(deliveries, mut order, again)| {
            for (which, at) in again {
                if order.is_empty() {
                    break;
                }
                let which = order[which.index(order.len())];
                order.insert(at.index(order.len() + 1), which);
            }
            Scenario { deliveries, order }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The model: the contract's rules, applied one delivery at a time in arrival order.

/// The snapshot the model holds for a customer.
#[derive(Debug, Clone, PartialEq)]
struct HeldSnapshot {
    revision: Option<i64>,
    updated_minute: Option<u8>,
    /// The event whose embedded customer this is.
    marker: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct ModelCustomer {
    snapshot: Option<HeldSnapshot>,
    merged_into: Option<&'static str>,
    /// The marker of the latest Experian check received.
    check: Option<usize>,
}

#[derive(Default)]
struct Model {
    customers: BTreeMap<&'static str, ModelCustomer>,
    bodies: HashSet<Vec<u8>>,
    semantic: HashSet<String>,
}

impl Model {
    fn deliver(&mut self, delivery: &Delivery, marker: usize) -> Status {
        // Rule 1: the same bytes, or a second event of the same type, customer and revision
        // (a merge: of the same merged-away customer), is a duplicate.
        if !self.bodies.insert(delivery.body.clone()) {
            return Status::Duplicate;
        }
        let semantic = match &delivery.spec {
            Spec::Snapshot { created, customer } => customer
                .revision
                .map(|r| format!("{created} {} {r}", customer.id)),
            Spec::Merge { duplicated, .. } => Some(format!("merge {}", duplicated.id)),
            Spec::Experian { .. } | Spec::Other => None,
        };
        if let Some(key) = semantic
            && !self.semantic.insert(key)
        {
            return Status::Duplicate;
        }
        match &delivery.spec {
            Spec::Snapshot { customer, .. } => {
                if self.offer(customer, marker) {
                    Status::Applied
                } else {
                    Status::Stale
                }
            }
            Spec::Merge {
                duplicated,
                target,
                embeds_target,
            } => {
                // Rule 3: merged for good; the merge's description of the deleted customer is
                // the last one there will ever be.
                let entry = self.customers.entry(duplicated.id).or_default();
                let newly_merged = entry.merged_into.is_none();
                if newly_merged {
                    entry.merged_into = Some(target.id);
                    entry.snapshot = Some(held(duplicated, marker));
                }
                let target_applied = *embeds_target && self.offer(target, marker);
                if newly_merged || target_applied {
                    Status::Applied
                } else {
                    Status::Stale
                }
            }
            Spec::Experian {
                customer, embedded, ..
            } => {
                // Rule 4: every check counts; the latest received is shown.
                self.customers.entry(customer).or_default().check = Some(marker);
                if let Some(snap) = embedded {
                    self.offer(snap, marker);
                }
                Status::Applied
            }
            Spec::Other => Status::Ignored,
        }
    }

    /// Rule 2 (and rule 3's "never brings it back"): does this snapshot replace the held one?
    fn offer(&mut self, snap: &Snap, marker: usize) -> bool {
        let entry = self.customers.entry(snap.id).or_default();
        if entry.merged_into.is_some() {
            return false;
        }
        let wins = match &entry.snapshot {
            None => true,
            Some(held) => match (snap.revision, held.revision) {
                (Some(new), Some(old)) => new > old,
                _ => match (snap.updated_minute, held.updated_minute) {
                    (Some(new), Some(old)) if new != old => new > old,
                    // Arrival order: this one arrived later.
                    _ => true,
                },
            },
        };
        if wins {
            entry.snapshot = Some(held(snap, marker));
        }
        wins
    }
}

fn held(snap: &Snap, marker: usize) -> HeldSnapshot {
    HeldSnapshot {
        revision: snap.revision,
        updated_minute: snap.updated_minute,
        marker,
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's side.

/// What the daemon answered and holds after the deliveries.
struct Outcome {
    statuses: Vec<Status>,
    customers: BTreeMap<&'static str, Value>,
    listed: Vec<String>,
}

fn deliver_all(scenario: &Scenario, backend: Backend) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A memory-backed folder where there is one: the cases open hundreds of databases.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let config = dir.path().join("config.toml");
        let db = dir.path().join("p.db");
        std::fs::write(&config, storage_table_for(backend, &db)).unwrap();
        let settings = Settings::load(Some(&config)).unwrap();
        let store = Store::open(&settings.storage).unwrap();
        let pipeline = Pipeline::new(store.clone());
        let mut statuses = Vec::new();
        for &index in &scenario.order {
            let body = scenario.deliveries[index].body.clone();
            let body = AuthenticatedBody::from_operator(body.into());
            statuses.push(pipeline.submit(body).await.unwrap().status);
        }
        let mut customers = BTreeMap::new();
        for id in all_customers() {
            if let Some(view) = store.customer(id.to_owned()).await.unwrap() {
                customers.insert(id, view);
            }
        }
        let options = ListOptions {
            limit: Some("1000".into()),
            ..ListOptions::default()
        };
        let page = store
            .customers(CustomerQuery::parse(&options).unwrap())
            .await
            .unwrap();
        let listed = page
            .customers
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect();
        store.close().await;
        Outcome {
            statuses,
            customers,
            listed,
        }
    })
}

/// The customer as the model says `GET /customers/{id}` serves it, in the fields that matter.
fn expected_view(customer: &ModelCustomer) -> Value {
    json!({
        "marker": customer.snapshot.as_ref().map(|s| s.marker),
        "revision": customer.snapshot.as_ref().and_then(|s| s.revision),
        "mergedInto": customer.merged_into,
        "checkReason": customer.check.map(|m| format!("check #{m}")),
    })
}

fn served_view(view: &Value) -> Value {
    json!({
        "marker": view["marker"],
        "revision": view["revision"],
        "mergedInto": view["mergedInto"],
        "checkReason": view["experianCheck"]["reason"],
    })
}

/// Every revision any delivery shows for `id`.
fn revisions_of(scenario: &Scenario, id: &str) -> Vec<i64> {
    let snaps = scenario.deliveries.iter().flat_map(|d| match &d.spec {
        Spec::Snapshot { customer, .. } => vec![customer],
        Spec::Merge {
            duplicated,
            target,
            embeds_target,
        } => {
            let mut snaps = vec![duplicated];
            if *embeds_target {
                snaps.push(target);
            }
            snaps
        }
        Spec::Experian { embedded, .. } => embedded.iter().collect(),
        Spec::Other => vec![],
    });
    snaps
        .filter(|s| s.id == id)
        .filter_map(|s| s.revision)
        .collect()
}

/// Every revision a delivery shows for `id` that must count: of several merges of the same
/// customer, the first to arrive is the merge and the others are duplicates, whatever target
/// they embed.
fn counted_revisions_of(scenario: &Scenario, id: &str) -> Vec<i64> {
    let mut first_merge: BTreeMap<&str, usize> = BTreeMap::new();
    for &index in &scenario.order {
        if let Spec::Merge { duplicated, .. } = &scenario.deliveries[index].spec {
            first_merge.entry(duplicated.id).or_insert(index);
        }
    }
    let counted = Scenario {
        deliveries: scenario
            .deliveries
            .iter()
            .enumerate()
            .filter(|(index, d)| match &d.spec {
                Spec::Merge { duplicated, .. } => first_merge[duplicated.id] == *index,
                _ => true,
            })
            .map(|(_, d)| d.clone())
            .collect(),
        order: Vec::new(),
    };
    revisions_of(&counted, id)
}

fn merged_away(scenario: &Scenario) -> HashSet<&'static str> {
    scenario
        .deliveries
        .iter()
        .filter_map(|d| match &d.spec {
            Spec::Merge { duplicated, .. } => Some(duplicated.id),
            _ => None,
        })
        .collect()
}

fn check(scenario: &Scenario, backend: Backend) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    let expected: Vec<Status> = scenario
        .order
        .iter()
        .map(|&index| model.deliver(&scenario.deliveries[index], index))
        .collect();
    let actual = deliver_all(scenario, backend);

    for (n, (&index, (want, got))) in scenario
        .order
        .iter()
        .zip(expected.iter().zip(&actual.statuses))
        .enumerate()
    {
        prop_assert_eq!(
            want,
            got,
            "delivery {} (event #{}: {:?}) answered {:?}, the rules say {:?}",
            n,
            index,
            scenario.deliveries[index].spec,
            got,
            want
        );
    }

    for id in all_customers() {
        match (model.customers.get(id), actual.customers.get(id)) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                prop_assert_eq!(served_view(got), expected_view(want), "customer {}", id)
            }
            (want, got) => prop_assert!(false, "customer {id}: model {want:?}, daemon {got:?}"),
        }
    }

    let listed: Vec<String> = model
        .customers
        .iter()
        .filter(|(_, c)| c.snapshot.is_some() && c.merged_into.is_none())
        .map(|(id, _)| id.to_string())
        .collect();
    prop_assert_eq!(&actual.listed, &listed);

    // Rule 2 stated without the model: whatever the order, a customer never merged away ends at
    // the highest revision any delivery showed for it.
    let merged = merged_away(scenario);
    for id in REVISIONED.into_iter().filter(|id| !merged.contains(id)) {
        if let Some(highest) = counted_revisions_of(scenario, id).into_iter().max() {
            prop_assert_eq!(&actual.customers[id]["revision"], &json!(highest), "{}", id);
        }
    }
    Ok(())
}

/// The property runs on each backend; PostgreSQL's cases each create a database, so it draws
/// fewer of them unless `PROPTEST_POSTGRES_CASES` says otherwise.
mod every_delivery_gets_the_status_the_rules_give_and_the_projection_follows {
    use super::*;

    fn config(variable: &str, default: u32) -> ProptestConfig {
        ProptestConfig {
            // `PROPTEST_CASES=20000 cargo test --test it properties` searches further.
            cases: std::env::var(variable)
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(default),
            failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
                "proptest-regressions",
            ))),
            source_file: Some(file!()),
            ..ProptestConfig::default()
        }
    }

    fn run_on(backend: Backend, config: ProptestConfig) {
        let mut runner = proptest::test_runner::TestRunner::new(config);
        if let Err(failure) = runner.run(&scenario(), |scenario| check(&scenario, backend)) {
            panic!("{failure}");
        }
    }

    #[test]
    fn sqlite() {
        run_on(Backend::Sqlite, config("PROPTEST_CASES", 512));
    }

    #[test]
    fn postgres() {
        if crate::common::postgres::available_now() {
            run_on(Backend::Postgres, config("PROPTEST_POSTGRES_CASES", 48));
        }
    }
}

#[test]
fn the_model_agrees_with_hand_worked_cases() {
    // A merge older than the stored target: the merge applies (it merges), the target is stale.
    let b3 = Spec::Snapshot {
        created: false,
        customer: revisioned(1, 3),
    };
    let merge = Spec::Merge {
        duplicated: revisioned(0, 2),
        target: revisioned(1, 2),
        embeds_target: true,
    };
    let a4 = Spec::Snapshot {
        created: false,
        customer: revisioned(0, 4),
    };
    let deliveries: Vec<Delivery> = [b3, merge, a4]
        .into_iter()
        .enumerate()
        .map(|(marker, spec)| Delivery {
            body: encode(&spec, marker, false),
            spec,
        })
        .collect();
    let scenario = Scenario {
        deliveries,
        order: vec![0, 1, 2, 1],
    };
    let mut model = Model::default();
    let statuses: Vec<Status> = scenario
        .order
        .iter()
        .map(|&i| model.deliver(&scenario.deliveries[i], i))
        .collect();
    assert_eq!(
        statuses,
        [
            Status::Applied,
            Status::Applied,
            Status::Stale,
            Status::Duplicate
        ]
    );
    assert_eq!(
        model.customers["cus_b"].snapshot.as_ref().unwrap().marker,
        0
    );
    assert_eq!(model.customers["cus_a"].merged_into, Some("cus_b"));
    check(&scenario, Backend::Sqlite).unwrap();
}
