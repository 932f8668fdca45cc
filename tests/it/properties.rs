//! Property tests for the ordering and dedupe rules: any order of the same deliveries, with any
//! redeliveries, converges to the projection of in-order delivery, which is the highest
//! revision of each customer.

use proptest::prelude::*;
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::ingest::Pipeline;
use rebilly_webhookd::query::{CustomerQuery, ListOptions};
use rebilly_webhookd::storage::{Status, Store};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const CUSTOMERS: [&str; 3] = ["cus_a", "cus_b", "cus_c"];

fn customer(id: &str, revision: i64) -> Value {
    json!({
        "id": id,
        "revision": revision,
        "email": format!("{id}.r{revision}@example.com"),
        "firstName": "Prop",
        "lastName": format!("{id}-{revision}"),
        "createdTime": "2026-03-01T00:00:00+00:00",
        "updatedTime": format!("2026-03-01T00:00:{:02}+00:00", revision),
        "primaryAddress": {"country": "FR", "city": format!("City {revision}")},
        "customFields": {"revisionSeen": revision},
        "tags": []
    })
}

fn snapshot_event(id: &str, revision: i64) -> Vec<u8> {
    let event_type = if revision == 1 {
        "customer-created"
    } else {
        "customer-updated"
    };
    serde_json::to_vec(&json!({
        "eventType": event_type,
        "customerId": id,
        "_embedded": {"customer": customer(id, revision)},
    }))
    .unwrap()
}

fn experian_event(id: &str, revision: i64, check: u32) -> Vec<u8> {
    let outcome = [1, 0, -1][check as usize % 3];
    serde_json::to_vec(&json!({
        "eventType": "experian-check-performed",
        "customerId": id,
        "outcome": outcome,
        "reason": format!("check {check}"),
        "errorCode": format!("{:03}", check),
        "errorMessage": "",
        "_embedded": {"customer": customer(id, revision)},
    }))
    .unwrap()
}

/// Merges `duplicated` (at its last revision) into `target`, whose revision the merge raises.
fn merge_event(
    duplicated: &str,
    duplicated_revision: i64,
    target: &str,
    target_revision: i64,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": "customer-merged",
        "targetCustomerId": target,
        "duplicatedCustomer": customer(duplicated, duplicated_revision),
        "_embedded": {"targetCustomer": customer(target, target_revision)},
    }))
    .unwrap()
}

/// A history: each customer's revisions, Experian checks, and maybe a merge of c into a.
#[derive(Debug, Clone)]
struct History {
    deliveries: Vec<Vec<u8>>,
    /// Each Experian check's customer, keyed by the delivery index.
    checks: BTreeMap<usize, String>,
    merged: bool,
}

fn history() -> impl Strategy<Value = History> {
    (
        prop::collection::vec(1i64..=5, CUSTOMERS.len()),
        prop::collection::vec((0usize..CUSTOMERS.len(), 0u32..6), 0..4),
        any::<bool>(),
    )
        .prop_map(|(last_revisions, checks, merged)| {
            let mut deliveries = Vec::new();
            let mut check_owners = BTreeMap::new();
            for (id, last) in CUSTOMERS.iter().zip(&last_revisions) {
                for revision in 1..=*last {
                    deliveries.push(snapshot_event(id, revision));
                }
            }
            for (n, (who, seed)) in checks.into_iter().enumerate() {
                let id = CUSTOMERS[who];
                let revision = 1 + i64::from(seed) % last_revisions[who];
                check_owners.insert(deliveries.len(), id.to_owned());
                deliveries.push(experian_event(id, revision, n as u32 * 10 + seed));
            }
            if merged {
                deliveries.push(merge_event(
                    "cus_c",
                    last_revisions[2],
                    "cus_a",
                    last_revisions[0] + 1,
                ));
            }
            History {
                deliveries,
                checks: check_owners,
                merged,
            }
        })
}

/// A delivery order: a permutation of the history, plus redeliveries inserted anywhere.
fn scenario() -> impl Strategy<Value = (History, Vec<usize>)> {
    history().prop_flat_map(|history| {
        let n = history.deliveries.len();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let extra = prop::collection::vec((0..n, 0..=n), 0..4);
        (Just(history), order, extra).prop_map(|(history, mut order, extra)| {
            for (which, at) in extra {
                let at = at.min(order.len());
                order.insert(at, which);
            }
            (history, order)
        })
    })
}

struct Projection {
    /// Each customer as served, with `experianCheck` taken out.
    customers: BTreeMap<String, Value>,
    /// The latest Experian check each customer shows.
    checks: BTreeMap<String, Value>,
    listed: Vec<String>,
}

fn deliver_all(deliveries: &[Vec<u8>], order: &[usize]) -> (Projection, Vec<Status>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        let db = dir.path().join("p.db");
        std::fs::write(
            &config,
            format!(
                "[storage]\npath = \"{}\"\nsynchronous = \"normal\"\n",
                db.display()
            ),
        )
        .unwrap();
        let settings = Settings::load(Some(&config)).unwrap();
        let store = Store::open(&settings.storage).unwrap();
        let pipeline = Pipeline::new(store.clone());
        let mut statuses = Vec::new();
        for &index in order {
            let body = AuthenticatedBody::from_operator(deliveries[index].clone().into());
            statuses.push(pipeline.submit(body).await.unwrap().status);
        }
        let mut customers = BTreeMap::new();
        let mut checks = BTreeMap::new();
        for id in CUSTOMERS {
            if let Some(mut view) = store.customer(id.to_owned()).await.unwrap() {
                let check = view
                    .as_object_mut()
                    .unwrap()
                    .remove("experianCheck")
                    .unwrap();
                checks.insert(id.to_owned(), check);
                customers.insert(id.to_owned(), view);
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
        (
            Projection {
                customers,
                checks,
                listed,
            },
            statuses,
        )
    })
}

fn highest_revision(history: &History, id: &str) -> i64 {
    history
        .deliveries
        .iter()
        .filter_map(|body| {
            let value: Value = serde_json::from_slice(body).unwrap();
            let embedded = [
                &value["_embedded"]["customer"],
                &value["_embedded"]["targetCustomer"],
                &value["duplicatedCustomer"],
            ];
            embedded
                .into_iter()
                .filter(|c| c["id"] == id)
                .filter_map(|c| c["revision"].as_i64())
                .max()
        })
        .max()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_order_with_redeliveries_converges_to_the_highest_revisions((history, order) in scenario()) {
        let in_order: Vec<usize> = (0..history.deliveries.len()).collect();
        let (expected, _) = deliver_all(&history.deliveries, &in_order);
        let (actual, statuses) = deliver_all(&history.deliveries, &order);

        prop_assert_eq!(&actual.customers, &expected.customers);
        prop_assert_eq!(&actual.listed, &expected.listed);
        for id in CUSTOMERS {
            prop_assert_eq!(
                actual.customers[id]["revision"].as_i64().unwrap(),
                highest_revision(&history, id),
                "customer {} is not at its highest revision", id
            );
        }
        let merged_into = &actual.customers["cus_c"]["mergedInto"];
        if history.merged {
            prop_assert_eq!(merged_into, &json!("cus_a"));
            prop_assert!(!actual.listed.contains(&"cus_c".to_owned()));
        } else {
            prop_assert!(merged_into.is_null());
        }

        // Every redelivery (a delivery index seen before) is answered `duplicate`.
        let mut seen = std::collections::HashSet::new();
        for (&index, status) in order.iter().zip(&statuses) {
            if !seen.insert(index) {
                prop_assert_eq!(*status, Status::Duplicate);
            }
        }

        // experianCheck is the latest check received, by first arrival.
        let mut latest: BTreeMap<String, usize> = BTreeMap::new();
        let mut first_seen = std::collections::HashSet::new();
        for &index in &order {
            if first_seen.insert(index)
                && let Some(owner) = history.checks.get(&index)
            {
                latest.insert(owner.clone(), index);
            }
        }
        for id in CUSTOMERS {
            let shown = &actual.checks[id];
            match latest.get(id) {
                None => prop_assert!(shown.is_null()),
                Some(&index) => {
                    let body: Value = serde_json::from_slice(&history.deliveries[index]).unwrap();
                    prop_assert_eq!(&shown["reason"], &body["reason"]);
                    prop_assert_eq!(&shown["outcome"], &body["outcome"]);
                }
            }
        }
    }
}
