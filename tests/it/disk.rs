//! A full disk, or a database at its `storage.max_size_bytes` cap: deliveries are answered 503
//! with `Retry-After` and nothing is acknowledged, `/readyz` is 503, the daemon's log stays a
//! few lines however many deliveries are refused, and once room returns deliveries and
//! readiness come back by themselves, with every delivery acknowledged before still there.

use crate::common::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const CUSTOMER: &str = "cus_disk";
/// Deliveries refused while storage is full: many more than the log lines allowed for them.
const REFUSALS: i64 = 40;
/// Error and warning lines the daemon may write for all of them.
const MAX_LOG_LINES: usize = 6;

/// A customer update of about 10 KiB, so that each revision needs fresh pages.
fn update(revision: i64) -> Vec<u8> {
    let notes = format!("revision {revision:06} ").repeat(600);
    customer_event(
        "customer-updated",
        CUSTOMER,
        revision,
        json!({"customFields": {"notes": notes}}),
    )
}

/// The test configuration for a daemon process, with `storage_lines` added to `[storage]`.
fn config(dir: &Path, db: &Path, storage_lines: &str) -> PathBuf {
    let text = config_text("127.0.0.1:0", db, "readiness_cache_ms = 0").replace(
        "synchronous = \"normal\"",
        &format!("synchronous = \"normal\"\n{storage_lines}"),
    );
    write_config(dir, &text)
}

struct Client {
    http: reqwest::Client,
    webhook: String,
    base: String,
}

impl Client {
    fn new(daemon: &Daemon) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            webhook: daemon.url("/webhooks/rebilly"),
            base: daemon.url(""),
        }
    }

    async fn deliver(&self, revision: i64) -> reqwest::Response {
        post_basic(&self.http, &self.webhook, update(revision)).await
    }

    async fn readyz(&self) -> u16 {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    }

    async fn api(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap()
    }
}

/// What was acknowledged: `(revision, eventId)` of every 2xx answer.
type Acks = Vec<(i64, i64)>;

/// Delivers increasing revisions from `revision` until storage refuses one; checks that the
/// refusal is a 503 problem with `Retry-After`. Returns the acknowledged deliveries and the
/// refused revision.
async fn fill(client: &Client, mut revision: i64) -> (Acks, i64) {
    let mut acks = Vec::new();
    loop {
        assert!(revision < 5000, "storage never filled up");
        let response = client.deliver(revision).await;
        if response.status() == 503 {
            expect_storage_refusal(response).await;
            return (acks, revision);
        }
        let (event_id, status) = accepted(response).await;
        assert_eq!(status, "applied");
        acks.push((revision, event_id));
        revision += 1;
    }
}

async fn expect_storage_refusal(response: reqwest::Response) {
    let retry_after = header(response.headers(), "retry-after");
    assert!(
        retry_after.parse::<u32>().is_ok_and(|s| s >= 1),
        "Retry-After: {retry_after:?}"
    );
    let problem = expect_problem(response, 503).await;
    assert_eq!(problem["type"], "urn:rebilly-webhookd:problem:unavailable");
}

/// While full: every delivery is refused, readiness says so, and the log stays short.
async fn refused_while_full(client: &Client, daemon: &Daemon, revision: i64) {
    for _ in 0..REFUSALS {
        let response = client.deliver(revision).await;
        assert_eq!(response.status(), 503, "storage is still full");
        expect_storage_refusal(response).await;
        assert_eq!(client.readyz().await, 503, "a full disk is not ready");
    }
    let log = daemon.log_text();
    // Start-up warnings (such as the short test token) are not the daemon's answer to a full
    // disk.
    let lines: Vec<&str> = log
        .lines()
        .skip_while(|line| !line.contains("listening"))
        .filter(|line| line.contains(" ERROR ") || line.contains(" WARN "))
        .collect();
    assert!(
        !lines.is_empty(),
        "the cause is logged at least once:\n{log}"
    );
    assert!(
        lines.len() <= MAX_LOG_LINES,
        "{} error lines for {REFUSALS} refusals and probes:\n{}",
        lines.len(),
        lines.join("\n")
    );
}

/// Once room is back: deliveries and readiness return without a restart, and every
/// acknowledged delivery is there.
async fn flows_again(client: &Client, acks: &mut Acks, revision: i64) {
    assert_eq!(client.readyz().await, 200, "ready again once room is back");
    for revision in revision..revision + 3 {
        let (event_id, status) = accepted(client.deliver(revision).await).await;
        assert_eq!(status, "applied");
        acks.push((revision, event_id));
    }
    assert_acknowledged(client, acks).await;
}

async fn assert_acknowledged(client: &Client, acks: &Acks) {
    for (revision, event_id) in acks {
        let response = client.api(&format!("/events/{event_id}")).await;
        assert_eq!(response.status(), 200, "acknowledged event {event_id} lost");
        let event: Value = response.json().await.unwrap();
        assert_eq!(event["revision"], *revision, "{event}");
    }
    let last = acks.iter().map(|(revision, _)| *revision).max().unwrap();
    let customer: Value = client
        .api(&format!("/customers/{CUSTOMER}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        customer["revision"], last,
        "the projection holds the last one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_its_size_cap_the_database_refuses_with_503_until_pruning_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("webhookd.db");
    let config = config(dir.path(), &db, "max_size_bytes = 1048576");
    let daemon = Daemon::start(&config);
    let client = Client::new(&daemon);

    let (mut acks, refused) = fill(&client, 1).await;
    assert!(acks.len() >= 20, "{} deliveries fit in 1 MiB", acks.len());
    refused_while_full(&client, &daemon, refused).await;

    // The operator's remedy: prune the bodies no longer needed (all superseded revisions).
    let output = run_cli_async(
        &config,
        &["events", "prune", "--older-than-days", "0", "--yes"],
    )
    .await;
    assert_success(&output);

    flows_again(&client, &mut acks, refused).await;
}

/// A tmpfs of a few MiB, unmounted when dropped (lazily, should a process still hold it).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// The reason, where mounting is not possible: not root, or no `mount`.
    fn mount(at: PathBuf, size: &str) -> Result<Self, String> {
        std::fs::create_dir_all(&at).unwrap();
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if output.status.success() {
            Ok(Self(at))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` with one file, to its last byte.
fn fill_file_system(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::StorageFull => break,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
    let _ = file.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_file_system_deliveries_get_503_and_flow_again_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let fs = match Tmpfs::mount(dir.path().join("fs"), "8m") {
        Ok(fs) => fs,
        Err(reason) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "skipped: a tmpfs cannot be mounted here ({reason}); run as root, as CI does"
            );
            return;
        }
        Err(reason) => panic!("CI runs as root and must mount a tmpfs: {reason}"),
    };
    let db = fs.0.join("data").join("webhookd.db");
    let config = config(dir.path(), &db, "");
    let mut daemon = Daemon::start(&config);
    let client = Client::new(&daemon);
    let mut acks = Vec::new();
    for revision in 1..=5 {
        let (event_id, _) = accepted(client.deliver(revision).await).await;
        acks.push((revision, event_id));
    }

    let filler = fs.0.join("filler");
    fill_file_system(&filler);
    let (more, refused) = fill(&client, 6).await;
    acks.extend(more);
    refused_while_full(&client, &daemon, refused).await;

    std::fs::remove_file(&filler).unwrap();
    flows_again(&client, &mut acks, refused).await;

    // The WAL the failed commits touched is sound: a new process sees every acknowledgement.
    daemon.kill();
    drop(daemon);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let daemon = Daemon::start(&config);
    assert_acknowledged(&Client::new(&daemon), &acks).await;
    drop(daemon);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_locked_past_the_busy_timeout_is_503_and_flows_again_once_released() {
    let app = spawn_app().await;
    let (first, _) = app.deliver_ok(update(1)).await;
    // Another process holds the write lock for longer than the writer waits for it.
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let response = app.deliver(update(2)).await;
    expect_storage_refusal(response).await;
    conn.execute_batch("ROLLBACK").unwrap();
    let (second, status) = app.deliver_ok(update(2)).await;
    assert_eq!(status, "applied");
    assert!(second > first);
    assert_eq!(app.customer(CUSTOMER).await["revision"], 2);
}
