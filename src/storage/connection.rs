//! How every SQLite connection is set up.

use crate::config::Synchronous;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const WRITER_CACHE_KIB: i64 = 16 * 1024;
const WRITER_CHECKPOINT_PAGES: i64 = 4 * 1024;
/// After a checkpoint resets it, the WAL file is truncated back to this size.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

fn common(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A small page cache per connection keeps the resident size low; the OS caches the file.
    conn.pragma_update(None, "cache_size", -2048)?;
    Ok(())
}

/// The single writer: WAL, so readers never wait for it, and the durability the operator chose.
pub fn open_writer(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    common(&conn)?;
    // The writer touches index pages all over the file; a larger cache saves re-reading them.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    // Checkpoints copy each distinct page once however often it changed in the WAL, so a WAL
    // larger than SQLite's default (1000 pages) costs less per event; but a checkpoint runs
    // inline and the deliveries behind it wait, so a larger one lengthens the tail. Measured
    // with bench/run.sh: 1000 pages ~6.9k/s p99 17 ms; 4096 ~7.8k/s p99 26 ms; 16384 ~8.2k/s
    // p99 43 ms; a background checkpoint thread ~9k/s p99 85 ms.
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous_level(synchronous))?;
    // Each delivery runs in its own savepoint: keep the savepoint and statement journals in
    // memory (a few pages per delivery) instead of temporary files, which tripled the bytes
    // the writer wrote.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

fn synchronous_level(synchronous: Synchronous) -> &'static str {
    match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    }
}

/// A reader: read-only, so a query can never take the write lock.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    common(&conn)?;
    Ok(conn)
}
