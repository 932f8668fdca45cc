//! Several `serve` processes sharing one PostgreSQL database, as behind a load balancer.

use super::process::{Daemon, write_config};
use super::{API_TOKEN, PASSWORD, USER, config_text};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// Daemons started from one configuration whose `[storage]` points at `url`.
pub struct Cluster {
    pub config: PathBuf,
    pub daemons: Vec<Daemon>,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The test configuration on PostgreSQL at `url`, with `extra` tables appended.
pub fn postgres_config(url: &str, extra: &str) -> String {
    let unused_sqlite = std::path::Path::new("/nonexistent/unused.db");
    let text = config_text("127.0.0.1:0", unused_sqlite, "");
    let storage = format!("[storage]\nbackend = \"postgres\"\nurl = \"{url}\"\n");
    format!("{}\n{extra}", text.replacen("[storage]\n", &storage, 1))
}

impl Cluster {
    /// Starts `count` daemons at once on the database at `url`: their migrations race, as
    /// they would in a rolling deployment.
    pub async fn start(url: &str, count: usize, extra: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary folder");
        let config = write_config(dir.path(), &postgres_config(url, extra));
        let starts: Vec<_> = (0..count)
            .map(|_| {
                let config = config.clone();
                tokio::task::spawn_blocking(move || Daemon::start(&config))
            })
            .collect();
        let mut daemons = Vec::with_capacity(count);
        for start in starts {
            daemons.push(start.await.expect("a daemon starts"));
        }
        Cluster {
            config,
            daemons,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// The daemon a request numbered `n` goes to, round robin.
    pub fn pick(&self, n: usize) -> &Daemon {
        &self.daemons[n % self.daemons.len()]
    }

    /// Posts a webhook to daemon `n`; `Err` when the daemon is unreachable.
    pub async fn deliver_to(
        &self,
        n: usize,
        body: Vec<u8>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        deliver(&self.client, self.pick(n), body).await
    }

    /// `GET /customers/{id}` from daemon `n`: the customer, or `None` when unknown.
    pub async fn customer(&self, n: usize, id: &str) -> Option<Value> {
        api_get(&self.client, self.pick(n), &format!("/customers/{id}")).await
    }

    /// Every customer listed by daemon `n` (`GET /customers`, all pages).
    pub async fn all_customers(&self, n: usize) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let path = format!("/customers?limit=1000&offset={}&sort=id", all.len());
            let page = api_get(&self.client, self.pick(n), &path)
                .await
                .expect("the customer list answers");
            let page = page.as_array().expect("a JSON array").clone();
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                return all;
            }
        }
    }
}

/// Posts a webhook with the test's credentials to `daemon`.
pub async fn deliver(
    client: &reqwest::Client,
    daemon: &Daemon,
    body: Vec<u8>,
) -> Result<reqwest::Response, reqwest::Error> {
    client
        .post(daemon.url("/webhooks/rebilly"))
        .header("content-type", "application/json; charset=utf-8")
        .header("user-agent", "Rebilly/test")
        .basic_auth(USER, Some(PASSWORD))
        .body(body)
        .send()
        .await
}

/// A GET with the API token: the JSON answer, `None` for 404; panics on anything else.
pub async fn api_get(client: &reqwest::Client, daemon: &Daemon, path: &str) -> Option<Value> {
    let response = client
        .get(daemon.url(path))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    match response.status().as_u16() {
        404 => None,
        200 => Some(response.json().await.expect("a JSON answer")),
        status => panic!(
            "GET {path}: {status} {}\n{}",
            response.text().await.unwrap_or_default(),
            daemon.log_text()
        ),
    }
}
