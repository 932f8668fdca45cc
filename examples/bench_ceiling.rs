//! The machine's HTTP ceiling for `bench/run.sh`: a bare axum server that reads every request
//! body and answers 204, with none of the daemon's work (no auth, parse, storage or logging).
//!
//! Usage: `bench_ceiling [ADDRESS]` (default `127.0.0.1:0`). Prints
//! `listening address=IP:PORT` on stdout once bound, then serves until killed.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use std::io::Write;

async fn sink(body: Bytes) -> StatusCode {
    drop(body);
    StatusCode::NO_CONTENT
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening address={}", listener.local_addr()?)?;
    stdout.flush()?;
    axum::serve(listener, Router::new().fallback(sink)).await
}
