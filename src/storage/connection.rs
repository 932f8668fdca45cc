//! How every SQLite connection is set up.

use crate::config::Synchronous;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const WRITER_CACHE_KIB: i64 = 16 * 1024;

fn common(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A small page cache per connection keeps the resident size low; the OS caches the file.
    conn.pragma_update(None, "cache_size", -4096)?;
    Ok(())
}

/// The single writer: WAL, so readers never wait for it, and the durability the operator chose.
pub fn open_writer(path: &Path, synchronous: Synchronous) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    common(&conn)?;
    // The writer touches index pages all over the file; a larger cache saves re-reading them.
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let level = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    // Each delivery runs in its own savepoint: keep the savepoint and statement journals in
    // memory (a few pages per delivery) instead of temporary files, which tripled the bytes
    // the writer wrote.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
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
