//! Crash safety of the real binary: under concurrent load the process is killed with SIGKILL at
//! a random moment; afterwards the database must pass `PRAGMA integrity_check`, every delivery
//! that was answered 2xx must be in the event log, and the projection must show at least the
//! highest acknowledged revision of every customer.

use crate::common::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const USER: &str = "rebilly";
const PASSWORD: &str = "crash-test-password-0123";
const API_TOKEN: &str = "crash-test-api-token-0123456789";
const TASKS: usize = 32;
/// Load stops by itself after this long even if the kill never came.
const LOAD_LIMIT: Duration = Duration::from_secs(6);

fn crash_config(dir: &Path) -> (PathBuf, PathBuf) {
    let db = dir.join("data").join("webhookd.db");
    let config = dir.join("config.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[storage]
path = "{db}"
synchronous = "full"

[[auth.basic]]
username = "{USER}"
password = "{PASSWORD}"

[api]
token = "{API_TOKEN}"

[log]
format = "text"
level = "info"
"#,
        db = db.display()
    );
    std::fs::write(&config, text).expect("write config");
    (config, db)
}

/// A customer event with a full-looking Customer resource, unique per customer and revision.
fn customer_event(id: &str, revision: i64) -> Vec<u8> {
    let event_type = if revision == 1 {
        "customer-created"
    } else {
        "customer-updated"
    };
    let countries = ["FR", "DE", "US", "GB", "ES", "IT"];
    let country = countries[id.len() % countries.len()];
    let body = serde_json::json!({
        "eventType": event_type,
        "customerId": id,
        "_embedded": {"customer": {
            "id": id,
            "email": format!("{id}@example.com"),
            "firstName": "Crash",
            "lastName": format!("Test {revision}"),
            "primaryAddress": {
                "firstName": "Crash",
                "lastName": format!("Test {revision}"),
                "organization": "Crash Testing SARL",
                "address": format!("{revision} Rue de la Paix"),
                "address2": null,
                "city": "Lyon",
                "region": "ARA",
                "country": country,
                "postalCode": "69001",
                "phoneNumbers": [{"label": "mobile", "value": "+33612345678", "primary": true}],
                "emails": [{"label": "main", "value": format!("{id}@example.com"), "primary": true}]
            },
            "defaultPaymentInstrument": {"method": "payment-card", "paymentInstrumentId": format!("pin_{id}")},
            "createdTime": "2026-03-01T10:00:00+00:00",
            "updatedTime": format!("2026-03-01T{:02}:{:02}:00+00:00", 10 + revision / 60, revision % 60),
            "revision": revision,
            "websiteId": "web_main_01",
            "customFields": {"loyaltyTier": "silver", "source": "crash-test"},
            "tags": [{"id": "tag_crash", "name": "crash"}],
            "isEddRequired": false,
            "invoiceCount": revision,
            "paymentCount": revision,
            "lifetimeRevenue": {"amount": revision * 10, "currency": "EUR"},
            "organizationId": "org_crash_01",
            "_links": [{"rel": "self", "href": format!("https://api.rebilly.com/customers/{id}")}]
        }},
        "_links": [{"rel": "customer", "href": format!("https://api.rebilly.com/customers/{id}")}]
    });
    serde_json::to_vec(&body).unwrap()
}

/// One delivery answered 2xx.
#[derive(Debug, Clone)]
struct Ack {
    event_id: i64,
    customer: String,
    revision: i64,
    status: String,
}

/// Posts events until the daemon stops answering or the load limit passes. Each task owns its
/// customers, so one customer's revisions are sent in increasing order.
async fn load(client: reqwest::Client, url: String, task: usize, until: Instant) -> Vec<Ack> {
    let mut acks = Vec::new();
    let mut revisions: Vec<i64> = Vec::new();
    while Instant::now() < until {
        // A new customer one time in three, else the next revision of one already created.
        let index = if revisions.is_empty() || fastrand::u8(..3) == 0 {
            revisions.push(0);
            revisions.len() - 1
        } else {
            fastrand::usize(..revisions.len())
        };
        let revision = revisions[index] + 1;
        revisions[index] = revision;
        let customer = format!("cus_crash_{task:02}_{index:05}");
        let sent = client
            .post(&url)
            .basic_auth(USER, Some(PASSWORD))
            .header("content-type", "application/json; charset=utf-8")
            .header("user-agent", "Rebilly/crash-test")
            .body(customer_event(&customer, revision))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // The daemon is gone (or stopped answering): this task is done.
            Err(_) => break,
        };
        if !response.status().is_success() {
            continue;
        }
        let Ok(json) = response.json::<serde_json::Value>().await else {
            // A 2xx whose body never fully arrived is not an acknowledgement we can check.
            break;
        };
        acks.push(Ack {
            event_id: json["eventId"].as_i64().expect("eventId in a 2xx answer"),
            customer,
            revision,
            status: json["status"].as_str().unwrap_or_default().to_owned(),
        });
    }
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_deliveries_survive_sigkill() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let (config, db) = crash_config(dir.path());
    let mut daemon = Daemon::start(&config);
    let url = format!("http://{}/webhooks/rebilly", daemon.address);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let started = Instant::now();
    let until = started + LOAD_LIMIT;
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(load(client.clone(), url.clone(), task, until)))
        .collect();
    let kill_after = Duration::from_millis(fastrand::u64(300..=1500));
    tokio::time::sleep(kill_after).await;
    daemon.kill();
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.expect("load task"));
    }
    drop(daemon);
    eprintln!(
        "killed after {kill_after:?}: {} deliveries acknowledged",
        acks.len()
    );
    assert!(
        !acks.is_empty(),
        "no delivery was acknowledged in the {kill_after:?} before the kill"
    );
    assert!(
        acks.iter().all(|a| a.status == "applied"),
        "unique events are applied: {:?}",
        acks.iter().find(|a| a.status != "applied")
    );

    // The file SQLite left behind is consistent.
    {
        let conn = rusqlite::Connection::open(&db).expect("open the database");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "integrity_check after SIGKILL");
    }

    // The daemon starts again on the same database and has lost nothing it acknowledged.
    let daemon = Daemon::start(&config);
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open the database read-only");
    let mut lookup = conn
        .prepare("SELECT customer_id, revision, status FROM events WHERE id = ?1")
        .unwrap();
    let mut highest: HashMap<&str, i64> = HashMap::new();
    for ack in &acks {
        let stored: Option<(String, i64, String)> = lookup
            .query_row([ack.event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .ok();
        assert_eq!(
            stored,
            Some((ack.customer.clone(), ack.revision, "applied".to_owned())),
            "acknowledged event {} ({} revision {}) after the crash",
            ack.event_id,
            ack.customer,
            ack.revision
        );
        let entry = highest.entry(ack.customer.as_str()).or_default();
        *entry = (*entry).max(ack.revision);
    }

    let base = format!("http://{}", daemon.address);
    for (customer, revision) in &highest {
        let response = client
            .get(format!("{base}/customers/{customer}"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("query the restarted daemon");
        assert_eq!(
            response.status(),
            200,
            "customer {customer} after the crash"
        );
        let view: serde_json::Value = response.json().await.unwrap();
        let projected = view["revision"].as_i64().expect("projected revision");
        assert!(
            projected >= *revision,
            "{customer}: projected revision {projected} < acknowledged {revision}"
        );
    }

    // And it keeps working: the next revision of an acknowledged customer is applied.
    let (customer, revision) = highest.iter().next().map(|(c, r)| (*c, *r)).unwrap();
    let projected = conn
        .query_row(
            "SELECT revision FROM customers WHERE id = ?1",
            [customer],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert!(projected >= revision);
    let response = client
        .post(format!("{base}/webhooks/rebilly"))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json; charset=utf-8")
        .body(customer_event(customer, projected + 1))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["status"], "applied");
}
