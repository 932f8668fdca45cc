//! Talking to the daemon over HTTP: answers, problem documents and list endpoints.

use super::{PASSWORD, TestApp, USER};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PROBLEM: &str = "application/problem+json";

/// `GET /events?<query>` as `(events, Pagination-Total)`.
pub async fn events(app: &TestApp, query: &str) -> (Vec<Value>, u64) {
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
pub async fn assert_nothing_stored(app: &TestApp) {
    let (list, total) = events(app, "").await;
    assert_eq!(list, Vec::<Value>::new(), "the event log should be empty");
    assert_eq!(total, 0, "Pagination-Total of the event log");
}

pub fn is_problem(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM))
}

/// Checks a problem answer's status and content type, and returns its JSON body.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> Value {
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
pub async fn expect_basic_challenge(response: reqwest::Response) -> Value {
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
pub async fn accepted(response: reqwest::Response) -> (i64, String) {
    assert_eq!(response.status(), 200, "delivery should be accepted");
    let json: Value = response.json().await.unwrap();
    (
        json["eventId"].as_i64().expect("eventId"),
        json["status"].as_str().expect("status").to_owned(),
    )
}

/// The status word of a delivery that must be answered 200.
pub async fn status_of(app: &TestApp, body: impl Into<reqwest::Body>) -> String {
    app.deliver_ok(body).await.1
}

/// Posts a body with the test's Basic credentials, from any task.
pub async fn post_basic(client: &reqwest::Client, url: &str, body: Vec<u8>) -> reqwest::Response {
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

/// Sends a raw HTTP/1.1 request and returns everything the server answered.
pub async fn raw_http(address: std::net::SocketAddr, request: &[u8]) -> String {
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

/// GET with the API token: `(status, headers, JSON body)`.
pub async fn get_json(app: &TestApp, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let response = app.api_get(path).await;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: body is not JSON ({e}): {text}"));
    (status, headers, body)
}

/// A list endpoint that must answer 200 with a JSON array.
pub async fn list(app: &TestApp, path: &str) -> Vec<Value> {
    let (status, _, body) = get_json(app, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body.as_array()
        .unwrap_or_else(|| panic!("{path}: not an array: {body}"))
        .clone()
}

pub async fn events_of(app: &TestApp, query: &str) -> Vec<Value> {
    list(app, &format!("/events{query}")).await
}

/// The `id` member of each item.
pub fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

pub fn ids_of_events(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["id"].as_i64().unwrap()).collect()
}

pub fn header(headers: &reqwest::header::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Asserts a 400 problem document whose body names `name`.
pub async fn assert_bad_query(app: &TestApp, path: &str, name: &str) {
    let response = app.api_get(path).await;
    assert_eq!(response.status(), 400, "{path} should be refused");
    assert!(is_problem(&response), "{path}: not a problem document");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], 400, "{path}: {body}");
    assert!(
        body.to_string().contains(name),
        "{path}: the problem should name `{name}`: {body}"
    );
}

/// `GET /metrics` (no token needed) as text.
pub async fn metrics_text(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200, "/metrics needs no token");
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    response.text().await.unwrap()
}

/// `GET /events/{id}`, which must exist.
pub async fn event_detail(app: &TestApp, id: i64) -> Value {
    let response = app.api_get(&format!("/events/{id}")).await;
    assert_eq!(response.status(), 200, "event {id} should exist");
    response.json().await.unwrap()
}

/// Delivers a body that must be applied; returns its event id.
pub async fn deliver_applied(app: &TestApp, body: &[u8]) -> i64 {
    let (id, status) = app.deliver_ok(body.to_vec()).await;
    assert_eq!(status, "applied", "{}", String::from_utf8_lossy(body));
    id
}
