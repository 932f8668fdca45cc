//! Test support: start the real server on port 0 with its own temporary database, and talk to
//! it over HTTP the way Rebilly and an operator would.
#![allow(dead_code, unused_imports)]

pub mod backpressure;
pub mod bodies;
pub mod cluster;
pub mod db;
pub mod fake_rebilly;
pub mod http;
pub mod matrix;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod wait;

pub use backpressure::*;
pub use bodies::*;
pub use db::*;
pub use http::*;
pub(crate) use matrix::backends;
pub use process::*;
pub use raw::*;
pub use wait::*;

use base64::Engine;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::server;
use std::path::{Path, PathBuf};
use tokio::sync::oneshot;

pub const USER: &str = "rebilly";
pub const PASSWORD: &str = "correct-horse-battery-staple";
pub const API_TOKEN: &str = "test-api-token-0123456789-abcdefghijk";

/// The configuration every test starts from; `extra` is appended (later keys win per table,
/// so pass whole tables such as `[auth.header]` or `[[handlers]]`).
pub fn base_config(db: &Path) -> String {
    config_text("127.0.0.1:0", db, "")
}

/// The test configuration listening on `listen`, with `server_lines` added to `[server]`.
pub fn config_text(listen: &str, db: &Path, server_lines: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
{server_lines}

[storage]
path = "{db}"
synchronous = "normal"
{storage_lines}
[[auth.basic]]
username = "{USER}"
password = "{PASSWORD}"

[api]
token = "{API_TOKEN}"
"#,
        db = db.display(),
        storage_lines = matrix::storage_lines(),
    )
}

pub struct TestApp {
    pub address: std::net::SocketAddr,
    pub base_url: String,
    pub db_path: PathBuf,
    pub config_path: PathBuf,
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with("").await
}

/// Starts a server whose configuration is `base_config` with `extra` replacing it entirely
/// when `extra` starts with `#replace`, else appended.
pub async fn spawn_app_with(extra: &str) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary folder");
    start_in(dir, extra).await
}

async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestApp {
    let db_path = dir.path().join("data").join("webhookd.db");
    let config_path = dir.path().join("config.toml");
    let text = match extra.strip_prefix("#replace") {
        Some(replacement) => replacement.replace("{db}", &db_path.display().to_string()),
        None => format!("{}\n{extra}", base_config(&db_path)),
    };
    std::fs::write(&config_path, text).expect("write config");
    let settings = Settings::load(Some(&config_path)).expect("test configuration loads");
    let listener = server::bind(&settings).await.expect("bind port 0");
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server::run(settings, listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        address,
        base_url: format!("http://{address}"),
        db_path,
        config_path,
        client: reqwest::Client::new(),
        dir,
        stop: Some(stop),
        task: Some(task),
    }
}

impl TestApp {
    /// Stops the server gracefully and waits for it to finish.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task ends cleanly");
        }
    }

    /// Stops this server and starts a new one on the same database and configuration.
    pub async fn restart(mut self) -> TestApp {
        self.stop().await;
        let config = std::fs::read_to_string(&self.config_path).unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let db = self.db_path.display().to_string();
        start_in(dir, &format!("#replace{}", config.replace(&db, "{db}"))).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Posts a body with the test's Basic credentials, as Rebilly does.
    pub async fn deliver(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.webhook_request()
            .basic_auth(USER, Some(PASSWORD))
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A webhook request with Rebilly's headers and no credentials yet.
    pub fn webhook_request(&self) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/webhooks/rebilly"))
            .header("content-type", "application/json; charset=utf-8")
            .header("user-agent", "Rebilly/test")
    }

    /// Delivers a body and returns `(eventId, status)` from a 200 answer.
    pub async fn deliver_ok(&self, body: impl Into<reqwest::Body>) -> (i64, String) {
        let response = self.deliver(body).await;
        assert_eq!(response.status(), 200, "delivery should be accepted");
        let json: serde_json::Value = response.json().await.unwrap();
        (
            json["eventId"].as_i64().unwrap(),
            json["status"].as_str().unwrap().to_owned(),
        )
    }

    /// GET with the API token.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    /// POST with the API token.
    pub async fn api_post(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn customer(&self, id: &str) -> serde_json::Value {
        let response = self.api_get(&format!("/customers/{id}")).await;
        assert_eq!(response.status(), 200, "customer {id} should exist");
        response.json().await.unwrap()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The value of a Prometheus sample `name{labels}` (given labels must match), 0 if absent.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|pair| pair == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Reads `fixtures/<name>` as bytes.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(name)).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The `Authorization` value for Basic credentials.
pub fn basic_value(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// A customer event body with a full-looking Customer resource.
pub fn customer_event(
    event_type: &str,
    id: &str,
    revision: i64,
    extra: serde_json::Value,
) -> Vec<u8> {
    let mut customer = serde_json::json!({
        "id": id,
        "revision": revision,
        "email": format!("{id}@example.com"),
        "firstName": "Test",
        "lastName": format!("Customer {revision}"),
        "createdTime": "2026-03-01T10:00:00+00:00",
        "updatedTime": format!("2026-03-01T10:{:02}:00+00:00", revision % 60),
        "primaryAddress": {"firstName": "Test", "lastName": format!("Customer {revision}"),
            "country": "FR", "city": "Lyon",
            "emails": [{"label": "main", "value": format!("{id}@example.com"), "primary": true}]},
        "tags": [],
        "customFields": {},
        "invoiceCount": revision
    });
    if let (Some(target), Some(more)) = (customer.as_object_mut(), extra.as_object()) {
        for (key, value) in more {
            target.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_vec(&serde_json::json!({
        "eventType": event_type,
        "customerId": id,
        "_embedded": {"customer": customer},
        "_links": [{"rel": "customer", "href": format!("https://api.rebilly.com/customers/{id}")}]
    }))
    .unwrap()
}
