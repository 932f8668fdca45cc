//! Limits at the HTTP edge: body size, slow clients and back-pressure.

use crate::common::{self, *};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The configuration of `tests/common` with `server.max_body_bytes` set (`#replace` form).
fn config_with_body_limit(limit: usize) -> String {
    let lines = format!("max_body_bytes = {limit}");
    format!(
        "#replace{}",
        common::config_text("127.0.0.1:0", Path::new("{db}"), &lines)
    )
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
async fn a_declared_length_over_the_limit_is_refused_413_before_the_body_arrives() {
    let app = common::spawn_app_with(&config_with_body_limit(1024)).await;
    // The head declares far more than the limit; only a few bytes of the body follow, and the
    // connection stays open: the answer must come from the declared length alone.
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = delivery_head(app.address, &basic_value(USER, PASSWORD), 100_000_000);
    stream
        .write_all(format!("{head}\r\n{{\"eventType\":").as_bytes())
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 413, "{}{}", response.head, response.body);
    assert!(
        response.head.contains("application/problem+json"),
        "{}",
        response.head
    );
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
    // Another connection holds the write lock, so the writer stalls on its next delivery; the
    // writer then holds one delivery and two wait in the queue.
    let lock = WriteLock::take(&app.db_path);
    let filled = fill_writer(&app, 2, "cus_queue").await;

    // Beyond the queue, deliveries are refused at once, while the lock is still held.
    for n in 0..3 {
        let answer = spawn_delivery(&app, &format!("cus_queue_over_{n}"))
            .await
            .unwrap();
        assert_eq!(
            answer,
            (503, Some("1".to_owned())),
            "delivery {n} beyond the queue"
        );
    }

    lock.release();
    for task in filled.held {
        assert_eq!(task.await.unwrap().0, 200);
    }
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 4, "only the accepted deliveries are stored");
}
