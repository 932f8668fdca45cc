//! Rebilly's filter grammar over real HTTP (and the command line): every form against the set
//! the test computes itself from the customers it seeded, date-times written in every form
//! Rebilly uses and compared as instants, sorting by Rebilly's names, and 400s for what cannot
//! be evaluated.

use crate::common::*;
use serde_json::{Value, json};
use std::cmp::Reverse;
use time::OffsetDateTime;

/// 2026-01-01T00:00:00Z in Unix milliseconds.
const NEW_YEAR_MS: i64 = 1_767_225_600_000;

struct Person {
    id: String,
    first: &'static str,
    last: &'static str,
    country: Option<&'static str>,
    city: &'static str,
    organization: Option<&'static str>,
    revision: Option<i64>,
    created_ms: Option<i64>,
    /// `createdTime` as sent (absent when `None`).
    created_text: Option<String>,
    updated_ms: Option<i64>,
    updated_text: Option<String>,
    tier: Option<&'static str>,
    score: Option<Value>,
    /// `primaryAddress` is `null` rather than an object.
    null_address: bool,
}

/// The fields of a date-time, from Unix milliseconds, computed without the daemon's code.
fn parts(ms: i64, offset_minutes: i64) -> (OffsetDateTime, String) {
    let local = OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(ms + offset_minutes * 60_000) * 1_000_000,
    )
    .unwrap();
    let date = format!(
        "{:04}-{:02}-{:02}",
        local.year(),
        u8::from(local.month()),
        local.day()
    );
    (local, date)
}

/// Renders `ms` in one of the forms Rebilly has written, chosen by `form`: RFC 3339 with
/// `Z` or an offset and 0, 1, 3, 6 or 9 fraction digits, or the older `YYYY-MM-DD HH:MM:SS`
/// with or without a zone.
fn render(ms: i64, form: usize) -> String {
    let offset = match form % 6 {
        1 => 120,  // +02:00
        3 => -300, // -05:00
        _ => 0,
    };
    let (local, date) = parts(ms, offset);
    let clock = format!(
        "{:02}:{:02}:{:02}",
        local.hour(),
        local.minute(),
        local.second()
    );
    let millis = ms.rem_euclid(1000);
    let fraction = match form % 6 {
        0 => format!(".{millis:03}"),
        1 => format!(".{:09}", millis * 1_000_000),
        2 | 5 => format!(".{millis:03}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_owned(),
        _ => format!(".{:06}", millis * 1000),
    };
    match form % 6 {
        0 => format!("{date}T{clock}{fraction}Z"),
        1 => format!("{date}T{clock}{fraction}+02:00"),
        2 => format!("{date} {clock}{fraction}"),
        3 => format!("{date}T{clock}{fraction}-05:00"),
        4 => format!("{date} {clock}{fraction}+00:00"),
        _ => format!("{date}T{clock}{fraction}Z"),
    }
}

fn people() -> Vec<Person> {
    const NAMES: [(&str, &str); 12] = [
        ("Ada", "Lovelace"),
        ("Marie", "Curie"),
        ("Pierre", "Curie"),
        ("Emmy", "Noether"),
        ("Alan", "Turing"),
        ("Grace", "Hopper"),
        ("Sophie", "Germain"),
        ("Kurt", "Godel"),
        ("Lise", "Meitner"),
        ("Niels", "Bohr"),
        ("Hedy", "Lamarr"),
        ("Blaise", "Pascal"),
    ];
    const COUNTRIES: [Option<&str>; 5] = [Some("FR"), Some("DE"), Some("GB"), None, Some("US")];
    const CITIES: [&str; 3] = ["Paris", "Berlin", "Lyon"];
    const TIERS: [Option<&str>; 4] = [Some("gold"), Some("silver"), None, Some("bronze")];
    (0..36)
        .map(|i| {
            let (first, last) = NAMES[i % NAMES.len()];
            // Around New Year, 1 h 7 min 3.25 s apart, so that offsets and fraction digits
            // decide on which side of a bound a time falls.
            let created = NEW_YEAR_MS - 18 * 4_023_250 + i as i64 * 4_023_250;
            let (created_ms, created_text) = match i {
                7 => (None, None),
                13 => (None, Some("sometime in 2017".to_owned())),
                _ => (Some(created), Some(render(created, i))),
            };
            let updated = created + 86_400_000 + (i as i64 % 5) * 500;
            let (updated_ms, updated_text) = match i {
                11 => (None, Some("n/a".to_owned())),
                _ => (Some(updated), Some(render(updated, i + 2))),
            };
            Person {
                id: format!("cus_f_{:02}", (i * 11) % 36),
                first,
                last,
                country: COUNTRIES[i % COUNTRIES.len()],
                city: CITIES[i % CITIES.len()],
                organization: match i % 4 {
                    0 => Some("Smith, Jones & Co"),
                    1 => Some("Acme"),
                    _ => None,
                },
                revision: (i % 9 != 4).then_some(1 + (i as i64 * 5) % 11),
                created_ms,
                created_text,
                updated_ms,
                updated_text,
                tier: TIERS[i % TIERS.len()],
                score: match i % 6 {
                    0 => Some(json!(42)),
                    1 => Some(json!("42")),
                    2 => Some(json!(7)),
                    3 => Some(json!(true)),
                    _ => None,
                },
                null_address: i == 20,
            }
        })
        .collect()
}

impl Person {
    /// What the resource says, whatever the address holds.
    fn country(&self) -> Option<&'static str> {
        if self.null_address {
            None
        } else {
            self.country
        }
    }

    fn body(&self) -> Vec<u8> {
        let mut address = json!({
            "firstName": self.first,
            "lastName": self.last,
            "city": self.city,
        });
        if let Some(country) = self.country {
            address["country"] = json!(country);
        }
        if let Some(organization) = self.organization {
            address["organization"] = json!(organization);
        }
        let mut custom = serde_json::Map::new();
        if let Some(tier) = self.tier {
            custom.insert("tier".into(), json!(tier));
        }
        if let Some(score) = &self.score {
            custom.insert("score".into(), score.clone());
        }
        let mut customer = json!({
            "id": self.id,
            "email": format!("{}@example.com", self.id),
            "revision": self.revision,
            "primaryAddress": if self.null_address { Value::Null } else { address },
            "customFields": custom,
            "tags": [],
        });
        if let Some(text) = &self.created_text {
            customer["createdTime"] = json!(text);
        }
        if let Some(text) = &self.updated_text {
            customer["updatedTime"] = json!(text);
        }
        serde_json::to_vec(&json!({
            "eventType": "customer-created",
            "customerId": self.id,
            "_embedded": {"customer": customer},
        }))
        .unwrap()
    }
}

async fn seeded() -> (TestApp, Vec<Person>) {
    let app = spawn_app().await;
    let people = people();
    for person in &people {
        assert_eq!(
            status_of(&app, person.body()).await,
            "applied",
            "{}",
            person.id
        );
    }
    (app, people)
}

/// `GET /customers` with properly encoded parameters: (status, Pagination-Total, body).
async fn query(app: &TestApp, params: &[(&str, &str)]) -> (u16, Option<u64>, Value) {
    let response = app
        .client
        .get(app.url("/customers"))
        .query(params)
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let total = response
        .headers()
        .get("pagination-total")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, total, response.json().await.unwrap())
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Asserts that `filter` lists exactly the people `expected` keeps, and that the expected set
/// is neither empty nor everyone (so that the case can tell a wrong answer).
async fn assert_filter(
    app: &TestApp,
    people: &[Person],
    filter: &str,
    expected: impl Fn(&Person) -> bool,
) {
    let want: Vec<String> = sorted(
        people
            .iter()
            .filter(|p| expected(p))
            .map(|p| p.id.clone())
            .collect(),
    );
    assert!(
        !want.is_empty() && want.len() < people.len(),
        "{filter}: a case that cannot fail ({} of {})",
        want.len(),
        people.len()
    );
    let (status, total, body) = query(app, &[("filter", filter), ("limit", "1000")]).await;
    assert_eq!(status, 200, "{filter}: {body}");
    let got = ids(body.as_array().unwrap());
    assert_eq!(got, want, "{filter}");
    assert_eq!(total, Some(want.len() as u64), "{filter}: Pagination-Total");
}

backends! {
#[tokio::test]
async fn values_or_clauses_and_and_sub_fields_by_rebillys_names() {
    let (app, people) = seeded().await;
    let is = |c: &'static str| move |p: &Person| p.country() == Some(c);
    assert_filter(&app, &people, "country:FR", is("FR")).await;
    assert_filter(&app, &people, "primaryAddress.country:FR", is("FR")).await;
    assert_filter(&app, &people, "primaryAddress.country:FR,DE", |p| {
        matches!(p.country(), Some("FR" | "DE"))
    })
    .await;
    assert_filter(
        &app,
        &people,
        "primaryAddress.country:FR;primaryAddress.lastName:Curie",
        |p| p.country() == Some("FR") && p.last == "Curie" && !p.null_address,
    )
    .await;
    assert_filter(&app, &people, "lastName:Curie,Bohr", |p| {
        !p.null_address && matches!(p.last, "Curie" | "Bohr")
    })
    .await;
    assert_filter(&app, &people, "primaryAddress.firstName:Ada", |p| {
        !p.null_address && p.first == "Ada"
    })
    .await;
    assert_filter(
        &app,
        &people,
        " primaryAddress.city : Lyon ; country : GB ",
        |p| !p.null_address && p.city == "Lyon" && p.country() == Some("GB"),
    )
    .await;
    assert_filter(
        &app,
        &people,
        r"primaryAddress.organization:Smith\, Jones & Co",
        |p| !p.null_address && p.organization == Some("Smith, Jones & Co"),
    )
    .await;
    assert_filter(&app, &people, "id:cus_f_00,cus_f_11,cus_f_99", |p| {
        matches!(p.id.as_str(), "cus_f_00" | "cus_f_11")
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn negations_include_customers_without_the_field() {
    let (app, people) = seeded().await;
    assert!(people.iter().any(|p| p.country().is_none()));
    assert_filter(&app, &people, "country:!FR", |p| p.country() != Some("FR")).await;
    assert_filter(&app, &people, "primaryAddress.country:!FR,!DE", |p| {
        !matches!(p.country(), Some("FR" | "DE"))
    })
    .await;
    // Positive and negative terms together: one of the positives and none of the negatives.
    assert_filter(&app, &people, "country:FR,DE,!DE", |p| {
        p.country() == Some("FR")
    })
    .await;
    assert_filter(&app, &people, "customFields.tier:!gold", |p| {
        p.tier != Some("gold")
    })
    .await;
    assert_filter(&app, &people, "revision:!3,!5", |p| {
        !matches!(p.revision, Some(3 | 5))
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn number_ranges_closed_open_and_mixed_with_values() {
    let (app, people) = seeded().await;
    let rev = |p: &Person| p.revision;
    assert_filter(&app, &people, "revision:3..6", |p| {
        rev(p).is_some_and(|r| (3..=6).contains(&r))
    })
    .await;
    assert_filter(&app, &people, "revision:8..", |p| {
        rev(p).is_some_and(|r| r >= 8)
    })
    .await;
    assert_filter(&app, &people, "revision:..2", |p| {
        rev(p).is_some_and(|r| r <= 2)
    })
    .await;
    assert_filter(&app, &people, "revision:..2,10,9..9", |p| {
        rev(p).is_some_and(|r| r <= 2 || r == 10 || r == 9)
    })
    .await;
    assert_filter(&app, &people, "revision:1..8,!4", |p| {
        rev(p).is_some_and(|r| (1..=8).contains(&r) && r != 4)
    })
    .await;
    assert_filter(&app, &people, "revision:!2..9", |p| {
        !rev(p).is_some_and(|r| (2..=9).contains(&r))
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn date_time_ranges_compare_instants_whatever_the_offset_or_digits() {
    let (app, people) = seeded().await;
    let created = |p: &Person| p.created_ms;
    // The same instant in three spellings.
    for bound in [
        "2026-01-01T00:00:00Z",
        "2026-01-01T02:00:00+02:00",
        "2025-12-31 19:00:00-05:00",
    ] {
        assert_filter(&app, &people, &format!("createdTime:{bound}.."), |p| {
            created(p).is_some_and(|t| t >= NEW_YEAR_MS)
        })
        .await;
        assert_filter(&app, &people, &format!("createdTime:..{bound}"), |p| {
            created(p).is_some_and(|t| t <= NEW_YEAR_MS)
        })
        .await;
    }
    // Bounds equal to stored times written in other forms and digit counts: inclusive, exact.
    let a = people[16].created_ms.unwrap();
    let b = people[23].created_ms.unwrap();
    let filter = format!("createdTime:{}..{}", render(a, 4), render(b, 1));
    assert_filter(&app, &people, &filter, |p| {
        created(p).is_some_and(|t| (a..=b).contains(&t))
    })
    .await;
    // One millisecond past a stored time leaves it out.
    let filter = format!("createdTime:{}..", render(a + 1, 0));
    assert_filter(&app, &people, &filter, |p| {
        created(p).is_some_and(|t| t > a)
    })
    .await;
    let filter = format!(
        "updatedTime:..{};createdTime:!{}",
        render(b, 2),
        render(a, 3)
    );
    assert_filter(&app, &people, &filter, |p| {
        p.updated_ms.is_some_and(|t| t <= b) && p.created_ms != Some(a)
    })
    .await;
    let filter = format!("createdTime:{}", render(a, 5));
    assert_filter(&app, &people, &filter, |p| p.created_ms == Some(a)).await;
}
}

backends! {
#[tokio::test]
async fn custom_fields_compare_as_written() {
    let (app, people) = seeded().await;
    assert_filter(&app, &people, "customFields.tier:gold,silver", |p| {
        matches!(p.tier, Some("gold" | "silver"))
    })
    .await;
    // The number 42 and the string "42" are both written 42.
    assert_filter(&app, &people, "customFields.score:42", |p| {
        p.score == Some(json!(42)) || p.score == Some(json!("42"))
    })
    .await;
    assert_filter(&app, &people, "customFields.score:true", |p| {
        p.score == Some(json!(true))
    })
    .await;
    assert_filter(&app, &people, "customFields.tier:gold;country:!FR", |p| {
        p.tier == Some("gold") && p.country() != Some("FR")
    })
    .await;
}
}

backends! {
#[tokio::test]
async fn sorts_by_rebillys_names_order_instants_and_break_ties_by_id() {
    let (app, people) = seeded().await;
    let listed = |params: &'static [(&'static str, &'static str)]| {
        let app = &app;
        async move {
            let (status, _, body) = query(app, params).await;
            assert_eq!(status, 200, "{params:?}: {body}");
            ids(body.as_array().unwrap())
        }
    };
    // Absent times sort first ascending and last descending, as SQL NULLs do.
    let mut expected: Vec<&Person> = people.iter().collect();
    expected.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
    let want: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        listed(&[("sort", "createdTime"), ("limit", "1000")]).await,
        want
    );
    expected.sort_by(|a, b| {
        Reverse(a.updated_ms)
            .cmp(&Reverse(b.updated_ms))
            .then(a.id.cmp(&b.id))
    });
    let want: Vec<String> = expected.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        listed(&[("sort", "-updatedTime"), ("limit", "1000")]).await,
        want
    );
    // A sorted page of a range.
    let mut in_range: Vec<&Person> = people
        .iter()
        .filter(|p| p.created_ms.is_some_and(|t| t >= NEW_YEAR_MS))
        .collect();
    in_range.sort_by(|a, b| {
        Reverse(a.created_ms)
            .cmp(&Reverse(b.created_ms))
            .then(a.id.cmp(&b.id))
    });
    let want: Vec<String> = in_range
        .iter()
        .skip(2)
        .take(5)
        .map(|p| p.id.clone())
        .collect();
    assert_eq!(
        listed(&[
            ("filter", "createdTime:2026-01-01T00:00:00Z.."),
            ("sort", "-createdTime"),
            ("offset", "2"),
            ("limit", "5"),
        ])
        .await,
        want
    );
    let mut by_last: Vec<&Person> = people.iter().collect();
    let last = |p: &Person| (!p.null_address).then_some(p.last);
    by_last.sort_by(|a, b| last(b).cmp(&last(a)).then(a.id.cmp(&b.id)));
    let want: Vec<String> = by_last.iter().map(|p| p.id.clone()).collect();
    assert_eq!(
        listed(&[("sort", "-primaryAddress.lastName"), ("limit", "1000")]).await,
        want
    );
}
}

backends! {
#[tokio::test]
async fn what_cannot_be_evaluated_is_a_400_naming_it() {
    let (app, _) = seeded().await;
    for (param, value, named) in [
        ("filter", "colour:red", "colour"),
        (
            "filter",
            "primaryAddress.shoeSize:42",
            "primaryAddress.shoeSize",
        ),
        ("filter", "country:FR..GB", "country"),
        (
            "filter",
            "createdTime:2026-02-30T00:00:00Z..",
            "createdTime",
        ),
        ("filter", "createdTime:yesterday", "yesterday"),
        ("filter", "revision:three", "revision"),
        ("filter", "revision:9..2", "revision"),
        ("filter", "revision:..", "revision"),
        ("filter", "country:", "empty value"),
        ("filter", "country:FR,", "empty value"),
        (
            "filter",
            "customFields.not valid:x",
            "customFields.not valid",
        ),
        ("filter", "customFields.tier:a..b", "customFields.tier"),
        ("sort", "customFields.tier", "customFields.tier"),
        ("sort", "-shoeSize", "shoeSize"),
    ] {
        let (status, _, body) = query(&app, &[(param, value)]).await;
        assert_eq!(status, 400, "{param}={value}: {body}");
        assert_eq!(body["field"], param, "{param}={value}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(named),
            "{param}={value} should name `{named}`: {body}"
        );
    }
}
}

backends! {
#[tokio::test]
async fn the_command_line_takes_the_same_grammar() {
    let (app, people) = seeded().await;
    let filter = "country:!FR;revision:3..;createdTime:..2026-01-01T02:00:00+02:00";
    let output = run_cli_async(
        &app.config_path,
        &["customers", "list", "--filter", filter, "--limit", "1000"],
    )
    .await;
    assert_success(&output);
    let listed = ids(stdout_json(&output).as_array().unwrap());
    let want = sorted(
        people
            .iter()
            .filter(|p| {
                p.country() != Some("FR")
                    && p.revision.is_some_and(|r| r >= 3)
                    && p.created_ms.is_some_and(|t| t <= NEW_YEAR_MS)
            })
            .map(|p| p.id.clone())
            .collect(),
    );
    assert!(!want.is_empty());
    assert_eq!(listed, want);
    let refused = run_cli_async(
        &app.config_path,
        &["customers", "list", "--filter", "createdTime:soon.."],
    )
    .await;
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("createdTime"),
        "{}",
        stderr(&refused)
    );
}
}

backends! {
#[tokio::test]
async fn the_event_log_filters_with_the_same_grammar() {
    let app = spawn_app().await;
    for (id, revision) in [
        ("cus_e_1", 1),
        ("cus_e_1", 3),
        ("cus_e_2", 2),
        ("cus_e_1", 2),
    ] {
        let body = customer_event("customer-updated", id, revision, json!({}));
        app.deliver_ok(body).await;
    }
    app.deliver_ok(customer_event("customer-updated", "cus_e_2", 2, json!({})))
        .await; // a duplicate
    let (all, _) = events(&app, "?limit=1000").await;
    assert_eq!(all.len(), 5);
    let field = |e: &Value, name: &str| e[name].clone();
    // `discriminating`: the expected set is neither empty nor everything, so the case can fail.
    let check = |filter: &'static str, discriminating: bool, keep: &dyn Fn(&Value) -> bool| {
        let want: Vec<i64> = all
            .iter()
            .filter(|e| keep(e))
            .map(|e| e["id"].as_i64().unwrap())
            .collect();
        if discriminating {
            assert!(!want.is_empty() && want.len() < all.len(), "{filter}");
        }
        let app = &app;
        async move {
            let response = app
                .client
                .get(app.url("/events"))
                .query(&[("filter", filter)])
                .bearer_auth(API_TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{filter}");
            let listed: Vec<Value> = response.json().await.unwrap();
            assert_eq!(ids_of_events(&listed), want, "{filter}");
        }
    };
    check("status:!duplicate,!stale", true, &|e| {
        !matches!(e["status"].as_str(), Some("duplicate" | "stale"))
    })
    .await;
    check("customerId:cus_e_1;revision:2..", true, &|e| {
        field(e, "customerId") == "cus_e_1" && e["revision"].as_i64().unwrap() >= 2
    })
    .await;
    let third = all.iter().rev().nth(2).unwrap()["receivedTime"]
        .as_str()
        .unwrap()
        .to_owned();
    let third_ms = received_ms(&third);
    let filter: &'static str = format!("receivedTime:{third}..").leak();
    // Deliveries may share a millisecond: the expected set is computed, not assumed.
    check(filter, false, &|e| {
        received_ms(e["receivedTime"].as_str().unwrap()) >= third_ms
    })
    .await;
    let response = app.api_get("/events?filter=status:lost").await;
    let body = expect_problem(response, 400).await;
    assert!(body["detail"].as_str().unwrap().contains("lost"), "{body}");
}
}

fn received_ms(text: &str) -> i64 {
    let time = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    (time.unix_timestamp_nanos() / 1_000_000) as i64
}
