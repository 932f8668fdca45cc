//! Path parameters whose refusal is a problem document like every other error, instead of the
//! plain-text answer of axum's own extractor (an event id beyond `i64`, a non-UTF-8 name).

use super::problem::Problem;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, RawPathParams};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// `Path<T>`, refused with a problem that names the parameter.
pub struct PathParam<T>(pub T);

impl<S, T> FromRequestParts<S> for PathParam<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(rejection) => {
                let field = parameter_name(&rejection, parts, state).await;
                Err(Problem::new(
                    rejection.status(),
                    "invalid-path",
                    "Invalid path parameter",
                    rejection.body_text(),
                )
                .with_field(field))
            }
        }
    }
}

/// The parameter the rejection is about: named by the error when it can, else the route's
/// only parameter.
async fn parameter_name<S: Send + Sync>(
    rejection: &PathRejection,
    parts: &mut Parts,
    state: &S,
) -> Option<String> {
    if let PathRejection::FailedToDeserializePathParams(failed) = rejection
        && let ErrorKind::ParseErrorAtKey { key, .. }
        | ErrorKind::InvalidUtf8InPathParam { key }
        | ErrorKind::DeserializeError { key, .. } = failed.kind()
    {
        return Some(key.clone());
    }
    let raw = RawPathParams::from_request_parts(parts, state).await.ok()?;
    let mut names = raw.iter().map(|(name, _)| name.to_owned());
    match (names.next(), names.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    }
}
