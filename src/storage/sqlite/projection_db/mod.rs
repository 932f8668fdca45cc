//! The projection's own database file, attached to every connection as `projection`.
//!
//! The event log (the main file) is the only thing synced when deliveries commit. The customer
//! projection is derived from it: it lives in a second file, written in the same transaction
//! but committed after the log and never synced while the daemon runs (WAL with
//! `synchronous = OFF`), and it records the id of the newest log event it reflects.
//!
//! - A killed process loses nothing the operating system was handed, so the projection is
//!   consistent, though its last commit may be missing. Whenever it is behind the log (at
//!   start-up after a crash, or after a batch whose log committed but whose projection did
//!   not), the writer catches it up by applying the log's applied events past that position,
//!   through the same rules and with the same ids as when they arrived, so it ends as it would
//!   have.
//! - An operating system that stopped (power cut, kernel crash) may have lost unsynced writes
//!   anywhere in the file. The projection records the boot it runs under and is synced when the
//!   daemon stops cleanly; a projection left unclean under another boot is emptied and caught up
//!   from the start of the log.
//! - A projection that claims a position beyond the log (the log was restored from an older
//!   copy) is emptied and caught up from the start too.

use super::projection::CustomerProjection;
use crate::storage::delivery::{parse_stored, prepare};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::path::{Path, PathBuf};

/// The schema name the projection file is attached under.
pub const SCHEMA: &str = "projection";
/// Bumped whenever `schema.sql` changes: a file of another version is created again.
const SCHEMA_VERSION: i64 = 1;
const SCHEMA_SQL: &str = include_str!("schema.sql");
/// Applied events replayed per transaction while catching up, so that a long catch-up keeps its
/// progress if it is interrupted and its WAL stays small.
const CATCH_UP_CHUNK: usize = 4096;

/// The projection file beside the event log at `log`: `events.db` keeps its projection in
/// `events.db-projection` (and SQLite its journals in `-wal` and `-shm` files beside each).
pub fn path_of(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push("-projection");
    PathBuf::from(name)
}

/// Attaches the projection file of the database `conn` opened at `log`.
pub fn attach(conn: &Connection, log: &Path) -> rusqlite::Result<()> {
    let path = path_of(log);
    let path = path
        .to_str()
        .ok_or_else(|| rusqlite::Error::InvalidPath(path.clone()))?;
    conn.execute("ATTACH DATABASE ?1 AS projection", [path])?;
    Ok(())
}

/// Creates the projection's tables in the attached file unless it already holds this schema
/// version; a file of another version is emptied first and will be caught up from the start.
pub fn prepare_schema(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(Some(SCHEMA), "user_version", |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version != 0 {
        tracing::warn!(
            found = version,
            expected = SCHEMA_VERSION,
            "the projection file has another schema version: creating it again from the log"
        );
    }
    create_schema(conn)
}

/// Drops whatever the projection file holds and creates this version's empty tables, at
/// position 0.
fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM projection.sqlite_master WHERE type = 'table'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let tx = conn.unchecked_transaction()?;
    for table in tables {
        tx.execute_batch(&format!("DROP TABLE projection.\"{table}\""))?;
    }
    tx.execute_batch(SCHEMA_SQL)?;
    tx.pragma_update(Some(SCHEMA), "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// Where the running kernel says which boot this is (Linux).
const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

fn boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID_FILE)
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// Starts a run of the writer: empties a projection that an operating-system stop may have
/// damaged (see the module's documentation), then records, synced, that this boot's run has not
/// stopped cleanly yet. Returns whether the projection was emptied.
pub fn begin_run(conn: &Connection) -> rusqlite::Result<bool> {
    let (recorded, clean): (Option<String>, bool) = conn.query_row(
        "SELECT boot_id, clean FROM projection.state WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let current = boot_id();
    let trusted = clean || (recorded.is_some() && recorded == current);
    if !trusted {
        tracing::warn!(
            "the daemon did not stop cleanly before the operating system last stopped: the \
             projection may have lost writes, building it again from the log"
        );
        create_schema(conn)?;
    }
    with_synced_commits(conn, |conn| {
        conn.execute(
            "UPDATE projection.state SET boot_id = ?1, clean = 0 WHERE id = 1",
            [current],
        )
        .map(drop)
    })?;
    Ok(!trusted)
}

/// Ends a run of the writer: marks the projection clean and checkpoints it, both synced, so
/// that the next run trusts it whatever happens to the operating system meanwhile.
pub fn end_run(conn: &Connection) -> rusqlite::Result<()> {
    with_synced_commits(conn, |conn| {
        conn.execute("UPDATE projection.state SET clean = 1 WHERE id = 1", [])?;
        conn.query_row("PRAGMA projection.wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
    })
}

/// Runs `work` with the projection's commits and checkpoints synced.
fn with_synced_commits(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    conn.pragma_update(Some(SCHEMA), "synchronous", "FULL")?;
    let result = work(conn);
    conn.pragma_update(Some(SCHEMA), "synchronous", "OFF")?;
    result
}

/// The id of the newest log event the projection reflects.
pub fn position(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT log_position FROM projection.state WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()
        .map(Option::unwrap_or_default)
}

/// Records that the projection reflects the log up to event `event_id`, in the caller's
/// transaction.
pub fn set_position(conn: &Connection, event_id: i64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE projection.state SET log_position = ?1 WHERE id = 1")?
        .execute([event_id])?;
    Ok(())
}

fn newest_event(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("SELECT COALESCE(MAX(id), 0) FROM events")?
        .query_row([], |r| r.get(0))
}

/// What a catch-up did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CatchUp {
    /// Applied events replayed into the projection.
    pub replayed: u64,
    /// Applied events skipped: their body was pruned, or no longer parses.
    pub skipped: u64,
    /// The projection claimed a position beyond the log and was emptied first.
    pub was_ahead: bool,
}

/// Brings the projection level with the log; see the module's documentation. Each chunk of
/// events is committed with the position it reaches.
pub fn catch_up(conn: &mut Connection) -> rusqlite::Result<CatchUp> {
    let mut report = CatchUp::default();
    let newest = newest_event(conn)?;
    let mut position = position(conn)?;
    if position > newest {
        tracing::warn!(
            projection = position,
            log = newest,
            "the projection reflects events the log does not hold (was the database restored \
             from a copy?): building it again from the log"
        );
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch("DELETE FROM projection.customers")?;
        set_position(&tx, 0)?;
        tx.commit()?;
        report.was_ahead = true;
        position = 0;
    }
    if position == newest {
        return Ok(report);
    }
    tracing::info!(
        from = position,
        to = newest,
        "catching the projection up with the event log"
    );
    while position < newest {
        position = catch_up_chunk(conn, position, newest, &mut report)?;
    }
    tracing::info!(
        replayed = report.replayed,
        skipped = report.skipped,
        "the projection is level with the event log"
    );
    Ok(report)
}

/// Applies up to [`CATCH_UP_CHUNK`] applied events after `after` (up to `newest`) and commits
/// them with the position reached; returns that position.
fn catch_up_chunk(
    conn: &mut Connection,
    after: i64,
    newest: i64,
    report: &mut CatchUp,
) -> rusqlite::Result<i64> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let projection = CustomerProjection;
    let mut reached = newest;
    {
        let mut statement = tx.prepare_cached(
            "SELECT id, body, source FROM events
             WHERE id > ?1 AND id <= ?2 AND status = 'applied'
             ORDER BY id LIMIT ?3",
        )?;
        let mut rows = statement.query((after, newest, CATCH_UP_CHUNK as i64))?;
        let mut seen = 0;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let body: Option<Vec<u8>> = row.get(1)?;
            let source: String = row.get(2)?;
            seen += 1;
            if seen == CATCH_UP_CHUNK {
                reached = id;
            }
            // A pruned body was superseded by one retention kept (see `events::prune_bodies`).
            let Some(body) = body else {
                report.skipped += 1;
                continue;
            };
            let Ok(event) = parse_stored(&body, &source) else {
                report.skipped += 1;
                continue;
            };
            let (_, encoded) = prepare(&body, Some(&event));
            projection.apply(&tx, id, &event, &encoded)?;
            report.replayed += 1;
        }
    }
    set_position(&tx, reached)?;
    tx.commit()?;
    Ok(reached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::sqlite::test_support::TestDb;

    fn projected(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM customers", [], |r| r.get(0))
            .unwrap()
    }

    fn left_running(conn: &Connection, boot: Option<&str>) {
        conn.execute_batch("INSERT OR REPLACE INTO customers (id, snapshot) VALUES ('c', '{}')")
            .unwrap();
        conn.execute(
            "UPDATE projection.state SET boot_id = ?1, clean = 0, log_position = 0",
            [boot],
        )
        .unwrap();
    }

    #[test]
    fn a_projection_left_running_under_this_boot_is_kept_and_one_of_another_boot_is_emptied() {
        let db = TestDb::new();
        let conn = db.connect();
        left_running(&conn, boot_id().as_deref());
        assert!(!begin_run(&conn).unwrap(), "a killed process loses nothing");
        assert_eq!(projected(&conn), 1);

        left_running(&conn, Some("another boot"));
        assert!(begin_run(&conn).unwrap());
        assert_eq!(projected(&conn), 0);
        let (boot, clean): (Option<String>, bool) = conn
            .query_row("SELECT boot_id, clean FROM projection.state", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((boot, clean), (boot_id(), false), "this run is recorded");
    }

    #[test]
    fn a_projection_that_stopped_cleanly_is_kept_under_any_boot() {
        let db = TestDb::new();
        let conn = db.connect();
        left_running(&conn, Some("another boot"));
        end_run(&conn).unwrap();
        assert!(!begin_run(&conn).unwrap());
        assert_eq!(projected(&conn), 1);
    }
}
