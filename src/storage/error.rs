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
            // Classified by the PostgreSQL backend's own rules.
            Self::Postgres(error) => error.is_closed(),
            Self::Migration(_) | Self::Join(_) | Self::Incomplete(_) => false,
            Self::LeaseLost(_) => false,
        }
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
