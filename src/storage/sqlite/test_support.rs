//! Helpers for storage unit tests: a migrated database file, and writes that commit while a
//! reader is in the middle of its statements.

use super::{MIGRATIONS, projection_db};
use rusqlite::Connection;
use std::path::PathBuf;

/// A migrated database in its own temporary folder.
pub struct TestDb {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Writes committed by `write_at_every_step` at most, so that a long read still ends.
const MAX_WRITES: u32 = 200;

impl TestDb {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let mut conn = Connection::open(&path).unwrap();
        projection_db::attach(&conn, &path).unwrap();
        for schema in ["main", projection_db::SCHEMA] {
            conn.pragma_update(Some(schema), "journal_mode", "WAL")
                .unwrap();
        }
        projection_db::prepare_schema(&conn).unwrap();
        MIGRATIONS.to_latest(&mut conn).unwrap();
        Self { _dir: dir, path }
    }

    /// A connection to the log with the projection attached, as the store opens them.
    pub fn connect(&self) -> Connection {
        let conn = Connection::open(&self.path).unwrap();
        projection_db::attach(&conn, &self.path).unwrap();
        // Tests need no durability, and a sync per statement made them slow.
        for schema in ["main", projection_db::SCHEMA] {
            conn.pragma_update(Some(schema), "synchronous", "OFF")
                .unwrap();
        }
        conn
    }

    /// Commits `sql` on another connection at every step of the virtual machine `reader`
    /// runs from now on (up to a limit), as if a busy writer committed all along. Two
    /// statements of `reader` see the same rows only if they share one read transaction.
    pub fn write_at_every_step(&self, reader: &Connection, sql: &'static str) {
        // Load the schema first, so that the steps counted are those of the statements.
        reader
            .query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(()))
            .unwrap();
        let writer = self.connect();
        let mut writes = 0;
        reader.progress_handler(
            1,
            Some(move || {
                if writes < MAX_WRITES {
                    writes += 1;
                    writer.execute_batch(sql).unwrap();
                }
                false
            }),
        );
    }
}
