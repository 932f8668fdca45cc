//! Errors as `application/problem+json` (RFC 9457). Client errors say what to fix and name the
//! offending field; server errors are opaque and their cause is logged instead.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem document; boxed so that `Result<_, Problem>` stays small.
#[derive(Debug, Clone)]
pub struct Problem(Box<Document>);

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
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

    /// An internal failure: logged with its cause, answered without it.
    pub fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %error, "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal Server Error",
            "the request could not be completed; the cause is in the daemon's log",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service Unavailable",
            detail,
        )
        .with_header(header::RETRY_AFTER, "1")
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
            StorageError::Sqlite(_)
            | StorageError::Migration(_)
            | StorageError::Io(_)
            | StorageError::Join(_)
            | StorageError::Incomplete(_)
            | StorageError::Commit(_) => Self::internal(&error),
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
