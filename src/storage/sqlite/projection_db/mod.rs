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

use super::events;
use super::projection::CustomerProjection;
use crate::storage::StorageError;
use crate::storage::delivery::{parse_stored, prepare};
use crate::storage::model::RebuildReport;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
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

/// Brings the projection level with the log; see the module's documentation. Each chunk of
/// events is committed with the position it reaches.
pub fn catch_up(conn: &mut Connection) -> rusqlite::Result<()> {
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
        empty(&tx)?;
        tx.commit()?;
        position = 0;
    }
    if position == newest {
        return Ok(());
    }
    tracing::info!(
        from = position,
        to = newest,
        "catching the projection up with the event log"
    );
    let mut report = RebuildReport::default();
    while position < newest {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        position = replay(&tx, position, newest, CATCH_UP_CHUNK, &mut report, &|_| {})?;
        set_position(&tx, position)?;
        tx.commit()?;
    }
    if !report.skipped_unparsable.is_empty() {
        tracing::warn!(
            events = ?report.skipped_unparsable,
            "applied events whose stored bodies no longer parse were left out of the projection"
        );
    }
    tracing::info!(
        replayed = report.replayed,
        "the projection is level with the event log"
    );
    Ok(())
}

/// Empties the projection, its dedupe index and its list of events by customer: the state
/// before the first event, at position 0.
fn empty(tx: &Connection) -> rusqlite::Result<()> {
    tx.execute_batch(
        "DELETE FROM projection.customers;
         DELETE FROM projection.dedupe_keys;
         DELETE FROM projection.customer_events;",
    )?;
    set_position(tx, 0)
}

/// Replays the log after event `after`, up to event `until` and at most `limit` events, into the
/// projection: each event's dedupe key is claimed again and its customer listed again, and each
/// applied event applied again, in the order and with the ids they arrived with. From the start
/// (`after` 0), the keys claimed before events kept their own in their rows are put back first. Applied events whose body was pruned are
/// passed (retention kept the bodies that superseded them; see `events::prune_bodies`); those
/// whose body no longer parses are passed and reported. Returns the id reached.
fn replay(
    tx: &Connection,
    after: i64,
    until: i64,
    limit: usize,
    report: &mut RebuildReport,
    progress: &dyn Fn(u64),
) -> rusqlite::Result<i64> {
    let projection = CustomerProjection;
    let mut statement = tx.prepare_cached(
        "SELECT id, status = 'applied', dedupe_key, customer_id FROM events
         WHERE id > ?1 AND id <= ?2 ORDER BY id LIMIT ?3",
    )?;
    let mut claim = tx.prepare_cached(
        "INSERT INTO projection.dedupe_keys (key, event_id) VALUES (?1, ?2)
         ON CONFLICT DO NOTHING",
    )?;
    // SQLite reads a negative limit as none.
    let limit_sql = i64::try_from(limit).unwrap_or(-1);
    if after == 0 {
        // Keys claimed before events kept their own come first: they belong to the oldest events.
        tx.execute_batch(
            "INSERT OR IGNORE INTO projection.dedupe_keys (key, event_id)
                 SELECT key, event_id FROM main.earlier_dedupe_keys",
        )?;
    }
    let mut rows = statement.query((after, until, limit_sql))?;
    let mut seen = 0;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        seen += 1;
        if let Some(key) = row.get_ref(2)?.as_blob_or_null()? {
            claim.execute(params![key, id])?;
        }
        if let Some(customer) = row.get_ref(3)?.as_str_or_null()? {
            events::list_by_customer(tx, customer, id)?;
        }
        if row.get::<_, bool>(1)? {
            apply_logged(tx, &projection, id, report)?;
            if report.replayed % PROGRESS_EVERY == 0 {
                progress(report.replayed);
            }
        }
        if seen == limit {
            return Ok(id);
        }
    }
    Ok(until)
}

/// Applies logged event `id` to the projection again, unless its body was pruned or no longer
/// parses (reported).
fn apply_logged(
    tx: &Connection,
    projection: &CustomerProjection,
    id: i64,
    report: &mut RebuildReport,
) -> rusqlite::Result<()> {
    let Some((body, source)) = stored_body(tx, id)? else {
        return Ok(());
    };
    let Ok(event) = parse_stored(&body, &source) else {
        report.skipped_unparsable.push(id);
        return Ok(());
    };
    let (_, encoded) = prepare(&body, Some(&event));
    projection.apply(tx, id, &event, &encoded)?;
    report.replayed += 1;
    Ok(())
}

/// The body of event `id` and its source, unless pruned.
fn stored_body(tx: &Connection, id: i64) -> rusqlite::Result<Option<(Vec<u8>, String)>> {
    tx.prepare_cached("SELECT body, source FROM events WHERE id = ?1 AND body IS NOT NULL")?
        .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

/// Applied events replayed between two progress reports of a rebuild.
const PROGRESS_EVERY: u64 = 1024;

/// Recomputes the projection and the dedupe index from the event log alone, in one
/// transaction. Statuses in the log are history and stay as they are.
///
/// Retention keeps every body the projection rests on (see `events::prune_bodies`), so the
/// replay reproduces the live projection: each customer's current snapshot, latest Experian
/// check and merge are among the replayed bodies, and an older body that was pruned had been
/// superseded by one of them. (This holds because rule 2 orders one customer's snapshots
/// totally when they all carry revisions, as Rebilly's do, or all lack them; a history mixing
/// both is not transitive, and pruning its middle could let a rebuild order it differently.)
/// Dedupe keys are kept in the log rows, pruned or not, so the index comes back whole. A body
/// that no longer parses fails the rebuild (nothing changes) unless `skip_unparsable` allows
/// leaving it out; either way its id is reported. `progress` is told (events replayed, events
/// to replay) as the replay goes.
pub fn rebuild(
    conn: &mut Connection,
    skip_unparsable: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<RebuildReport, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let missing = events::pruned_foundations(&tx)?;
    RebuildReport::check_foundations(&missing)?;
    let newest = newest_event(&tx)?;
    let to_replay: u64 = tx.query_row(
        "SELECT COUNT(*) FROM events WHERE status = 'applied' AND body IS NOT NULL",
        [],
        |r| r.get(0),
    )?;
    progress(0, to_replay);
    empty(&tx)?;
    let mut report = RebuildReport::default();
    replay(&tx, 0, newest, usize::MAX, &mut report, &|replayed| {
        progress(replayed, to_replay)
    })?;
    progress(report.replayed, to_replay);
    set_position(&tx, newest)?;
    // On an error, dropping the transaction rolls back: the projection stays as it was.
    let report = report.checked(skip_unparsable)?;
    tx.commit()?;
    Ok(report)
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
    fn a_projection_caught_up_from_the_start_gets_back_the_keys_claimed_before_rows_kept_them() {
        let db = TestDb::new();
        let mut conn = db.connect();
        conn.execute_batch(
            "INSERT INTO events (id, received_ms, status, body_size) VALUES (1, 1, 'ignored', 0);
             INSERT INTO earlier_dedupe_keys (key, event_id) VALUES (x'01', 1), (x'02', 1);
             UPDATE projection.state SET log_position = 0;",
        )
        .unwrap();
        catch_up(&mut conn).unwrap();
        let keys: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM projection.dedupe_keys WHERE event_id = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(keys, 2);
        assert_eq!(position(&conn).unwrap(), 1);
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
