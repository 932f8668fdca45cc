//! Errors as `application/problem+json` (RFC 9457). Client errors say what to fix and name the
//! offending field; server errors are opaque and their cause is logged instead, at most one
//! line per interval (a failing disk fails every request, and the log is often on it).

use crate::log_limit::{self, LogLimit};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Server-side failures logged by requests, each kind at most once per interval.
static INTERNAL_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);
static STORAGE_UNAVAILABLE: LogLimit = LogLimit::new(log_limit::INTERVAL);

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem document; boxed so that `Result<_, Problem>` stays small.
#[derive(Debug, Clone)]
pub struct Problem(Box<Document>);

/// An RFC 9457 problem document, served as `application/problem+json`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Problem)]
pub(super) struct Document {
    /// A URN naming the kind of problem, such as `urn:rebilly-webhookd:problem:invalid-query`.
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    /// The HTTP status of the answer.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong and, for a client error, what to fix.
    detail: String,
    /// The offending body field or query parameter, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    field: Option<String>,
    /// The stored event, when a delivery was kept as rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    event_id: Option<i64>,
    #[serde(skip)]
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self(Box::new(Document {
            kind: format!("urn:rebilly-webhookd:problem:{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            event_id: None,
            headers: Vec::new(),
        }))
    }

    pub fn with_field(mut self, field: Option<String>) -> Self {
        self.0.field = field;
        self
    }

    pub fn with_event_id(mut self, event_id: i64) -> Self {
        self.0.event_id = Some(event_id);
        self
    }

    pub fn with_header(self, name: header::HeaderName, value: &'static str) -> Self {
        self.with_header_value(name, HeaderValue::from_static(value))
    }

    /// Adds a header; a name given several times is sent several times (such as one
    /// `WWW-Authenticate` per challenge).
    pub fn with_header_value(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not Found", detail)
    }

    pub fn bad_query(error: &crate::query::QueryError) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-query",
            "Invalid query",
            error.to_string(),
        )
        .with_field(Some(error.parameter.clone()))
    }

    /// An internal failure: logged with its cause (rate-limited), answered without it.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        if let Some(suppressed) = INTERNAL_FAILURES.admit() {
            tracing::error!(error = %error, suppressed, "request failed");
        }
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal Server Error",
            "the request could not be completed; the cause is in the daemon's log",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::unavailable_for(detail, "1")
    }

    /// 503 with `Retry-After: retry_after` seconds.
    fn unavailable_for(detail: impl Into<String>, retry_after: &'static str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service Unavailable",
            detail,
        )
        .with_header(header::RETRY_AFTER, retry_after)
    }

    /// Storage that cannot take a write for now (a full disk, a locked database): nothing was
    /// stored, and the same request will succeed once the storage does. The cause is logged
    /// (rate-limited), not answered. Retrying within a second rarely helps, hence the delay.
    fn storage_unavailable(error: &crate::storage::StorageError) -> Self {
        if let Some(suppressed) = STORAGE_UNAVAILABLE.admit() {
            tracing::warn!(error = %error, suppressed, "storage unavailable; answered 503");
        }
        Self::unavailable_for(
            "the daemon cannot store this request right now; nothing was stored, retry later",
            "5",
        )
    }
}

impl From<crate::storage::StorageError> for Problem {
    fn from(error: crate::storage::StorageError) -> Self {
        use crate::storage::StorageError;
        match error {
            StorageError::Overloaded => {
                Self::unavailable("the daemon is busy; retry after the indicated delay")
            }
            StorageError::WriterGone => Self::unavailable("the daemon is shutting down"),
            // Which errors pass is decided once, by the storage layer that knows its backends.
            _ if error.is_transient() => Self::storage_unavailable(&error),
            _ => Self::internal(&error),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        for (name, value) in self.0.headers {
            headers.append(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageError;
    use rusqlite::ffi;

    fn sqlite(code: std::ffi::c_int) -> StorageError {
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(ffi::Error::new(code), None))
    }

    #[test]
    fn a_full_disk_or_a_locked_database_is_503_with_retry_after_not_500() {
        for error in [
            sqlite(ffi::SQLITE_FULL),
            sqlite(ffi::SQLITE_IOERR_WRITE),
            sqlite(ffi::SQLITE_BUSY),
            sqlite(ffi::SQLITE_LOCKED),
            StorageError::Overloaded,
        ] {
            let shown = error.to_string();
            let response = Problem::from(error).into_response();
            assert_eq!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{shown}"
            );
            assert!(
                response.headers().contains_key(header::RETRY_AFTER),
                "{shown}"
            );
            assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        }
    }

    #[test]
    fn a_defect_is_500_and_its_cause_stays_out_of_the_answer() {
        let problem = Problem::from(sqlite(ffi::SQLITE_CONSTRAINT));
        assert_eq!(problem.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!problem.0.detail.contains("constraint"));
        assert!(problem.0.headers.is_empty());
    }
}
