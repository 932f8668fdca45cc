//! A small pool of read-only connections, used from the blocking thread pool.

use super::{StorageError, connection};
use rusqlite::Connection;
use std::path::PathBuf;
use std::sync::Mutex;

/// Idle connections kept for reuse; more may be open while a burst of queries runs.
const MAX_IDLE: usize = 8;

pub struct Readers {
    path: PathBuf,
    // A std Mutex: it is held only to push or pop a connection, never across a query or an await.
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub fn with<R>(
        &self,
        work: impl FnOnce(&Connection) -> Result<R, StorageError>,
    ) -> Result<R, StorageError> {
        let pooled = self.idle.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => connection::open_reader(&self.path)?,
        };
        let result = work(&conn);
        let mut idle = self.idle.lock().expect("reader pool lock");
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        result
    }
}
