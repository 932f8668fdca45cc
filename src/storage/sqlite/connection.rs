//! How every SQLite connection is set up.

use super::projection_db;
use crate::config::{StorageSettings, Synchronous};
use rusqlite::hooks::Wal;
use rusqlite::{Connection, OpenFlags};
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::time::Duration;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The writer's page cache for the event log, and for the projection: the log's changes are
/// mostly appends, the projection's land all over its indexes.
const WRITER_LOG_CACHE_KIB: i64 = 6 * 1024;
const WRITER_PROJECTION_CACHE_KIB: i64 = 10 * 1024;
/// The page size of a new database. Each delivery changes one leaf in each of about a dozen
/// B-trees at random places, and SQLite writes every changed page whole to the WAL (then once
/// more when it checkpoints), so the bytes a delivery costs on disk grow with the page size.
/// Measured on one delivery at a time (bench/README.md): 4096-byte pages append 17.5 pages,
/// 72 KB, to the WAL per delivery; 2048 bytes 20.7 pages, 43 KB; 1024 bytes 26.6 pages, 28 KB.
/// A database keeps the page size it was created with.
const NEW_DATABASE_PAGE_SIZE: i64 = 1024;
/// The page size of a new projection file: a customer's snapshot (about 1.5 KB) fits in one
/// page with room to spare, where smaller pages spread each row over overflow pages.
const NEW_PROJECTION_PAGE_SIZE: i64 = 4096;
/// Pages in the event log's WAL at which the writer checkpoints it itself: a backstop only, as
/// the checkpointer thread keeps the log far smaller (see `checkpointer`). 64 MiB of new pages.
const LOG_BACKSTOP_CHECKPOINT_PAGES: c_int = 65_536;
/// Pages in the projection's WAL at which the writer checkpoints it (4 MiB of new pages).
/// Nothing of the projection is synced, so this checkpoint only hands pages to the operating
/// system; run by the writer, it completes, and the WAL starts over from its beginning, on
/// pages still in memory. Measured with bench/durable.sh, one delivery at a time: 64 MiB wrote
/// 26 KB per delivery with a p99 of 7 ms, 16 MiB 21 KB and 6 ms, 4 MiB 18 KB and 3 ms. Run on
/// the checkpointer thread instead, it never completed while deliveries committed, the WAL
/// only grew, and the bytes written tripled.
const PROJECTION_CHECKPOINT_PAGES: c_int = 1024;
/// After a checkpoint resets it, the WAL file is truncated back to this size.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

fn common(conn: &Connection, log: &Path) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    projection_db::attach(conn, log)?;
    // A small page cache per connection keeps the resident size low; the OS caches the file.
    conn.pragma_update(None, "cache_size", -1024)?;
    conn.pragma_update(Some(projection_db::SCHEMA), "cache_size", -1024)?;
    Ok(())
}

/// What the writer's connection is opened with; kept by the writer, which reopens its
/// connection if a failed commit leaves it unusable.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub path: PathBuf,
    pub synchronous: Synchronous,
    /// Largest database size in bytes; 0 for no cap.
    pub max_size_bytes: u64,
}

impl WriterOptions {
    pub fn new(settings: &StorageSettings) -> Self {
        Self {
            path: settings.path.clone(),
            synchronous: settings.synchronous,
            max_size_bytes: settings.max_size_bytes,
        }
    }
}

/// The single writer: WAL, so readers never wait for it, and the durability the operator chose.
pub fn open_writer(options: &WriterOptions) -> rusqlite::Result<Connection> {
    let conn = Connection::open(&options.path)?;
    common(&conn, &options.path)?;
    // The writer touches index pages all over the files; a larger cache saves re-reading them.
    conn.pragma_update(None, "cache_size", -WRITER_LOG_CACHE_KIB)?;
    conn.pragma_update(
        Some(projection_db::SCHEMA),
        "cache_size",
        -WRITER_PROJECTION_CACHE_KIB,
    )?;
    // Before the journal mode: switching to WAL writes the first page of a new database.
    conn.pragma_update(None, "page_size", NEW_DATABASE_PAGE_SIZE)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous_level(options.synchronous))?;
    open_projection(&conn)?;
    // Replaces SQLite's automatic checkpoint, which knows one size for every attached file.
    conn.wal_hook(Some(checkpoint_when_due));
    // A batch run again with a savepoint per delivery, and statement journals: kept in memory
    // (a few pages per delivery) instead of temporary files, which tripled the bytes the
    // writer wrote when every delivery had its savepoint.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    cap_size(&conn, options.max_size_bytes)?;
    Ok(conn)
}

/// Called after each commit with the pages in that file's WAL.
fn checkpoint_when_due(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    let due = if wal.name().to_bytes() == projection_db::SCHEMA.as_bytes() {
        PROJECTION_CHECKPOINT_PAGES
    } else {
        LOG_BACKSTOP_CHECKPOINT_PAGES
    };
    if pages >= due {
        // As SQLite's own automatic checkpoint: a checkpoint that cannot finish now (a reader
        // in the way, a full disk) is tried again after the next commit.
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// The projection file: WAL like the log, but nothing is synced while the daemon runs (see
/// [`projection_db`]).
fn open_projection(conn: &Connection) -> rusqlite::Result<()> {
    let schema = Some(projection_db::SCHEMA);
    conn.pragma_update(schema, "page_size", NEW_PROJECTION_PAGE_SIZE)?;
    conn.pragma_update(schema, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)?;
    conn.pragma_update(schema, "journal_mode", "WAL")?;
    conn.pragma_update(schema, "synchronous", "OFF")?;
    Ok(())
}

/// Caps the database at `max_bytes` (whole pages; at least its current size, as SQLite never
/// shrinks the cap below it). Writes past it fail with `SQLITE_FULL`, the error of a full
/// disk, and take the same path: 503, nothing acknowledged, and writes succeed again once
/// pruning puts pages back on the free list.
fn cap_size(conn: &Connection, max_bytes: u64) -> rusqlite::Result<()> {
    if max_bytes == 0 {
        return Ok(());
    }
    let page_size: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
    let pages = (max_bytes / page_size.max(1)).max(1);
    // SQLite answers with the cap it set, never below the current size.
    let set: u64 = conn.pragma_update_and_check(None, "max_page_count", pages, |r| r.get(0))?;
    if set > pages {
        tracing::warn!(
            size_bytes = set * page_size,
            max_size_bytes = max_bytes,
            "the database is already larger than storage.max_size_bytes: deliveries are \
             refused until pruning frees room"
        );
    }
    Ok(())
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
    common(&conn, path)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(path: PathBuf, max_size_bytes: u64) -> WriterOptions {
        WriterOptions {
            path,
            synchronous: Synchronous::Normal,
            max_size_bytes,
        }
    }

    #[test]
    fn past_the_cap_a_write_fails_as_on_a_full_disk_and_deleting_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("capped.db");
        let conn = open_writer(&options(path.clone(), 0)).unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB); INSERT INTO t VALUES (zeroblob(2097152));")
            .unwrap();
        drop(conn);
        // A cap below the current size holds the file at its size.
        let conn = open_writer(&options(path, 1024 * 1024)).unwrap();
        let error = conn
            .execute("INSERT INTO t VALUES (zeroblob(65536))", [])
            .unwrap_err();
        assert_eq!(
            error.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull)
        );
        conn.execute("DELETE FROM t", []).unwrap();
        conn.execute("INSERT INTO t VALUES (zeroblob(65536))", [])
            .expect("freed pages are reused under the cap");
    }

    /// Frames in the WAL of `schema`, as a passive checkpoint reports them.
    fn wal_frames(conn: &Connection, schema: &str) -> i64 {
        conn.query_row(
            &format!("PRAGMA {schema}.wal_checkpoint(PASSIVE)"),
            [],
            |r| r.get(1),
        )
        .unwrap()
    }

    #[test]
    fn the_writer_checkpoints_the_projection_in_small_steps_and_leaves_the_log_to_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open_writer(&options(dir.path().join("hook.db"), 0)).unwrap();
        conn.execute_batch("CREATE TABLE projection.t (b BLOB); CREATE TABLE main.t (b BLOB);")
            .unwrap();
        // About 1,600 projection pages and 3,200 log pages, in commits of a few pages each.
        for _ in 0..400 {
            conn.execute_batch(
                "INSERT INTO projection.t VALUES (zeroblob(16000));
                 INSERT INTO main.t VALUES (zeroblob(6000));",
            )
            .unwrap();
        }
        let projection = wal_frames(&conn, projection_db::SCHEMA);
        assert!(
            projection < i64::from(PROJECTION_CHECKPOINT_PAGES),
            "the projection's WAL started over: {projection} frames"
        );
        let log = wal_frames(&conn, "main");
        assert!(
            log > 2 * i64::from(PROJECTION_CHECKPOINT_PAGES),
            "{log} frames"
        );
    }

    fn page_size(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_new_database_takes_small_pages_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = open_writer(&options(dir.path().join("new.db"), 0)).unwrap();
        fresh.execute_batch("CREATE TABLE t (x)").unwrap();
        assert_eq!(page_size(&fresh), NEW_DATABASE_PAGE_SIZE);

        let path = dir.path().join("released.db");
        let released = Connection::open(&path).unwrap();
        released
            .execute_batch(
                "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x);",
            )
            .unwrap();
        drop(released);
        let reopened = open_writer(&options(path, 0)).unwrap();
        assert_eq!(page_size(&reopened), 4096);
    }
}
