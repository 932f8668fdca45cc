//! A minimal durable receiver for `bench/durable.sh`: the least a webhook receiver can do and
//! still promise that a 2xx survives a crash. It checks one Basic credential, parses the body as
//! JSON, and appends the raw body to SQLite (WAL, `synchronous = FULL`, SQLite's defaults
//! otherwise) through one writer thread that commits whatever is waiting in one transaction,
//! answering each request only after that commit. No dedupe, no projection, no handlers.
//!
//! Usage: `bench_minimal ADDRESS DATABASE USER:PASSWORD`. Prints
//! `listening address=IP:PORT` on stdout once bound, then serves until killed.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

type Append = (Bytes, oneshot::Sender<bool>);

struct Receiver {
    expected_authorization: String,
    appends: mpsc::Sender<Append>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == receiver.expected_authorization.as_bytes());
    if !authorized {
        return StatusCode::UNAUTHORIZED;
    }
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let (done, committed) = oneshot::channel();
    if receiver.appends.send((body, done)).await.is_err() {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    match committed.await {
        Ok(true) => StatusCode::OK,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// Group commit: one transaction for every body waiting, one fsync, then every answer.
fn write_loop(mut conn: rusqlite::Connection, mut appends: mpsc::Receiver<Append>) {
    let mut batch: Vec<Append> = Vec::new();
    while let Some(first) = appends.blocking_recv() {
        batch.push(first);
        while batch.len() < 1024 {
            match appends.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let committed = append_all(&mut conn, &batch).is_ok();
        for (_, done) in batch.drain(..) {
            let _ = done.send(committed);
        }
    }
}

fn append_all(conn: &mut rusqlite::Connection, batch: &[Append]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached("INSERT INTO deliveries (body) VALUES (?1)")?;
        for (body, _) in batch {
            insert.execute([body.as_ref()])?;
        }
    }
    tx.commit()
}

fn open(path: &str) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS deliveries (id INTEGER PRIMARY KEY, body BLOB)",
    )?;
    Ok(conn)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: bench_minimal ADDRESS DATABASE USER:PASSWORD";
    let address = args.next().ok_or(usage)?;
    let database = args.next().ok_or(usage)?;
    let credential = args.next().ok_or(usage)?;
    let conn = open(&database)?;
    let (appends, queue) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("minimal-writer".into())
        .spawn(move || write_loop(conn, queue))?;
    let receiver = Arc::new(Receiver {
        expected_authorization: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credential)
        ),
        appends,
    });
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening address={}", listener.local_addr()?)?;
    stdout.flush()?;
    let app = Router::new().fallback(receive).with_state(receiver);
    axum::serve(listener, app).await?;
    Ok(())
}
