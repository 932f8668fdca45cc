//! The event log's checkpoints, on a thread of their own, so that no delivery waits for one.
//!
//! A checkpoint copies the pages of the write-ahead log back into the database file and syncs
//! it. Run by the writer (SQLite's automatic checkpoint, every 16 MiB), the log's held up every
//! delivery behind it for as long as that took: most of the tail latency. Here a second
//! connection checkpoints the log while deliveries commit; the writer keeps a checkpoint of its
//! own only as a backstop (see `connection`). The projection is not synced, so its checkpoints
//! are quick, and the writer runs them (`connection` says why).

use super::connection::{self, WriterOptions};
use std::time::Duration;
use tokio::sync::watch;

/// How often the log is checkpointed while deliveries arrive. Measured (bench/durable.sh)
/// against 16 MiB checkpoints by the writer: the p99 under load halved and the bytes written
/// per delivery stayed the same.
const INTERVAL: Duration = Duration::from_millis(100);

/// Starts the checkpointer; it stops once the writer has gone (`committed` closed).
pub fn spawn(
    options: WriterOptions,
    committed: watch::Receiver<i64>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("sqlite-checkpointer".into())
        .spawn(move || run(&options, committed))
}

fn run(options: &WriterOptions, mut committed: watch::Receiver<i64>) {
    let conn = match connection::open_writer(options) {
        Ok(conn) => conn,
        Err(error) => {
            tracing::warn!(
                error = %error,
                "the checkpointer could not open the database; the writer checkpoints instead"
            );
            return;
        }
    };
    loop {
        std::thread::sleep(INTERVAL);
        match committed.has_changed() {
            Err(_) => return,
            Ok(false) => continue,
            Ok(true) => committed.mark_unchanged(),
        }
        // A checkpoint that fails (a full disk) is tried again next time; the writer's error
        // path deals with a disk that stays full.
        if let Err(error) = conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %error, "a background checkpoint of the log failed");
        }
    }
}
