//! The query API: one customer, list conventions (paging, sorting, filters, search, fields)
//! and the event log.

use crate::common::{self, *};
use serde_json::{Value, json};
use std::collections::BTreeSet;

// ---------------------------------------------------------------------------------------------
// Single customer and authentication
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn an_unknown_customer_is_a_404_problem() {
    let app = spawn_app().await;
    let response = app.api_get("/customers/cus_nobody").await;
    assert_eq!(response.status(), 404);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 404);
    assert!(body["detail"].as_str().unwrap().contains("cus_nobody"));
}
}

backends! {
#[tokio::test]
async fn the_query_api_requires_the_bearer_token() {
    let app = spawn_app().await;
    let created = customer_event("customer-created", "cus_secret", 1, json!({}));
    assert_eq!(status_of(&app, created).await, "applied");
    for path in ["/customers", "/customers/cus_secret", "/events"] {
        let anonymous = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{path} without a token");
        let wrong = app
            .client
            .get(app.url(path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let body = wrong.text().await.unwrap();
        assert!(!body.contains("cus_secret"), "{path} leaked data: {body}");
        let basic = app
            .client
            .get(app.url(path))
            .basic_auth(common::USER, Some(common::PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(basic.status(), 401, "{path} with webhook credentials");
        let right = app.api_get(path).await;
        assert_eq!(right.status(), 200, "{path} with the token");
    }
}
}

// ---------------------------------------------------------------------------------------------
// List conventions
// ---------------------------------------------------------------------------------------------

struct Person {
    id: String,
    first: &'static str,
    last: &'static str,
    country: &'static str,
    email: String,
    created: String,
}

fn people() -> Vec<Person> {
    let names = [
        ("Ada", "Lovelace", "GB"),
        ("Alan", "Turing", "GB"),
        ("Grace", "Hopper", "US"),
        ("Marie", "Curie", "FR"),
        ("Pierre", "Curie", "FR"),
        ("Emmy", "Noether", "DE"),
        ("Carl", "Gauss", "DE"),
        ("Sophie", "Germain", "FR"),
        ("Evariste", "Galois", "FR"),
        ("Leonhard", "Euler", "CH"),
        ("Bernhard", "Riemann", "DE"),
        ("Henri", "Poincare", "FR"),
        ("Kurt", "Godel", "AT"),
        ("John", "Smith", "US"),
        ("Jane", "Smith", "GB"),
        ("Anna", "Smithers", "DE"),
        ("Blaise", "Pascal", "FR"),
        ("Rene", "Descartes", "FR"),
        ("Hedy", "Lamarr", "AT"),
        ("Lise", "Meitner", "DE"),
        ("Max", "Planck", "DE"),
        ("Niels", "Bohr", "DK"),
        ("Katherine", "Johnson", "US"),
        ("Dorothy", "Vaughan", "US"),
        ("Mary", "Jackson", "US"),
    ];
    names
        .iter()
        .enumerate()
        .map(|(i, &(first, last, country))| {
            // Mixed-case emails, some on a shared domain with a searchable word.
            let domain = if i % 3 == 0 {
                "Science.example"
            } else {
                "example.org"
            };
            Person {
                // Ids in an order unrelated to names, so that sorting is visible.
                id: format!("cus_list_{:02}", (i * 7) % 25),
                first,
                last,
                country,
                email: format!("{}.{}@{domain}", first.to_lowercase(), last),
                // Groups of three share a createdTime, so that ties need breaking.
                created: format!("2026-02-{:02}T09:00:00+00:00", 1 + i / 3),
            }
        })
        .collect()
}

async fn app_with_people() -> (TestApp, Vec<Person>) {
    let app = spawn_app().await;
    let people = people();
    for person in &people {
        let body = customer_event(
            "customer-created",
            &person.id,
            1,
            json!({
                "firstName": person.first,
                "lastName": person.last,
                "email": person.email,
                "createdTime": person.created,
                "primaryAddress": {"firstName": person.first, "lastName": person.last,
                    "country": person.country, "city": "Somewhere",
                    "emails": [{"label": "main", "value": person.email, "primary": true}]}
            }),
        );
        assert_eq!(status_of(&app, body).await, "applied", "{}", person.id);
    }
    (app, people)
}

fn sorted_ids(people: &[&Person]) -> Vec<String> {
    let mut ids: Vec<String> = people.iter().map(|p| p.id.clone()).collect();
    ids.sort();
    ids
}

backends! {
#[tokio::test]
async fn paging_walks_every_customer_exactly_once() {
    let (app, people) = app_with_people().await;
    assert_eq!(people.len(), 25);
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let path = format!("/customers?limit=7&offset={offset}");
        let (status, headers, body) = get_json(&app, &path).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "pagination-total"), "25", "{path}");
        assert_eq!(header(&headers, "pagination-limit"), "7", "{path}");
        assert_eq!(header(&headers, "pagination-offset"), offset.to_string());
        let page = body.as_array().unwrap().clone();
        let expected_len = 7.min(25usize.saturating_sub(offset));
        assert_eq!(page.len(), expected_len, "{path}");
        if page.is_empty() {
            break;
        }
        seen.extend(ids(&page));
        offset += 7;
        assert!(offset <= 35, "paging does not end");
    }
    let all: Vec<&Person> = people.iter().collect();
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no customer twice: {seen:?}");
    assert_eq!(seen, sorted_ids(&all), "default order is by id");

    // The same walk with a sort full of ties.
    let mut sorted_walk = Vec::new();
    for offset in (0..25).step_by(7) {
        let page = list(
            &app,
            &format!("/customers?limit=7&offset={offset}&sort=-createdTime"),
        )
        .await;
        sorted_walk.extend(ids(&page));
    }
    let unique: BTreeSet<&String> = sorted_walk.iter().collect();
    assert_eq!(unique.len(), 25, "{sorted_walk:?}");
}
}

backends! {
#[tokio::test]
async fn list_defaults_and_limits_follow_rebilly() {
    let (app, _) = app_with_people().await;
    let (status, headers, body) = get_json(&app, "/customers").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 25);
    assert_eq!(header(&headers, "pagination-limit"), "100");
    assert_eq!(header(&headers, "pagination-offset"), "0");
    assert_eq!(header(&headers, "pagination-total"), "25");

    let (status, headers, body) = get_json(&app, "/customers?limit=0").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!([]));
    assert_eq!(header(&headers, "pagination-total"), "25");
    assert_eq!(header(&headers, "pagination-limit"), "0");

    let (status, headers, body) = get_json(&app, "/customers?limit=1000&offset=20").await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 5);
    assert_eq!(header(&headers, "pagination-limit"), "1000");
    assert_eq!(header(&headers, "pagination-offset"), "20");

    let (_, _, body) = get_json(&app, "/customers?offset=100").await;
    assert_eq!(body, json!([]));

    for bad in ["1001", "-1", "ten"] {
        assert_bad_query(&app, &format!("/customers?limit={bad}"), "limit").await;
    }
    assert_bad_query(&app, "/customers?offset=-3", "offset").await;
}
}

backends! {
#[tokio::test]
async fn lists_sort_ascending_and_descending_with_stable_ties() {
    let (app, people) = app_with_people().await;

    let by_last = ids(&list(&app, "/customers?sort=lastName").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| a.last.cmp(b.last).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(by_last, expected);

    let newest_first = ids(&list(&app, "/customers?sort=-createdTime").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(newest_first, expected);

    // Ties are broken the same way every time.
    for _ in 0..3 {
        assert_eq!(
            ids(&list(&app, "/customers?sort=-createdTime").await),
            newest_first
        );
    }

    let descending_last = ids(&list(&app, "/customers?sort=-lastName&limit=3").await);
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| b.last.cmp(a.last).then(a.id.cmp(&b.id)));
    let expected: Vec<String> = expected.iter().take(3).map(|p| p.id.clone()).collect();
    assert_eq!(descending_last, expected);
}
}

backends! {
#[tokio::test]
async fn lists_filter_by_field_values() {
    let (app, people) = app_with_people().await;

    let found = list(&app, "/customers?filter=country:FR,DE").await;
    let expected: Vec<&Person> = people
        .iter()
        .filter(|p| p.country == "FR" || p.country == "DE")
        .collect();
    assert!(expected.len() > 5);
    assert_eq!(ids(&found), sorted_ids(&expected));
    let (_, headers, _) = get_json(&app, "/customers?filter=country:FR,DE&limit=2").await;
    assert_eq!(
        header(&headers, "pagination-total"),
        expected.len().to_string()
    );

    let found = list(&app, "/customers?filter=country:FR;lastName:Curie").await;
    let expected: Vec<&Person> = people
        .iter()
        .filter(|p| p.country == "FR" && p.last == "Curie")
        .collect();
    assert_eq!(expected.len(), 2);
    assert_eq!(ids(&found), sorted_ids(&expected));

    let found = list(&app, "/customers?filter=country:GB;lastName:Smith").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["firstName"], "Jane");

    assert!(list(&app, "/customers?filter=country:ZZ").await.is_empty());
}
}

backends! {
#[tokio::test]
async fn bad_list_queries_are_400_problems_naming_the_culprit() {
    let (app, _) = app_with_people().await;
    assert_bad_query(&app, "/customers?filter=colour:red", "colour").await;
    assert_bad_query(&app, "/customers?filter=colour:red", "filter").await;
    assert_bad_query(&app, "/customers?filter=country", "filter").await;
    assert_bad_query(&app, "/customers?sort=shoeSize", "shoeSize").await;
    assert_bad_query(&app, "/customers?sort=-shoeSize", "sort").await;
    assert_bad_query(&app, "/customers?colour=red", "colour").await;
    assert_bad_query(&app, "/events?colour=red", "colour").await;
}
}

backends! {
#[tokio::test]
async fn q_finds_partial_case_insensitive_matches_in_names_and_emails() {
    let (app, people) = app_with_people().await;
    let matching = |needle: &str| -> Vec<String> {
        let needle = needle.to_lowercase();
        let hits: Vec<&Person> = people
            .iter()
            .filter(|p| {
                p.first.to_lowercase().contains(&needle)
                    || p.last.to_lowercase().contains(&needle)
                    || p.email.to_lowercase().contains(&needle)
            })
            .collect();
        sorted_ids(&hits)
    };

    let smi = ids(&list(&app, "/customers?q=SMI").await);
    assert_eq!(smi, matching("smi"));
    assert_eq!(smi.len(), 3, "Smith, Smith and Smithers");

    let science = ids(&list(&app, "/customers?q=science").await);
    assert_eq!(science, matching("science"));
    assert_eq!(science.len(), 9, "emails on Science.example");

    let ada = ids(&list(&app, "/customers?q=aDa").await);
    assert_eq!(ada, matching("ada"));
    assert!(!ada.is_empty());

    let first_name = ids(&list(&app, "/customers?q=atheri").await);
    assert_eq!(first_name, matching("atheri"));
    assert_eq!(first_name.len(), 1);

    assert!(list(&app, "/customers?q=nobody-here").await.is_empty());
    // LIKE wildcards are searched literally.
    assert!(list(&app, "/customers?q=%25").await.is_empty());
    assert!(list(&app, "/customers?q=_").await.is_empty());
}
}

backends! {
#[tokio::test]
async fn fields_limits_the_returned_fields() {
    let (app, people) = app_with_people().await;
    let found = list(&app, "/customers?fields=id,email&sort=id").await;
    assert_eq!(found.len(), 25);
    let mut all: Vec<&Person> = people.iter().collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for (customer, person) in found.iter().zip(all) {
        let keys: BTreeSet<&str> = customer
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, BTreeSet::from(["id", "email"]), "{customer}");
        assert_eq!(customer["email"], person.email.as_str());
    }
    // What is not a list of field names is refused, naming `fields`.
    for bad in [
        "fields=",
        "fields=,",
        "fields=id;email",
        "fields=id,e%20mail",
    ] {
        assert_bad_query(&app, &format!("/customers?{bad}"), "fields").await;
    }
}
}

// ---------------------------------------------------------------------------------------------
// GET /events
// ---------------------------------------------------------------------------------------------

backends! {
#[tokio::test]
async fn events_are_listed_newest_first_with_filters() {
    let app = spawn_app().await;
    let mut delivered = Vec::new();
    for name in fixture_names() {
        let (id, status) = app.deliver_ok(fixture(&format!("deliveries/{name}"))).await;
        delivered.push((id, status));
    }
    let rejected = app
        .deliver(fixture("rejected/experian-bad-outcome.json"))
        .await;
    assert_eq!(rejected.status(), 422);

    let (status, headers, body) = get_json(&app, "/events").await;
    assert_eq!(status, 200);
    let all = body.as_array().unwrap();
    assert_eq!(all.len(), 13);
    assert_eq!(header(&headers, "pagination-total"), "13");
    let listed = ids_of_events(all);
    let mut sorted = listed.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(listed, sorted, "newest first");
    for event in all {
        let keys: BTreeSet<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "id",
            "receivedTime",
            "eventType",
            "customerId",
            "revision",
            "status",
            "error",
        ] {
            assert!(keys.contains(key), "{key} missing from {event}");
        }
        assert!(
            event["receivedTime"].as_str().unwrap().starts_with("20"),
            "{event}"
        );
    }
    let rejected_event = &all[0];
    assert_eq!(rejected_event["status"], "rejected");
    assert!(
        rejected_event["error"]
            .as_str()
            .unwrap()
            .contains("outcome")
    );

    // The first delivery: Alice created, revision 1, applied.
    let first = all.last().unwrap();
    assert_eq!(first["id"], delivered[0].0);
    assert_eq!(first["eventType"], "customer-created");
    assert_eq!(first["customerId"], "cus_alice_01");
    assert_eq!(first["revision"], 1);
    assert_eq!(first["status"], "applied");
    assert_eq!(first["error"], Value::Null);

    let bob = events_of(&app, "?customerId=cus_bob_02").await;
    assert_eq!(
        bob.iter()
            .map(|e| e["eventType"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec![
            "experian-check-performed",
            "experian-check-performed",
            "customer-created"
        ]
    );
    assert!(bob.iter().all(|e| e["customerId"] == "cus_bob_02"));

    let stale = events_of(&app, "?status=stale").await;
    assert_eq!(stale.len(), 2);
    assert!(stale.iter().all(|e| e["status"] == "stale"));
    let stale_customers: Vec<&str> = stale
        .iter()
        .map(|e| e["customerId"].as_str().unwrap())
        .collect();
    assert_eq!(stale_customers, vec!["cus_carol_03", "cus_alice_01"]);

    let ignored = events_of(&app, "?status=ignored").await;
    assert_eq!(ignored.len(), 1);
    assert_eq!(ignored[0]["eventType"], "invoice-paid");
    assert_eq!(ignored[0]["customerId"], Value::Null);

    let merges = events_of(&app, "?eventType=customer-merged").await;
    assert_eq!(merges.len(), 1);
    assert_eq!(merges[0]["revision"], 4);

    let applied_created = events_of(&app, "?eventType=customer-created&status=applied").await;
    assert_eq!(applied_created.len(), 4);

    let (_, headers, page) = get_json(&app, "/events?limit=3&offset=2").await;
    assert_eq!(
        ids_of_events(page.as_array().unwrap()),
        listed[2..5].to_vec()
    );
    assert_eq!(header(&headers, "pagination-limit"), "3");
    assert_eq!(header(&headers, "pagination-offset"), "2");
    assert_eq!(header(&headers, "pagination-total"), "13");

    assert_bad_query(&app, "/events?status=exploded", "status").await;
    assert_bad_query(&app, "/events?limit=1001", "limit").await;
}
}
