//! The HTTP edge under attack: example secrets beyond loopback, forged proxy headers, redirects
//! from forward targets, anonymous requests crowding out deliveries, answers that tell which
//! check passed, and request ids that could forge log fields.

use crate::common::{self, *};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::any;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::server;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn example_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml")
}

fn body(id: &str) -> Vec<u8> {
    customer_event("customer-created", id, 1, json!({}))
}

// ---------------------------------------------------------------------------------------------
// Example and short secrets
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_example_configuration_runs_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("webhookd.db").display().to_string();
    let variables = [
        ("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0"),
        ("REBILLY_WEBHOOKD__STORAGE__PATH", db.as_str()),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    let settings = Settings::load_with_environment(Some(&example_config()), variables).unwrap();
    let listener = server::bind(&settings).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server::run(settings, listener, async {
        let _ = stopped.await;
    }));
    let response = reqwest::Client::new()
        .post(format!("http://{address}/webhooks/rebilly"))
        .basic_auth("rebilly", Some("change-me-to-a-long-random-password"))
        .body(body("cus_example"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(response).await.1, "applied");
    stop.send(()).unwrap();
    running
        .await
        .unwrap()
        .expect("the example configuration serves on loopback");
}

#[test]
fn serve_refuses_the_example_configuration_beyond_loopback_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = clean_command(&example_config(), "serve");
    command
        .env("REBILLY_WEBHOOKD__SERVER__LISTEN", "0.0.0.0:0")
        .env(
            "REBILLY_WEBHOOKD__STORAGE__PATH",
            dir.path().join("webhookd.db"),
        );
    let (success, _, stderr) = run_to_exit(command, Duration::from_secs(30));
    assert!(!success, "the daemon must not serve example secrets");
    assert!(stderr.contains("auth.basic[0].password"), "{stderr}");
    assert!(
        !dir.path().join("webhookd.db").exists(),
        "refused before opening storage"
    );
}

#[tokio::test]
async fn beyond_loopback_a_short_api_token_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let short = "short-token-0123456789";
    let text =
        config_text("0.0.0.0:0", &dir.path().join("webhookd.db"), "").replace(API_TOKEN, short);
    let config = write_config(dir.path(), &text);
    let settings = Settings::load(Some(&config)).unwrap();
    assert!(short.len() < 32, "the test token is short");
    let listener = server::bind(&settings).await.unwrap();
    let error = server::run(settings, listener, async {})
        .await
        .expect_err("a short token beyond loopback is refused");
    assert!(error.to_string().contains("api.token"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Trusted proxies
// ---------------------------------------------------------------------------------------------

const BEHIND_PROXY: &str = r#"
[auth]
trusted_proxy_header = "X-Forwarded-For"
trusted_proxies = ["127.0.0.0/8"]
allowed_networks = ["127.0.0.0/8", "203.0.113.0/24"]
"#;

#[tokio::test]
async fn a_line_the_client_wrote_before_the_proxys_line_decides_nothing() {
    let app = common::spawn_app_with(BEHIND_PROXY).await;
    // The client sends its own X-Forwarded-For; the proxy adds a second line with the address
    // it really saw.
    let response = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "203.0.113.5")
        .header("X-Forwarded-For", "198.51.100.7")
        .body(body("cus_proxy_forged"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_trusted_proxy_that_names_no_client_is_forbidden() {
    let app = common::spawn_app_with(BEHIND_PROXY).await;
    for forwarded in [None, Some("not-an-address"), Some("")] {
        let mut request = app.webhook_request().basic_auth(USER, Some(PASSWORD));
        if let Some(value) = forwarded {
            request = request.header("X-Forwarded-For", value);
        }
        let response = request.body(body("cus_proxy_none")).send().await.unwrap();
        expect_problem(response, 403).await;
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn forwarded_for_names_the_client() {
    let app = common::spawn_app_with(
        r#"
[auth]
trusted_proxy_header = "Forwarded"
trusted_proxies = ["127.0.0.0/8"]
allowed_networks = ["203.0.113.0/24"]
"#,
    )
    .await;
    let send = |forwarded: &'static str, id: &'static str| {
        app.webhook_request()
            .basic_auth(USER, Some(PASSWORD))
            .header("Forwarded", forwarded)
            .body(body(id))
            .send()
    };
    let inside = send("for=\"203.0.113.5:4711\";proto=https", "cus_fwd_in")
        .await
        .unwrap();
    assert_eq!(accepted(inside).await.1, "applied");
    let outside = send("for=203.0.113.5, for=\"[2001:db8::7]\"", "cus_fwd_out")
        .await
        .unwrap();
    expect_problem(outside, 403).await;
}

// ---------------------------------------------------------------------------------------------
// Refusals that do not tell which check passed
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_wrong_password_and_a_wrong_header_secret_get_the_same_answer() {
    let app = common::spawn_app_with(
        "[auth.header]\nname = \"X-Webhook-Token\"\nvalues = [\"header-secret-0123456789\"]\n",
    )
    .await;
    let wrong_password = app
        .webhook_request()
        .basic_auth(USER, Some("wrong-password"))
        .header("X-Webhook-Token", "header-secret-0123456789")
        .body(body("cus_same_1"))
        .send()
        .await
        .unwrap();
    let wrong_header = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Webhook-Token", "header-secret-wrong")
        .body(body("cus_same_2"))
        .send()
        .await
        .unwrap();
    let first = expect_basic_challenge(wrong_password).await;
    let second = expect_basic_challenge(wrong_header).await;
    assert_eq!(first, second, "one generic 401 for every failed check");
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn with_only_hmac_an_unsigned_request_is_refused_without_reading_its_body() {
    let app = common::spawn_app_with(&format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"
request_timeout_seconds = 5

[storage]
path = "{{db}}"

[auth.hmac]
secrets = ["{}"]

[api]
token = "{API_TOKEN}"
"#,
        whsec(b"0123456789abcdef0123456789abcdef")
    ))
    .await;
    // The head announces a body that never comes: answering 401 proves it was not waited for
    // (waiting would end in 408 at the request timeout).
    for signature_headers in [
        "",
        "webhook-id: msg_1\r\nwebhook-timestamp: 1000\r\nwebhook-signature: v1,AAAA\r\n",
    ] {
        let request = format!(
            "POST /webhooks/rebilly HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             {signature_headers}Content-Length: 100000\r\n\r\n{{\"partial\":"
        );
        let answer = raw_http(app.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "answer: {answer}");
    }
}

#[tokio::test]
async fn a_request_id_that_could_forge_log_fields_is_replaced() {
    let app = common::spawn_app().await;
    let forged = "abc outcome=applied customer_id=\"cus_x\"";
    let response = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", forged)
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, forged);
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "{id}"
    );
}

// ---------------------------------------------------------------------------------------------
// Starvation
// ---------------------------------------------------------------------------------------------

/// Opens a delivery whose body never finishes, holding its slot until the request timeout.
async fn stalled_delivery(app: &TestApp) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /webhooks/rebilly HTTP/1.1\r\nHost: test\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"x\":",
        basic_value(USER, PASSWORD)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn probes_and_queries_do_not_wait_behind_deliveries() {
    let db = Path::new("{db}");
    let app = common::spawn_app_with(&format!(
        "#replace{}",
        config_text(
            "127.0.0.1:0",
            db,
            "max_concurrent_deliveries = 1\nmax_concurrent_requests = 1"
        )
    ))
    .await;
    let _stalled = stalled_delivery(&app).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let ready = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let customers = app.api_get("/customers").await;
    assert_eq!(customers.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_answers_are_reused_without_touching_the_database() {
    let db = Path::new("{db}");
    let app = common::spawn_app_with(&format!(
        "#replace{}",
        config_text("127.0.0.1:0", db, "readiness_cache_ms = 600000")
    ))
    .await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Another connection holds the write lock: a probe would fail, a reused answer does not.
    let conn = rusqlite::Connection::open(&app.db_path).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let request = app.client.get(app.url("/readyz"));
            tokio::spawn(async move { request.send().await.unwrap().status() })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 200);
    }
    conn.execute_batch("ROLLBACK").unwrap();
}

// ---------------------------------------------------------------------------------------------
// Forward handlers and redirects
// ---------------------------------------------------------------------------------------------

/// A forward target answering with a redirect to a sink that counts what reaches it.
async fn redirecting_target(status: StatusCode) -> (String, Arc<AtomicUsize>) {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let sink = Router::new().route(
        "/sink",
        any(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "welcome" }
        }),
    );
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink_url = format!("http://{}/sink", sink_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(sink_listener, sink).await.unwrap() });
    let target = Router::new().route(
        "/hook",
        any(move || {
            let location = sink_url.clone();
            async move { (status, [(header::LOCATION, location)]).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, target).await.unwrap() });
    (url, reached)
}

async fn handler_state(app: &TestApp, id: i64, name: &str) -> Option<Value> {
    event_detail(app, id).await["handlers"]
        .as_array()?
        .iter()
        .find(|h| h["handler"] == name)
        .map(|h| h["state"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_a_forward_target_is_a_failed_attempt_and_is_not_followed() {
    let (see_other, reached_by_302) = redirecting_target(StatusCode::FOUND).await;
    let (temporary, reached_by_307) = redirecting_target(StatusCode::TEMPORARY_REDIRECT).await;
    let handler = |name: &str, url: &str| {
        format!(
            "\n[[handlers]]\nname = \"{name}\"\nkind = \"forward\"\nurl = \"{url}\"\n\
             max_attempts = 1\nbackoff_initial_ms = 10\nbackoff_max_ms = 10\n"
        )
    };
    let app = common::spawn_app_with(&format!(
        "{}{}",
        handler("found", &see_other),
        handler("temporary", &temporary)
    ))
    .await;
    let id = deliver_applied(&app, &body("cus_redirect")).await;
    for name in ["found", "temporary"] {
        eventually(&format!("{name}: the event is marked dead"), || async {
            handler_state(&app, id, name).await == Some(json!("dead"))
        })
        .await;
    }
    assert_eq!(reached_by_302.load(Ordering::SeqCst), 0, "302 not followed");
    assert_eq!(reached_by_307.load(Ordering::SeqCst), 0, "307 not followed");
}

// ---------------------------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_from_the_environment_is_taken_verbatim() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("127.0.0.1:0", &dir.path().join("webhookd.db"), "");
    let config = write_config(dir.path(), &text);
    let token = "0001234567";
    let mut child = binary()
        .args(["serve", "--config"])
        .arg(&config)
        .env("REBILLY_WEBHOOKD__API__TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(address) = listening_address(&line) {
                let _ = tx.send(address);
            }
        }
    });
    let address = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
        .await
        .unwrap()
        .expect("the daemon logs its address");
    let client = reqwest::Client::new();
    let status = |bearer: &'static str| {
        client
            .get(format!("http://{address}/customers"))
            .bearer_auth(bearer)
            .send()
    };
    let verbatim = status(token).await.unwrap().status();
    let retyped = status("1234567").await.unwrap().status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(verbatim, 200, "the token keeps its leading zeros");
    assert_eq!(retyped, 401);
}
