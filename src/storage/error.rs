//! Storage errors, classified once: a condition of the storage that passes (the sender is told
//! to retry) or a defect.

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the writer queue is full")]
    Overloaded,
    #[error("the storage writer has stopped")]
    WriterGone,
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("no PostgreSQL connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// Driver errors are not `Clone` either: a failed PostgreSQL batch reaches every request of
    /// the batch as its message and its classification.
    #[error("the batch could not be committed: {message}")]
    PostgresBatch { transient: bool, message: String },
    /// The PostgreSQL connection settings cannot be used; the message names the key (and
    /// never shows the URL).
    #[error("{0}")]
    Settings(String),
    #[error("database migration failed: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    #[error("cannot prepare the database folder: {0}")]
    Io(#[from] std::io::Error),
    #[error("a blocking database task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Incomplete(String),
    /// Another daemon took over a handler during a pass: the pass's results were dropped, and
    /// the daemon now working the handler delivers those events again.
    #[error("handler `{0}` was taken over by another daemon; this pass's results were dropped")]
    LeaseLost(String),
    /// rusqlite errors are not `Clone`: a failed commit reaches every request of its batch as
    /// its message and SQLite's code, which is what classifies it.
    #[error("the batch could not be committed: {message}")]
    Commit {
        code: Option<rusqlite::ErrorCode>,
        message: String,
    },
}

impl StorageError {
    /// A failed batch commit, for every request of the batch.
    pub(super) fn commit(error: &rusqlite::Error) -> Self {
        Self::Commit {
            code: error.sqlite_error_code(),
            message: error.to_string(),
        }
    }

    /// Whether the same request can succeed later with nothing changed but the state of the
    /// storage (space freed, a lock released, the queue drained): a sender is told to retry
    /// (503) rather than that the daemon failed (500). Nothing was stored either way.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Overloaded | Self::WriterGone => true,
            Self::Sqlite(error) => is_transient_code(error.sqlite_error_code()),
            Self::Commit { code, .. } => is_transient_code(*code),
            // Only opening the database touches the file system directly.
            Self::Io(error) => matches!(
                error.kind(),
                std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
                    | std::io::ErrorKind::ResourceBusy
                    | std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
            ),
            Self::Postgres(error) => is_transient_postgres(error),
            Self::Pool(error) => is_transient_pool(error),
            Self::PostgresBatch { transient, .. } => *transient,
            Self::Migration(_) | Self::Join(_) | Self::Incomplete(_) | Self::Settings(_) => false,
            Self::LeaseLost(_) => false,
        }
    }

    /// The same failure for each request of a batch: its message and classification.
    pub(super) fn for_each_request(&self) -> Self {
        Self::PostgresBatch {
            transient: self.is_transient(),
            message: self.to_string(),
        }
    }

    /// A conflict between concurrent transactions that PostgreSQL resolved by aborting this
    /// one: running the same transaction again succeeds.
    pub(super) fn is_conflict(&self) -> bool {
        let code = match self {
            Self::Postgres(error) => error.code(),
            Self::Pool(deadpool_postgres::PoolError::Backend(error)) => error.code(),
            _ => None,
        };
        code.is_some_and(is_conflict_state)
    }
}

fn is_conflict_state(code: &SqlState) -> bool {
    *code == SqlState::T_R_DEADLOCK_DETECTED || *code == SqlState::T_R_SERIALIZATION_FAILURE
}

use tokio_postgres::error::SqlState;

/// PostgreSQL conditions that pass: the connection lost or refused (the server restarting,
/// a network outage), the server shutting down or starting up, out of connections, disk or
/// memory, a failover that left this session on a read-only standby, and conflicts between
/// transactions that outlived the writer's own retries. Constraint, syntax and data errors
/// are defects: the same request would fail again.
fn is_transient_postgres(error: &tokio_postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            let class = &code.code()[..2];
            // 08: connection exception; 53: insufficient resources (disk full 53100, out of
            // memory 53200, too many connections 53300); 57P0x: shutdown, crash, cannot
            // connect now; 58: system errors such as I/O.
            matches!(class, "08" | "53" | "58")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || is_conflict_state(code)
        }
        // No SQLSTATE: the driver failed before or beside the server (connection refused or
        // reset, a TLS handshake, a timeout); only an I/O error underneath is passing.
        None => has_io_source(error),
    }
}

fn has_io_source(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}

fn is_transient_pool(error: &deadpool_postgres::PoolError) -> bool {
    use deadpool_postgres::PoolError;
    match error {
        // Every connection busy, or connecting took too long: the database is overloaded or
        // unreachable for now.
        PoolError::Timeout(_) | PoolError::Closed => true,
        PoolError::Backend(error) => is_transient_postgres(error),
        PoolError::PostCreateHook(_) | PoolError::NoRuntimeSpecified => false,
    }
}

/// SQLite's primary codes for conditions of the storage that pass: a full disk or database
/// cap, an I/O error while writing (such as a file system briefly unavailable), the database
/// locked by another process past `busy_timeout`, memory, a file that could not be opened or
/// was made read-only (an operator fixes these without the sender changing anything). The
/// others are defects of the request, the schema or the file, and retrying cannot help.
fn is_transient_code(code: Option<rusqlite::ErrorCode>) -> bool {
    use rusqlite::ErrorCode as Code;
    let Some(code) = code else {
        // Not an error SQLite returned (a type conversion, a missing row): a defect.
        return false;
    };
    match code {
        Code::DiskFull
        | Code::SystemIoFailure
        | Code::DatabaseBusy
        | Code::DatabaseLocked
        | Code::OutOfMemory
        | Code::CannotOpen
        | Code::ReadOnly
        | Code::FileLockingProtocolFailed => true,
        Code::InternalMalfunction
        | Code::PermissionDenied
        | Code::OperationAborted
        | Code::OperationInterrupted
        | Code::DatabaseCorrupt
        | Code::NotFound
        | Code::SchemaChanged
        | Code::TooBig
        | Code::ConstraintViolation
        | Code::TypeMismatch
        | Code::ApiMisuse
        | Code::NoLargeFileSupport
        | Code::AuthorizationForStatementDenied
        | Code::ParameterOutOfRange
        | Code::NotADatabase
        | Code::Unknown => false,
        // `ErrorCode` is non-exhaustive: a code added by a later SQLite is treated as a defect
        // until it is classified here.
        _ => false,
    }
}
