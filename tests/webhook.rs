mod common;

// `POST /webhooks/rebilly` end to end: authentication methods, body limits, rejected bodies,
// duplicates and ignored types, durability across a restart, group commit under concurrency,
// and configuration through the real binary.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{API_TOKEN, PASSWORD, TestApp, USER, basic_value, customer_event, fixture};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const PROBLEM: &str = "application/problem+json";

/// `GET /events?<query>` as `(events, Pagination-Total)`.
async fn events(app: &TestApp, query: &str) -> (Vec<Value>, u64) {
    let response = app.api_get(&format!("/events{query}")).await;
    assert_eq!(response.status(), 200, "GET /events{query}");
    let total = response
        .headers()
        .get("pagination-total")
        .expect("Pagination-Total header")
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap();
    let list: Vec<Value> = response.json().await.unwrap();
    (list, total)
}

/// The event log is empty: nothing of a refused delivery was kept.
async fn assert_nothing_stored(app: &TestApp) {
    let (list, total) = events(app, "").await;
    assert_eq!(list, Vec::<Value>::new(), "the event log should be empty");
    assert_eq!(total, 0, "Pagination-Total of the event log");
}

/// Checks a problem answer's status and content type, and returns its JSON body.
async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "status of the answer");
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        content_type.starts_with(PROBLEM),
        "content type should be {PROBLEM}, got {content_type:?}"
    );
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(body["status"], status, "problem status member: {body}");
    assert!(body["title"].is_string(), "problem title: {body}");
    body
}

/// Checks a 401 refusal that must carry a Basic challenge.
async fn expect_basic_challenge(response: reqwest::Response) -> Value {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(
        challenge.starts_with("Basic"),
        "WWW-Authenticate should start with Basic, got {challenge:?}"
    );
    expect_problem(response, 401).await
}

/// The JSON of a 200 delivery answer as `(eventId, status)`.
async fn accepted(response: reqwest::Response) -> (i64, String) {
    assert_eq!(response.status(), 200, "delivery should be accepted");
    let json: Value = response.json().await.unwrap();
    (
        json["eventId"].as_i64().expect("eventId"),
        json["status"].as_str().expect("status").to_owned(),
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A `whsec_` secret for some key bytes.
fn whsec(key: &[u8]) -> String {
    format!("whsec_{}", BASE64.encode(key))
}

/// `v1,<base64>` for a Standard Webhooks signature.
fn signature(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    format!(
        "v1,{}",
        BASE64.encode(rebilly_webhookd::auth::sign(key, id, timestamp, body))
    )
}

/// A configuration with only HMAC signatures as webhook credential (`#replace` form).
fn hmac_only_config(secrets: &[String]) -> String {
    let list = secrets
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[auth.hmac]
secrets = [{list}]
tolerance_seconds = 300

[api]
token = "{API_TOKEN}"
"#
    )
}

/// A signed request (no Basic) with the given headers.
async fn deliver_signed(
    app: &TestApp,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.webhook_request()
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signatures)
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// Posts a body with the test's Basic credentials, from any task.
async fn post_basic(client: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::Response {
    client
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header("user-agent", "Rebilly/test")
        .basic_auth(USER, Some(PASSWORD))
        .body(body)
        .send()
        .await
        .expect("request sent")
}

/// A customer-created body padded with a long string field to exactly `size` bytes.
fn padded_body(id: &str, size: usize) -> Vec<u8> {
    let bare = customer_event("customer-created", id, 1, json!({"note": ""}));
    assert!(
        bare.len() <= size,
        "the bare body is already {}",
        bare.len()
    );
    let body = customer_event(
        "customer-created",
        id,
        1,
        json!({"note": "x".repeat(size - bare.len())}),
    );
    assert_eq!(body.len(), size);
    body
}

/// The configuration of `tests/common` with `server.max_body_bytes` set (`#replace` form).
fn config_with_body_limit(limit: usize) -> String {
    let lines = format!("max_body_bytes = {limit}");
    format!(
        "#replace{}",
        common::config_text("127.0.0.1:0", Path::new("{db}"), &lines)
    )
}

/// Sends a raw HTTP/1.1 request and returns everything the server answered.
async fn raw_http(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    // The server may answer and close before reading everything; a failed write is not fatal.
    let _ = stream.write_all(request).await;
    let _ = stream.flush().await;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// The test process's own `REBILLY_WEBHOOKD*` variables, so that the child sees only ours.
fn clean_command(config: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rebilly-webhookd"));
    for (key, _) in std::env::vars() {
        if key.starts_with("REBILLY_WEBHOOKD") {
            command.env_remove(&key);
        }
    }
    command
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(config)
        .arg(subcommand)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Runs a command that must end by itself within `limit`; returns (success, exit code, stderr).
fn run_to_exit(mut command: Command, limit: Duration) -> (bool, Option<i32>, String) {
    let mut child = command.spawn().expect("the binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap();
    (status.success(), status.code(), text)
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_right_basic_credentials_are_accepted_and_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .header("authorization", basic_value(USER, PASSWORD))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    let (id, status) = accepted(response).await;
    assert_eq!(status, "applied");
    let (list, total) = events(&app, "").await;
    assert_eq!(total, 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["customerId"], "cus_alice_01");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .basic_auth(USER, Some("not-the-password"))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
    let unknown = app.api_get("/customers/cus_alice_01").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn an_unknown_user_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .basic_auth("someone-else", Some(PASSWORD))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_delivery_without_credentials_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    // A scheme other than Basic, carrying the right secret, is no better.
    let response = app
        .webhook_request()
        .bearer_auth(PASSWORD)
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn both_basic_credentials_are_accepted_during_rotation() {
    let app = common::spawn_app_with(
        r#"
[[auth.basic]]
username = "rebilly-next"
password = "the-new-password-after-rotation"
"#,
    )
    .await;
    let old = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .body(customer_event(
            "customer-created",
            "cus_rot_1",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(old).await.1, "applied");
    let new = app
        .webhook_request()
        .basic_auth("rebilly-next", Some("the-new-password-after-rotation"))
        .body(customer_event(
            "customer-created",
            "cus_rot_2",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(new).await.1, "applied");
    // Mixing one entry's user with the other's password matches neither.
    let mixed = app
        .webhook_request()
        .basic_auth(USER, Some("the-new-password-after-rotation"))
        .body(customer_event(
            "customer-created",
            "cus_rot_3",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(mixed).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 2);
}

const HEADER_SECRETS: &str = r#"
[auth.header]
name = "X-Webhook-Token"
values = ["header-secret-a-1234567890", "header-secret-b-0987654321"]
"#;

#[tokio::test]
async fn any_configured_header_secret_value_passes_alongside_basic() {
    let app = common::spawn_app_with(HEADER_SECRETS).await;
    for (n, value) in ["header-secret-a-1234567890", "header-secret-b-0987654321"]
        .into_iter()
        .enumerate()
    {
        let response = app
            .webhook_request()
            .basic_auth(USER, Some(PASSWORD))
            .header("X-Webhook-Token", value)
            .body(customer_event(
                "customer-created",
                &format!("cus_hdr_{n}"),
                1,
                json!({}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(accepted(response).await.1, "applied", "value {value}");
    }
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 2);
}

#[tokio::test]
async fn a_wrong_or_missing_header_secret_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app_with(HEADER_SECRETS).await;
    let body = || customer_event("customer-created", "cus_hdr_x", 1, json!({}));
    // Right Basic, wrong header value.
    let wrong = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Webhook-Token", "header-secret-a-123456789")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_problem(wrong, 401).await;
    // Right Basic, no header.
    let missing = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .body(body())
        .send()
        .await
        .unwrap();
    expect_problem(missing, 401).await;
    // Right header, wrong Basic.
    let wrong_basic = app
        .webhook_request()
        .basic_auth(USER, Some("wrong-password"))
        .header("X-Webhook-Token", "header-secret-a-1234567890")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(wrong_basic).await;
    // Right header, no Basic at all.
    let no_basic = app
        .webhook_request()
        .header("X-Webhook-Token", "header-secret-b-0987654321")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(no_basic).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_header_secret_alone_authenticates_when_it_is_the_only_credential() {
    let app = common::spawn_app_with(&format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"
{HEADER_SECRETS}
[api]
token = "{API_TOKEN}"
"#
    ))
    .await;
    let missing = app
        .webhook_request()
        .body(customer_event(
            "customer-created",
            "cus_hdr_only",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    expect_problem(missing, 401).await;
    assert_nothing_stored(&app).await;
    let right = app
        .webhook_request()
        .header("X-Webhook-Token", "header-secret-b-0987654321")
        .body(customer_event(
            "customer-created",
            "cus_hdr_only",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(right).await.1, "applied");
    assert_eq!(app.customer("cus_hdr_only").await["id"], "cus_hdr_only");
}

const HMAC_KEY_1: &[u8] = b"first-hmac-key-material-0123456789";
const HMAC_KEY_2: &[u8] = b"second-hmac-key-material-9876543210";

#[tokio::test]
async fn a_valid_standard_webhooks_signature_is_accepted() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_1", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_1", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_1", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    assert_eq!(app.customer("cus_sig_1").await["revision"], 1);
}

#[tokio::test]
async fn a_tampered_body_fails_its_signature_and_nothing_is_stored() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_2", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_2", &timestamp, &body);
    let tampered = customer_event("customer-created", "cus_sig_2", 2, json!({}));
    let response = deliver_signed(&app, "msg_sig_2", &timestamp, &signatures, tampered).await;
    expect_problem(response, 401).await;
    // A signature over another message id does not carry over either.
    let response = deliver_signed(&app, "msg_other", &timestamp, &signatures, body.clone()).await;
    expect_problem(response, 401).await;
    // Nor does a request with no signature at all.
    let response = app.webhook_request().body(body).send().await.unwrap();
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_signature_ten_minutes_old_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_3", 1, json!({}));
    let timestamp = (unix_now() - 600).to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_3", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_3", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_signature_by_the_second_of_two_secrets_is_accepted() {
    let app =
        common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1), whsec(HMAC_KEY_2)])).await;
    let body = customer_event("customer-created", "cus_sig_4", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_2, "msg_sig_4", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_4", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    // A key that is not configured is refused.
    let body = customer_event("customer-created", "cus_sig_5", 1, json!({}));
    let signatures = signature(b"an-unknown-key", "msg_sig_5", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_5", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn one_valid_signature_among_several_is_enough() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_6", 1, json!({}));
    let timestamp = unix_now().to_string();
    let valid = signature(HMAC_KEY_1, "msg_sig_6", &timestamp, &body);
    let other = signature(b"some-retired-key", "msg_sig_6", &timestamp, &body);
    let signatures = format!("{other} v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAA {valid}");
    let response = deliver_signed(&app, "msg_sig_6", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    // Several signatures of which none is valid are refused.
    let body = customer_event("customer-created", "cus_sig_7", 1, json!({}));
    let signatures = format!("{other} v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let response = deliver_signed(&app, "msg_sig_7", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn with_basic_and_hmac_configured_both_must_pass() {
    let app = common::spawn_app_with(&format!(
        "[auth.hmac]\nsecrets = [\"{}\"]\n",
        whsec(HMAC_KEY_1)
    ))
    .await;
    let body = customer_event("customer-created", "cus_both_1", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_both", &timestamp, &body);
    let signed = |user: &str, password: &str, body: Vec<u8>| {
        app.webhook_request()
            .basic_auth(user, Some(password))
            .header("webhook-id", "msg_both")
            .header("webhook-timestamp", timestamp.clone())
            .header("webhook-signature", signatures.clone())
            .body(body)
    };
    // Valid signature, wrong Basic.
    let response = signed(USER, "wrong-password", body.clone())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    // Right Basic, no signature.
    let response = app.deliver(body.clone()).await;
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
    // Both right.
    let response = signed(USER, PASSWORD, body).send().await.unwrap();
    assert_eq!(accepted(response).await.1, "applied");
}

#[tokio::test]
async fn a_delivery_from_an_allowed_network_is_accepted() {
    let app = common::spawn_app_with("[auth]\nallowed_networks = [\"127.0.0.0/8\"]\n").await;
    let (_, status) = app
        .deliver_ok(fixture("deliveries/01-customer-created-alice.json"))
        .await;
    assert_eq!(status, "applied");
    // The network check does not replace the credential check.
    let response = app
        .webhook_request()
        .body(fixture("deliveries/02-customer-created-bob.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn a_delivery_from_outside_the_allowed_networks_is_forbidden_and_nothing_is_stored() {
    let app = common::spawn_app_with("[auth]\nallowed_networks = [\"203.0.113.0/24\"]\n").await;
    let response = app
        .deliver(fixture("deliveries/01-customer-created-alice.json"))
        .await;
    expect_problem(response, 403).await;
    // Without a trusted proxy, a forwarding header is not believed.
    let response = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "203.0.113.5")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn the_client_address_from_a_trusted_proxy_decides_the_network_check() {
    let app = common::spawn_app_with(
        r#"
[auth]
trusted_proxy_header = "X-Forwarded-For"
trusted_proxies = ["127.0.0.0/8"]
allowed_networks = ["203.0.113.0/24"]
"#,
    )
    .await;
    let outside = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "198.51.100.7")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_problem(outside, 403).await;
    assert_nothing_stored(&app).await;
    let inside = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "203.0.113.5")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(inside).await.1, "applied");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}

#[tokio::test]
async fn the_server_refuses_to_start_without_any_webhook_credential() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("webhookd.db");
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\npath = \"{}\"\n\n[api]\ntoken = \"{API_TOKEN}\"\n",
            db.display()
        ),
    );
    let settings = rebilly_webhookd::config::Settings::load(Some(&config)).expect("loads");
    let listener = rebilly_webhookd::server::bind(&settings).await.unwrap();
    let address = listener.local_addr().unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        rebilly_webhookd::server::run(settings, listener, std::future::pending::<()>()),
    )
    .await
    .expect("run returns at once instead of serving");
    let error = outcome.expect_err("run must refuse an anonymous configuration");
    assert!(
        error.to_string().contains("allow_unauthenticated"),
        "the error should point at allow_unauthenticated: {error}"
    );
    // Nothing is listening any more.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{address}/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn allow_unauthenticated_accepts_an_anonymous_delivery() {
    let app = common::spawn_app_with(&format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[auth]
allow_unauthenticated = true

[api]
token = "{API_TOKEN}"
"#
    ))
    .await;
    let response = app
        .webhook_request()
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(response).await.1, "applied");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}

// ---------------------------------------------------------------------------------------------
// 2. Body limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_body_over_the_limit_with_content_length_is_refused_413_and_nothing_is_stored() {
    let app = common::spawn_app_with(&config_with_body_limit(2048)).await;
    let body = padded_body("cus_big_1", 4096);
    let response = app.deliver(body).await;
    let problem = expect_problem(response, 413).await;
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("2048"),
        "the detail should name the limit: {problem}"
    );
    // One byte over the limit is already too much.
    let response = app.deliver(padded_body("cus_big_2", 2049)).await;
    expect_problem(response, 413).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_chunked_body_over_the_limit_is_refused_413_and_nothing_is_stored() {
    let app = common::spawn_app_with(&config_with_body_limit(2048)).await;
    let body = padded_body("cus_chunked_1", 4500);
    let mut request = format!(
        "POST /webhooks/rebilly HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
         Content-Type: application/json; charset=utf-8\r\nUser-Agent: Rebilly/test\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.address,
        basic_value(USER, PASSWORD)
    )
    .into_bytes();
    for chunk in body.chunks(1000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    assert!(
        !String::from_utf8_lossy(&request)
            .to_ascii_lowercase()
            .contains("content-length"),
        "the request must not declare its length"
    );
    let answer = raw_http(app.address, &request).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "expected a 413 answer, got: {answer}"
    );
    assert!(
        answer.to_ascii_lowercase().contains(PROBLEM),
        "the answer should be a problem document: {answer}"
    );
    assert_nothing_stored(&app).await;
    assert_eq!(app.api_get("/customers/cus_chunked_1").await.status(), 404);
}

#[tokio::test]
async fn a_chunked_body_within_the_limit_is_accepted() {
    let app = common::spawn_app_with(&config_with_body_limit(2048)).await;
    let body = padded_body("cus_chunked_2", 2000);
    let mut request = format!(
        "POST /webhooks/rebilly HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\n\
         Content-Type: application/json; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n",
        app.address,
        basic_value(USER, PASSWORD)
    )
    .into_bytes();
    for chunk in body.chunks(700) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_http(app.address, &request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "got: {answer}");
    assert!(answer.contains("\"applied\""), "got: {answer}");
    assert_eq!(
        app.customer("cus_chunked_2").await["note"]
            .as_str()
            .unwrap()
            .len(),
        2000 - customer_event("customer-created", "cus_chunked_2", 1, json!({"note": ""})).len()
    );
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_is_accepted() {
    let app = common::spawn_app_with(&config_with_body_limit(2048)).await;
    let body = padded_body("cus_exact_1", 2048);
    let (id, status) = app.deliver_ok(body.clone()).await;
    assert_eq!(status, "applied");
    let detail: Value = app
        .api_get(&format!("/events/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(detail["bodySize"], 2048);
    assert_eq!(detail["body"].as_str().unwrap().as_bytes(), body.as_slice());
    assert_eq!(app.customer("cus_exact_1").await["id"], "cus_exact_1");
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. Rejected bodies
// ---------------------------------------------------------------------------------------------

/// Delivers a rejected body, checks the problem and the stored rejection; returns the problem.
async fn deliver_rejected(app: &TestApp, body: Vec<u8>, status: u16) -> Value {
    let problem = expect_problem(app.deliver(body.clone()).await, status).await;
    let event_id = problem["eventId"]
        .as_i64()
        .unwrap_or_else(|| panic!("the problem should carry eventId: {problem}"));
    let (rejected, _) = events(app, "?status=rejected&limit=1000").await;
    let record = rejected
        .iter()
        .find(|e| e["id"] == event_id)
        .unwrap_or_else(|| panic!("event {event_id} should be listed as rejected: {rejected:?}"));
    assert_eq!(record["status"], "rejected");
    let error = record["error"].as_str().unwrap_or("");
    assert!(!error.is_empty(), "a rejection keeps its reason: {record}");
    let detail: Value = app
        .api_get(&format!("/events/{event_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["body"].as_str().unwrap().as_bytes(),
        body.as_slice(),
        "the raw body is kept"
    );
    problem
}

#[tokio::test]
async fn malformed_json_is_a_bad_request_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let problem = deliver_rejected(&app, fixture("rejected/truncated.json"), 400).await;
    assert_eq!(problem["eventId"], 1);
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, 1);
    assert_eq!(app.api_get("/customers/cus_jack_07").await.status(), 404);
}

#[tokio::test]
async fn a_json_array_is_a_bad_request_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let problem = deliver_rejected(&app, fixture("rejected/array-body.json"), 400).await;
    assert!(problem["eventId"].is_i64());
    for scalar in [&b"\"just a string\""[..], b"42", b"null"] {
        deliver_rejected(&app, scalar.to_vec(), 400).await;
    }
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, 4);
    assert_eq!(app.api_get("/customers/cus_erin_05").await.status(), 404);
}

#[tokio::test]
async fn every_unusable_known_event_is_422_naming_its_field_and_kept_as_rejected() {
    let app = common::spawn_app().await;
    let cases = [
        ("created-missing-customer-id.json", "customerId"),
        ("created-invalid-customer-id.json", "customerId"),
        ("created-customer-id-too-long.json", "customerId"),
        (
            "updated-revision-not-integer.json",
            "_embedded.customer.revision",
        ),
        ("merged-missing-duplicated.json", "duplicatedCustomer"),
        ("experian-bad-outcome.json", "outcome"),
        ("missing-event-type.json", "eventType"),
    ];
    let mut ids = HashSet::new();
    for (file, field) in cases {
        let problem = deliver_rejected(&app, fixture(&format!("rejected/{file}")), 422).await;
        assert_eq!(problem["field"], field, "{file}: {problem}");
        assert!(ids.insert(problem["eventId"].as_i64().unwrap()));
    }
    let (_, total) = events(&app, "?status=rejected").await;
    assert_eq!(total, cases.len() as u64);
    // None of them touched the projection.
    let customers = app.api_get("/customers").await;
    assert_eq!(customers.headers()["pagination-total"], "0");
    assert_eq!(customers.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn a_customer_update_whose_embedded_id_differs_is_422() {
    let app = common::spawn_app().await;
    let mut body: Value =
        serde_json::from_slice(&customer_event("customer-updated", "cus_one", 2, json!({})))
            .unwrap();
    body["_embedded"]["customer"]["id"] = json!("cus_two");
    let problem = deliver_rejected(&app, serde_json::to_vec(&body).unwrap(), 422).await;
    let field = problem["field"].as_str().unwrap_or("");
    assert!(
        field == "_embedded.customer.id" || field == "customerId",
        "the problem should name the id field: {problem}"
    );
    assert_eq!(app.api_get("/customers/cus_one").await.status(), 404);
    assert_eq!(app.api_get("/customers/cus_two").await.status(), 404);
}

// ---------------------------------------------------------------------------------------------
// 5 and 6. Ignored types and duplicates
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unsupported_event_type_is_ignored_and_its_redelivery_is_a_duplicate() {
    let app = common::spawn_app().await;
    let invoice = fixture("deliveries/10-invoice-paid.json");
    let (first, status) = app.deliver_ok(invoice.clone()).await;
    assert_eq!(status, "ignored");
    let (second, status) = app.deliver_ok(invoice).await;
    assert_eq!(status, "duplicate");
    assert_ne!(first, second);

    let renewal = serde_json::to_vec(&json!({
        "eventType": "subscription-renewed",
        "subscriptionId": "sub_01",
        "customerId": "cus_alice_01",
        "_embedded": {"subscription": {"id": "sub_01", "status": "active"}}
    }))
    .unwrap();
    let (third, status) = app.deliver_ok(renewal.clone()).await;
    assert_eq!(status, "ignored");
    let (fourth, status) = app.deliver_ok(renewal).await;
    assert_eq!(status, "duplicate");

    let (ignored, total) = events(&app, "?status=ignored").await;
    assert_eq!(total, 2);
    let types: Vec<&str> = ignored
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["subscription-renewed", "invoice-paid"]);
    assert_eq!(ignored[0]["id"], third);
    let (_, duplicates) = events(&app, "?status=duplicate").await;
    assert_eq!(duplicates, 2);
    assert!(fourth > third);
    // An ignored event creates no customer.
    assert_eq!(app.api_get("/customers/cus_alice_01").await.status(), 404);
}

#[tokio::test]
async fn a_byte_identical_redelivery_is_a_duplicate_and_changes_nothing() {
    let app = common::spawn_app().await;
    let body = fixture("deliveries/01-customer-created-alice.json");
    let (first, status) = app.deliver_ok(body.clone()).await;
    assert_eq!(status, "applied");
    let before = app.customer("cus_alice_01").await;
    let (second, status) = app.deliver_ok(body).await;
    assert_eq!(status, "duplicate");
    assert_ne!(first, second);
    assert_eq!(app.customer("cus_alice_01").await, before);
    let (list, total) = events(&app, "?customerId=cus_alice_01").await;
    assert_eq!(total, 2);
    assert_eq!(list[0]["status"], "duplicate");
    assert_eq!(list[1]["status"], "applied");
}

#[tokio::test]
async fn a_different_body_for_the_same_type_customer_and_revision_is_a_duplicate() {
    let app = common::spawn_app().await;
    let original = fixture("deliveries/01-customer-created-alice.json");
    let (_, status) = app.deliver_ok(original.clone()).await;
    assert_eq!(status, "applied");
    let before = app.customer("cus_alice_01").await;

    // Same JSON, other bytes: compact instead of pretty-printed.
    let value: Value = serde_json::from_slice(&original).unwrap();
    let compact = serde_json::to_vec(&value).unwrap();
    assert_ne!(compact, original);
    let (_, status) = app.deliver_ok(compact).await;
    assert_eq!(status, "duplicate");

    // Keys in another order.
    let object = value.as_object().unwrap();
    let mut reversed = serde_json::Map::new();
    for (key, item) in object.iter().rev() {
        reversed.insert(key.clone(), item.clone());
    }
    let (_, status) = app
        .deliver_ok(serde_json::to_vec(&Value::Object(reversed)).unwrap())
        .await;
    assert_eq!(status, "duplicate");

    // An extra field, in the body and in the customer.
    let mut extended = value.clone();
    extended["webhookVersion"] = json!("9");
    extended["_embedded"]["customer"]["extraField"] = json!("must not appear");
    let (_, status) = app.deliver_ok(serde_json::to_vec(&extended).unwrap()).await;
    assert_eq!(status, "duplicate");

    let after = app.customer("cus_alice_01").await;
    assert_eq!(after, before);
    assert!(after.get("extraField").is_none());
    let (_, duplicates) = events(&app, "?status=duplicate").await;
    assert_eq!(duplicates, 3);
}

#[tokio::test]
async fn two_experian_checks_embedding_the_same_revision_are_both_applied() {
    let app = common::spawn_app().await;
    let (_, status) = app
        .deliver_ok(fixture("deliveries/02-customer-created-bob.json"))
        .await;
    assert_eq!(status, "applied");
    let (first, status) = app
        .deliver_ok(fixture("deliveries/06-experian-check-bob-match.json"))
        .await;
    assert_eq!(status, "applied");
    let (second, status) = app
        .deliver_ok(fixture("deliveries/07-experian-check-bob-mismatch.json"))
        .await;
    assert_eq!(status, "applied");
    assert_ne!(first, second);

    let bob = app.customer("cus_bob_02").await;
    assert_eq!(bob["revision"], 2);
    assert_eq!(bob["experianCheck"]["outcome"], -1);
    assert_eq!(bob["experianCheck"]["errorCode"], "003");
    assert_eq!(bob["experianCheck"]["reason"], "Date of birth mismatch");

    let (checks, total) = events(
        &app,
        "?customerId=cus_bob_02&eventType=experian-check-performed",
    )
    .await;
    assert_eq!(total, 2);
    assert!(
        checks.iter().all(|e| e["status"] == "applied"),
        "{checks:?}"
    );

    // The same check delivered again, byte for byte, is a duplicate all the same.
    let (_, status) = app
        .deliver_ok(fixture("deliveries/07-experian-check-bob-mismatch.json"))
        .await;
    assert_eq!(status, "duplicate");
}

// ---------------------------------------------------------------------------------------------
// 7. Durability across a restart
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn acknowledged_concurrent_deliveries_survive_a_restart() {
    let app = common::spawn_app().await;
    let url = app.url("/webhooks/rebilly");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..50 {
        let client = app.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let id = format!("cus_restart_{n:02}");
            let body = customer_event("customer-created", &id, 1 + n % 3, json!({}));
            let (event_id, status) = accepted(post_basic(&client, &url, body).await).await;
            (id, event_id, status)
        });
    }
    let mut acknowledged = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        let (customer, event_id, status) = result.unwrap();
        assert_eq!(status, "applied", "{customer}");
        assert!(acknowledged.insert(event_id, customer).is_none());
    }
    assert_eq!(acknowledged.len(), 50);

    let app = app.restart().await;
    let (list, total) = events(&app, "?limit=1000").await;
    assert_eq!(total, 50);
    let stored: HashMap<i64, String> = list
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["customerId"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (event_id, customer) in &acknowledged {
        assert_eq!(
            stored.get(event_id),
            Some(customer),
            "event {event_id} after the restart"
        );
        let served = app.customer(customer).await;
        assert_eq!(&served["id"], customer.as_str());
    }
}

// ---------------------------------------------------------------------------------------------
// 8. Group commit
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Expect {
    Ok(&'static str),
    Problem(u16),
}

#[tokio::test]
async fn concurrent_mixed_deliveries_each_get_their_own_answer() {
    let app = common::spawn_app().await;
    let seed = customer_event("customer-created", "cus_seed", 1, json!({}));
    let (seed_id, status) = app.deliver_ok(seed.clone()).await;
    assert_eq!(status, "applied");

    let mut requests: Vec<(Vec<u8>, Expect, Option<String>)> = Vec::new();
    for n in 0..30 {
        let id = format!("cus_batch_{n:02}");
        requests.push((
            customer_event("customer-created", &id, 1, json!({})),
            Expect::Ok("applied"),
            Some(id),
        ));
    }
    for n in 0..8 {
        // 422: an id breaking the pattern, distinct bodies.
        requests.push((
            customer_event("customer-created", &format!("bad id {n}"), 1, json!({})),
            Expect::Problem(422),
            None,
        ));
    }
    for n in 0..6 {
        // 400: cut-off JSON and non-objects.
        let body = if n % 2 == 0 {
            format!("{{\"eventType\": \"customer-created\", \"customerId\": \"cus_{n}").into_bytes()
        } else {
            format!("[{n}]").into_bytes()
        };
        requests.push((body, Expect::Problem(400), None));
    }
    for _ in 0..8 {
        requests.push((seed.clone(), Expect::Ok("duplicate"), None));
    }
    for n in 0..8 {
        let body = serde_json::to_vec(&json!({
            "eventType": "invoice-paid",
            "invoiceId": format!("in_batch_{n}"),
            "customerId": "cus_seed",
        }))
        .unwrap();
        requests.push((body, Expect::Ok("ignored"), None));
    }
    // Interleave the kinds so that batches mix them.
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|i| (i * 37) % requests.len());

    let url = app.url("/webhooks/rebilly");
    let mut tasks = tokio::task::JoinSet::new();
    for index in order {
        let (body, expect, _) = requests[index].clone();
        let client = app.client.clone();
        let url = url.clone();
        tasks.spawn(async move {
            let response = post_basic(&client, &url, body).await;
            let code = response.status().as_u16();
            let json: Value = response.json().await.unwrap_or(Value::Null);
            (index, expect, code, json)
        });
    }
    let mut answered: HashMap<i64, (usize, String)> = HashMap::new();
    while let Some(result) = tasks.join_next().await {
        let (index, expect, code, json) = result.unwrap();
        let event_id = json["eventId"]
            .as_i64()
            .unwrap_or_else(|| panic!("request {index} answered without eventId: {json}"));
        let stored_status = match expect {
            Expect::Ok(status) => {
                assert_eq!(code, 200, "request {index}: {json}");
                assert_eq!(json["status"], status, "request {index}: {json}");
                status.to_owned()
            }
            Expect::Problem(status) => {
                assert_eq!(code, status, "request {index}: {json}");
                assert_eq!(json["status"], status, "request {index}: {json}");
                "rejected".to_owned()
            }
        };
        assert_ne!(event_id, seed_id);
        assert!(
            answered.insert(event_id, (index, stored_status)).is_none(),
            "event id {event_id} was given twice"
        );
    }
    assert_eq!(answered.len(), requests.len());

    let (list, total) = events(&app, "?limit=1000").await;
    assert_eq!(total as usize, requests.len() + 1);
    for record in &list {
        let id = record["id"].as_i64().unwrap();
        if id == seed_id {
            continue;
        }
        let (index, status) = &answered[&id];
        assert_eq!(
            record["status"],
            status.as_str(),
            "event {id} (request {index})"
        );
    }
    for (_, _, customer) in &requests {
        if let Some(customer) = customer {
            assert_eq!(app.customer(customer).await["revision"], 1);
        }
    }
    let customers = app.api_get("/customers?limit=1000").await;
    assert_eq!(customers.headers()["pagination-total"], "31");
}

// ---------------------------------------------------------------------------------------------
// 9. Configuration through the real binary
// ---------------------------------------------------------------------------------------------

fn binary_config(dir: &Path, with_credential: bool) -> std::path::PathBuf {
    let credential = if with_credential {
        format!("[[auth.basic]]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n")
    } else {
        String::new()
    };
    write_config(
        dir,
        &format!(
            r#"
[server]
listen = "127.0.0.1:1"
shutdown_grace_seconds = 5

[storage]
path = "{}"

{credential}
[api]
token = "{API_TOKEN}"
"#,
            dir.join("data").join("webhookd.db").display()
        ),
    )
}

#[tokio::test]
async fn serve_listens_on_the_address_from_the_environment_and_logs_the_real_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), true);
    let mut command = clean_command(&config, "serve");
    command.env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0");
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let port = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains("listening")
                    && let Some(rest) = line.split("address=127.0.0.1:").nth(1)
                {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    break digits.parse::<u16>().expect("a port number");
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening` line with the address; stderr so far: {seen:#?}");
            }
        }
    };
    assert_ne!(port, 0, "the log shows the real port, not 0");
    assert_ne!(port, 1, "the environment overrides the file's listen");

    let health = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    let health_status = health.as_ref().map(|r| r.status().as_u16()).ok();

    // SIGTERM stops it gracefully; kill it if it does not stop in time.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(lines_rx);
    let _ = reader.join();

    assert_eq!(health_status, Some(200), "GET /healthz on the logged port");
    let exit = exit.expect("serve stops within 30 s of SIGTERM");
    assert!(exit.success(), "serve exits 0 after SIGTERM: {exit:?}");
    assert!(
        dir.path().join("data").join("webhookd.db").exists(),
        "the database and its folder were created"
    );
}

#[tokio::test]
async fn an_invalid_environment_value_stops_the_binary_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), true);
    let mut command = clean_command(&config, "serve");
    command
        .env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0")
        .env("REBILLY_WEBHOOKD__SERVER__MAX_BODY_BYTES", "0");
    let (success, code, stderr) = run_to_exit(command, Duration::from_secs(60));
    assert!(!success, "exit code {code:?}; stderr: {stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "a non-zero exit code, got {code:?}"
    );
    assert!(
        stderr.contains("server.max_body_bytes"),
        "stderr should name the key: {stderr}"
    );
}

#[tokio::test]
async fn serve_without_any_credential_exits_naming_allow_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), false);
    let mut command = clean_command(&config, "serve");
    command.env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0");
    let (success, code, stderr) = run_to_exit(command, Duration::from_secs(60));
    assert!(!success, "exit code {code:?}; stderr: {stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "a non-zero exit code, got {code:?}"
    );
    assert!(
        stderr.contains("allow_unauthenticated"),
        "stderr should name allow_unauthenticated: {stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let config = config_with_body_limit(1024 * 1024).replace(
        "max_body_bytes",
        "request_timeout_seconds = 1\nmax_body_bytes",
    );
    let app = common::spawn_app_with(&config).await;
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    stream
        .write_all(b"POST /webhooks/rebilly HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 1024];
    // The header deadline is one second; the connection must be closed well before ten.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a connection with unfinished headers open"
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_client_that_stalls_in_its_body_is_answered_408_and_nothing_is_stored() {
    let config = config_with_body_limit(1024 * 1024).replace(
        "max_body_bytes",
        "request_timeout_seconds = 1\nmax_body_bytes",
    );
    let app = common::spawn_app_with(&config).await;
    let request = format!(
        "POST /webhooks/rebilly HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"eventType\":",
        basic_value(USER, PASSWORD)
    );
    let answer = raw_http(app.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer}");
    assert_nothing_stored(&app).await;
}

// ---------------------------------------------------------------------------------------------
// Back-pressure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_writer_queue_answers_503_with_retry_after_and_stores_nothing_of_those() {
    let config = config_with_body_limit(1024 * 1024)
        .replace("[storage]", "[storage]\nqueue_capacity = 2\nmax_batch = 1");
    let app = common::spawn_app_with(&config).await;
    // A first delivery proves the database is open and migrated before the test takes a lock.
    let warm_up = customer_event("customer-created", "cus_queue_warm", 1, json!({}));
    assert_eq!(app.deliver_ok(warm_up).await.1, "applied");
    // Another connection holds the write lock, so the writer stalls on its next delivery.
    let db = app.db_path.clone();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();

    let first = {
        let client = app.client.clone();
        let url = app.url("/webhooks/rebilly");
        let body = customer_event("customer-created", "cus_queue_0", 1, json!({}));
        tokio::spawn(async move {
            client
                .post(url)
                .basic_auth(USER, Some(PASSWORD))
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Let the writer take the first delivery and stall on the lock.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut pending = Vec::new();
    for n in 1..=5 {
        let client = app.client.clone();
        let url = app.url("/webhooks/rebilly");
        let body = customer_event("customer-created", &format!("cus_queue_{n}"), 1, json!({}));
        pending.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .basic_auth(USER, Some(PASSWORD))
                .body(body)
                .send()
                .await
                .unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (response.status().as_u16(), retry_after)
        }));
    }
    // Two fit in the queue; the other three are refused at once, while the lock is still held.
    let mut refused = 0;
    let mut queued = Vec::new();
    for task in pending {
        if task.is_finished() {
            let (status, retry_after) = task.await.unwrap();
            assert_eq!(status, 503);
            assert_eq!(retry_after.as_deref(), Some("1"));
            refused += 1;
        } else {
            queued.push(task);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while refused < 3 && Instant::now() < deadline {
        let mut still = Vec::new();
        for task in queued {
            if task.is_finished() {
                let (status, retry_after) = task.await.unwrap();
                assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
                refused += 1;
            } else {
                still.push(task);
            }
        }
        queued = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, 3, "three deliveries beyond the queue are refused");

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(first.await.unwrap(), 200);
    for task in queued {
        assert_eq!(task.await.unwrap().0, 200);
    }
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 4, "only the accepted deliveries are stored");
}
