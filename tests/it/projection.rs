//! The projection rules (revisions, updatedTime, arrival, merges, Experian checks) over real
//! HTTP, and the fixtures' independence of arrival order.

use crate::common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Rule 2: revisions, then updatedTime, then arrival
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn a_lower_revision_never_overwrites_a_higher_one() {
    let app = spawn_app().await;
    let three = customer_event("customer-updated", "cus_rev", 3, json!({"city": "Three"}));
    let two = customer_event("customer-updated", "cus_rev", 2, json!({"city": "Two"}));
    assert_eq!(status_of(&app, three).await, "applied");
    assert_eq!(status_of(&app, two).await, "stale");
    let customer = app.customer("cus_rev").await;
    assert_eq!(customer["revision"], 3);
    assert_eq!(customer["city"], "Three");
    let stale = events_of(&app, "?customerId=cus_rev&status=stale").await;
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["revision"], 2);
    assert!(
        stale[0]["error"].is_string(),
        "a stale event records why: {}",
        stale[0]
    );
}
}

backends! {
#[tokio::test]
async fn a_created_event_arriving_after_a_higher_update_is_stale() {
    let app = spawn_app().await;
    let updated = customer_event(
        "customer-updated",
        "cus_late",
        2,
        json!({"lastName": "New"}),
    );
    let created = customer_event(
        "customer-created",
        "cus_late",
        1,
        json!({"lastName": "Old"}),
    );
    assert_eq!(status_of(&app, updated).await, "applied");
    assert_eq!(status_of(&app, created).await, "stale");
    let customer = app.customer("cus_late").await;
    assert_eq!(customer["revision"], 2);
    assert_eq!(customer["lastName"], "New");
}
}

backends! {
#[tokio::test]
async fn any_arrival_order_of_revisions_ends_at_the_highest() {
    let orders: [[i64; 5]; 5] = [
        [1, 2, 3, 4, 5],
        [5, 4, 3, 2, 1],
        [3, 1, 5, 2, 4],
        [2, 5, 1, 4, 3],
        [4, 3, 5, 1, 2],
    ];
    let app = spawn_app().await;
    for (n, order) in orders.iter().enumerate() {
        let id = format!("cus_order_{n}");
        let mut highest = 0;
        for &revision in order {
            let event_type = if revision == 1 {
                "customer-created"
            } else {
                "customer-updated"
            };
            let body = customer_event(
                event_type,
                &id,
                revision,
                json!({"firstName": format!("rev{revision}")}),
            );
            let status = status_of(&app, body).await;
            let expected = if revision > highest {
                "applied"
            } else {
                "stale"
            };
            assert_eq!(status, expected, "order {order:?}, revision {revision}");
            highest = highest.max(revision);
        }
        let customer = app.customer(&id).await;
        assert_eq!(customer["revision"], 5, "order {order:?}");
        assert_eq!(customer["firstName"], "rev5", "order {order:?}");
        assert_eq!(customer["lastName"], "Customer 5", "order {order:?}");
        assert_eq!(customer["invoiceCount"], 5, "order {order:?}");
    }
}
}

backends! {
#[tokio::test]
async fn without_revisions_an_older_updated_time_arriving_later_is_stale() {
    let app = spawn_app().await;
    let newer = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T08:00:00+00:00"),
        json!({"lastName": "Newer"}),
    );
    let older = unrevisioned_event(
        "customer-created",
        "cus_norev",
        Some("2026-03-01T08:00:00+00:00"),
        json!({"lastName": "Older"}),
    );
    assert_eq!(status_of(&app, newer).await, "applied");
    assert_eq!(status_of(&app, older).await, "stale");
    let customer = app.customer("cus_norev").await;
    assert_eq!(customer["lastName"], "Newer");
    assert!(customer.get("revision").is_none());

    // A later updatedTime in another offset is still compared as an instant.
    let later = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T10:00:00+01:00"),
        json!({"lastName": "Latest"}),
    );
    assert_eq!(status_of(&app, later).await, "applied");
    let earlier_in_other_offset = unrevisioned_event(
        "customer-updated",
        "cus_norev",
        Some("2026-03-02T09:30:00+02:00"),
        json!({"lastName": "Earlier"}),
    );
    assert_eq!(status_of(&app, earlier_in_other_offset).await, "stale");
    assert_eq!(app.customer("cus_norev").await["lastName"], "Latest");
}
}

backends! {
#[tokio::test]
async fn without_revisions_or_distinct_times_the_later_arrival_wins() {
    let app = spawn_app().await;
    let same = "2026-03-05T12:00:00+00:00";
    for name in ["First", "Second", "Third"] {
        let body = unrevisioned_event(
            "customer-updated",
            "cus_sametime",
            Some(same),
            json!({"lastName": name}),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{name}");
        assert_eq!(app.customer("cus_sametime").await["lastName"], name);
    }
    for name in ["Undated one", "Undated two"] {
        let body = unrevisioned_event(
            "customer-updated",
            "cus_undated",
            None,
            json!({"lastName": name}),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{name}");
        assert_eq!(app.customer("cus_undated").await["lastName"], name);
    }
}
}

backends! {
#[tokio::test]
async fn unknown_customer_fields_are_served_back() {
    let app = spawn_app().await;
    let body = customer_event(
        "customer-created",
        "cus_unknown_fields",
        1,
        json!({
            "loyaltyPoints": 1200,
            "futureFeature": {"nested": {"deeper": [1, "two", {"three": true}]}, "flag": null},
            "primaryAddress": {"country": "FR", "city": "Lyon", "planet": "Earth",
                "emails": [{"label": "main", "value": "x@example.com", "primary": true, "verifiedBy": "sms"}]}
        }),
    );
    // An unknown top-level body field is tolerated too.
    let mut value: Value = serde_json::from_slice(&body).unwrap();
    value["webhookVersion"] = json!("2");
    assert_eq!(
        status_of(&app, serde_json::to_vec(&value).unwrap()).await,
        "applied"
    );
    let customer = app.customer("cus_unknown_fields").await;
    assert_eq!(customer["loyaltyPoints"], 1200);
    assert_eq!(
        customer["futureFeature"],
        json!({"nested": {"deeper": [1, "two", {"three": true}]}, "flag": null})
    );
    assert_eq!(customer["primaryAddress"]["planet"], "Earth");
    assert_eq!(customer["primaryAddress"]["emails"][0]["verifiedBy"], "sms");
    // The served customer is the embedded resource plus the two projection fields.
    let mut expected = value["_embedded"]["customer"].clone();
    expected["mergedInto"] = Value::Null;
    expected["experianCheck"] = Value::Null;
    assert_eq!(customer, expected);
}
}

// ---------------------------------------------------------------------------------------------
// Rule 3: merges
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn a_merged_away_customer_stays_merged_and_leaves_the_list() {
    let app = spawn_app().await;
    for id in ["cus_target", "cus_dupe"] {
        let body = customer_event("customer-created", id, 1, json!({}));
        assert_eq!(status_of(&app, body).await, "applied");
    }
    assert_eq!(
        ids(&list(&app, "/customers").await),
        vec!["cus_dupe", "cus_target"]
    );

    let merge = merge_event("cus_target", Some(3), "cus_dupe", 2);
    assert_eq!(status_of(&app, merge).await, "applied");
    let dupe = app.customer("cus_dupe").await;
    assert_eq!(dupe["mergedInto"], "cus_target");
    assert_eq!(dupe["revision"], 2);
    let target = app.customer("cus_target").await;
    assert_eq!(target["revision"], 3);
    assert_eq!(target["lastName"], "Merge target");
    assert_eq!(target["mergedInto"], Value::Null);
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
    let (_, headers, _) = get_json(&app, "/customers").await;
    assert_eq!(header(&headers, "pagination-total"), "1");

    // Later events (a higher revision) and late ones (a lower revision) are recorded only.
    let later = customer_event(
        "customer-updated",
        "cus_dupe",
        9,
        json!({"lastName": "Back"}),
    );
    let late = customer_event(
        "customer-updated",
        "cus_dupe",
        1,
        json!({"lastName": "Early"}),
    );
    let (later_id, later_status) = app.deliver_ok(later).await;
    let (late_id, late_status) = app.deliver_ok(late).await;
    assert_eq!(later_status, "stale");
    assert_eq!(late_status, "stale");
    let logged = events_of(&app, "?customerId=cus_dupe").await;
    let logged_ids = ids_of_events(&logged);
    assert!(logged_ids.contains(&later_id) && logged_ids.contains(&late_id));
    assert_eq!(logged[0]["id"], late_id, "newest first");
    assert_eq!(logged[0]["status"], "stale");

    let after = app.customer("cus_dupe").await;
    assert_eq!(after, dupe, "the merged-away customer never changes again");
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
    assert!(list(&app, "/customers?q=back").await.is_empty());
    assert!(list(&app, "/customers?filter=id:cus_dupe").await.is_empty());

    // Not even after a restart.
    let app = app.restart().await;
    assert_eq!(app.customer("cus_dupe").await, dupe);
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_target"]);
}
}

backends! {
#[tokio::test]
async fn a_merge_updates_the_target_only_with_a_higher_revision() {
    let app = spawn_app().await;
    let target = customer_event(
        "customer-updated",
        "cus_tgt_hi",
        5,
        json!({"lastName": "Five"}),
    );
    assert_eq!(status_of(&app, target).await, "applied");
    let dupe = customer_event("customer-created", "cus_dup_lo", 1, json!({}));
    assert_eq!(status_of(&app, dupe).await, "applied");

    let merge = merge_event("cus_tgt_hi", Some(4), "cus_dup_lo", 2);
    assert_eq!(
        status_of(&app, merge).await,
        "applied",
        "the merge itself is news"
    );
    let target = app.customer("cus_tgt_hi").await;
    assert_eq!(target["revision"], 5);
    assert_eq!(target["lastName"], "Five");
    assert_eq!(app.customer("cus_dup_lo").await["mergedInto"], "cus_tgt_hi");

    // And with a higher revision it is updated.
    let app2 = spawn_app().await;
    let target = customer_event(
        "customer-updated",
        "cus_tgt",
        3,
        json!({"lastName": "Three"}),
    );
    assert_eq!(status_of(&app2, target).await, "applied");
    assert_eq!(
        status_of(&app2, merge_event("cus_tgt", Some(4), "cus_dup", 1)).await,
        "applied"
    );
    let target = app2.customer("cus_tgt").await;
    assert_eq!(target["revision"], 4);
    assert_eq!(target["lastName"], "Merge target");
}
}

backends! {
#[tokio::test]
async fn a_merge_arriving_before_any_event_of_either_customer_still_holds() {
    let app = spawn_app().await;
    let merge = merge_event("cus_first_tgt", Some(4), "cus_first_dup", 2);
    assert_eq!(status_of(&app, merge).await, "applied");
    assert_eq!(
        app.customer("cus_first_dup").await["mergedInto"],
        "cus_first_tgt"
    );
    assert_eq!(app.customer("cus_first_tgt").await["revision"], 4);

    for (id, revision, expected) in [
        ("cus_first_dup", 1, "stale"),
        ("cus_first_tgt", 1, "stale"),
        ("cus_first_dup", 3, "stale"),
        ("cus_first_tgt", 3, "stale"),
    ] {
        let event_type = if revision == 1 {
            "customer-created"
        } else {
            "customer-updated"
        };
        let body = customer_event(event_type, id, revision, json!({"lastName": "Late"}));
        assert_eq!(status_of(&app, body).await, expected, "{id} rev {revision}");
    }
    let dupe = app.customer("cus_first_dup").await;
    assert_eq!(dupe["mergedInto"], "cus_first_tgt");
    assert_eq!(dupe["revision"], 2);
    let target = app.customer("cus_first_tgt").await;
    assert_eq!(target["revision"], 4);
    assert_eq!(target["lastName"], "Merge target");
    assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_first_tgt"]);

    // A higher revision of the target still applies afterwards.
    let newer = customer_event("customer-updated", "cus_first_tgt", 5, json!({}));
    assert_eq!(status_of(&app, newer).await, "applied");
    assert_eq!(app.customer("cus_first_tgt").await["revision"], 5);
}
}

backends! {
#[tokio::test]
async fn the_merge_is_the_last_word_on_the_merged_away_customer_whatever_arrived_before() {
    // Two databases, the same three events, two arrival orders: the merged-away customer ends
    // as the merge described it, even when a higher revision of it arrived before the merge.
    let updated = customer_event(
        "customer-updated",
        "cus_gone",
        3,
        json!({"lastName": "Three"}),
    );
    let merge = merge_event("cus_stays", Some(2), "cus_gone", 2);
    let created = customer_event("customer-created", "cus_gone", 1, json!({}));
    let mut results = Vec::new();
    for order in [
        [updated.clone(), merge.clone(), created.clone()],
        [created.clone(), merge.clone(), updated.clone()],
    ] {
        let app = spawn_app().await;
        for body in order {
            app.deliver_ok(body).await;
        }
        let gone = app.customer("cus_gone").await;
        assert_eq!(gone["mergedInto"], "cus_stays");
        assert_eq!(gone["revision"], 2, "{gone}");
        assert_eq!(gone["lastName"], "Merged away");
        assert_eq!(ids(&list(&app, "/customers").await), vec!["cus_stays"]);
        results.push(gone);
    }
    assert_eq!(results[0], results[1]);
}
}

backends! {
#[tokio::test]
async fn a_merge_without_a_target_snapshot_still_marks_the_duplicate() {
    let app = spawn_app().await;
    let target = customer_event("customer-created", "cus_bare_tgt", 1, json!({}));
    assert_eq!(status_of(&app, target).await, "applied");
    let merge = merge_event("cus_bare_tgt", None, "cus_bare_dup", 1);
    assert_eq!(status_of(&app, merge).await, "applied");
    assert_eq!(
        app.customer("cus_bare_dup").await["mergedInto"],
        "cus_bare_tgt"
    );
    assert_eq!(app.customer("cus_bare_tgt").await["revision"], 1);
}
}

// ---------------------------------------------------------------------------------------------
// Rule 4: Experian checks
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn every_experian_check_is_kept_and_the_latest_one_is_shown() {
    let app = spawn_app().await;
    let created = customer_event("customer-created", "cus_exp", 1, json!({}));
    assert_eq!(status_of(&app, created).await, "applied");
    let fresh = app.customer("cus_exp").await;
    assert_eq!(fresh["experianCheck"], Value::Null);
    assert_eq!(fresh["mergedInto"], Value::Null);

    let checks = [
        (1, "Record matched", "000", ""),
        (
            -1,
            "Date of birth mismatch",
            "003",
            "DOB does not match bureau record",
        ),
        (0, "No match found", "002", "No record"),
    ];
    let mut event_ids = Vec::new();
    for (outcome, reason, code, message) in checks {
        // Every check embeds the same customer revision: never a duplicate for that.
        let body = experian_event("cus_exp", 2, outcome, reason, code, message);
        let (id, status) = app.deliver_ok(body).await;
        assert_eq!(status, "applied", "{reason}");
        event_ids.push(id);
        let customer = app.customer("cus_exp").await;
        assert_eq!(
            customer["experianCheck"],
            json!({"outcome": outcome, "reason": reason, "errorCode": code, "errorMessage": message})
        );
        assert_eq!(customer["revision"], 2);
    }
    let listed = events_of(
        &app,
        "?eventType=experian-check-performed&customerId=cus_exp",
    )
    .await;
    let mut listed_ids = ids_of_events(&listed);
    listed_ids.reverse();
    assert_eq!(listed_ids, event_ids);
    assert!(listed.iter().all(|e| e["status"] == "applied"));
}
}

backends! {
#[tokio::test]
async fn an_experian_check_with_an_older_embedded_customer_still_shows_and_keeps_the_snapshot() {
    let app = spawn_app().await;
    let updated = customer_event(
        "customer-updated",
        "cus_exp_old",
        4,
        json!({"lastName": "Four"}),
    );
    assert_eq!(status_of(&app, updated).await, "applied");
    let check = experian_event("cus_exp_old", 2, -1, "Mismatch", "003", "bad");
    assert_eq!(status_of(&app, check).await, "applied");
    let customer = app.customer("cus_exp_old").await;
    assert_eq!(customer["revision"], 4);
    assert_eq!(customer["lastName"], "Four");
    assert_eq!(customer["experianCheck"]["outcome"], -1);
    assert_eq!(customer["experianCheck"]["errorCode"], "003");
}
}

backends! {
#[tokio::test]
async fn the_fixture_experian_checks_are_both_recorded() {
    let app = spawn_app().await;
    for name in [
        "02-customer-created-bob.json",
        "06-experian-check-bob-match.json",
        "07-experian-check-bob-mismatch.json",
    ] {
        assert_eq!(
            status_of(&app, fixture(&format!("deliveries/{name}"))).await,
            "applied",
            "{name}"
        );
    }
    let bob = app.customer("cus_bob_02").await;
    assert_eq!(
        bob["experianCheck"],
        json!({"outcome": -1, "reason": "Date of birth mismatch", "errorCode": "003",
               "errorMessage": "DOB does not match bureau record"})
    );
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["primaryAddress"]["dob"], "1979-11-23");
    let checks = events_of(
        &app,
        "?eventType=experian-check-performed&customerId=cus_bob_02",
    )
    .await;
    assert_eq!(checks.len(), 2);
}
}

// ---------------------------------------------------------------------------------------------
// Fixture order independence
// ---------------------------------------------------------------------------------------------

/// The projection as the API shows it after delivering the fixtures in `order` (indexes into
/// the name-ordered list); also checks nothing is rejected.
async fn projection_after(order: &[usize]) -> (Value, Value, Value) {
    let names = fixture_names();
    let app = spawn_app().await;
    for &index in order {
        let name = &names[index];
        let response = app.deliver(fixture(&format!("deliveries/{name}"))).await;
        assert_eq!(response.status(), 200, "{name} in order {order:?}");
    }
    let customers = Value::Array(list(&app, "/customers?sort=id").await);
    let carol = app.customer("cus_carol_03").await;
    let bob = app.customer("cus_bob_02").await;
    (customers, carol, bob)
}

backends! {
#[tokio::test]
async fn the_fixture_projection_does_not_depend_on_arrival_order() {
    let in_name_order: Vec<usize> = (0..12).collect();
    let (customers, carol, bob) = projection_after(&in_name_order).await;

    // The expected final projection of fixtures/README.md.
    assert_eq!(
        ids(customers.as_array().unwrap()),
        vec!["cus_alice_01", "cus_bob_02", "cus_dave_04"]
    );
    let alice = &customers[0];
    assert_eq!(alice["revision"], 4);
    assert_eq!(alice["email"], "alice@martin.example");
    assert_eq!(alice["primaryAddress"]["city"], "Lyon");
    assert_eq!(alice["tags"].as_array().unwrap().len(), 2);
    assert_eq!(alice["updatedTime"], "2026-03-10T14:00:00+00:00");
    assert_eq!(alice["mergedInto"], Value::Null);
    assert_eq!(alice["experianCheck"], Value::Null);
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["primaryAddress"]["dob"], "1979-11-23");
    assert_eq!(bob["experianCheck"]["outcome"], -1);
    assert_eq!(bob["experianCheck"]["errorCode"], "003");
    assert_eq!(customers[1], bob);
    assert_eq!(carol["revision"], 2);
    assert_eq!(carol["updatedTime"], "2026-03-09T16:00:00+00:00");
    assert_eq!(carol["email"], "carol.nguyen@example.net");
    assert_eq!(carol["mergedInto"], "cus_alice_01");
    let dave = &customers[2];
    assert_eq!(dave["lastName"], "Okafor-Reyes");
    assert_eq!(dave["updatedTime"], "2026-03-02T08:00:00+00:00");
    assert!(dave.get("revision").is_none());

    let reversed: Vec<usize> = (0..12).rev().collect();
    let shuffled = vec![6, 11, 2, 9, 0, 5, 3, 10, 1, 7, 4, 8];
    let merge_first = vec![7, 8, 4, 11, 10, 3, 2, 1, 0, 5, 6, 9];
    let carol_late_first = vec![8, 0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11];
    for order in [shuffled, merge_first, carol_late_first, reversed] {
        let (other_customers, other_carol, other_bob) = projection_after(&order).await;
        assert_eq!(other_carol, carol, "cus_carol_03 after order {order:?}");
        // Experian's `experianCheck` is, by rule 4, the latest check *received*: when 07 arrives
        // before 06 the match from 06 is the latest. Everything else must be equal.
        let position = |file: usize| order.iter().position(|&i| i == file).unwrap();
        let mut expected_customers = customers.clone();
        let mut expected_bob = bob.clone();
        if position(6) < position(5) {
            let check = json!({"outcome": 1, "reason": "Record matched", "errorCode": "000",
                               "errorMessage": ""});
            expected_bob["experianCheck"] = check.clone();
            expected_customers[1]["experianCheck"] = check;
        }
        assert_eq!(other_bob, expected_bob, "cus_bob_02 after order {order:?}");
        assert_eq!(
            other_customers, expected_customers,
            "GET /customers after order {order:?}"
        );
    }
}
}
