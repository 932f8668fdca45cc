//! HTTP Basic credentials, what Rebilly's documentation recommends for webhooks.

use super::{AuthError, any_matches, sha256};
use crate::config::BasicCredential;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The accepted credentials, each kept as the SHA-256 of `username:password`, so that
/// comparisons have a fixed length and run in constant time whatever the candidate's length.
pub struct BasicVerifier(Vec<[u8; 32]>);

impl std::fmt::Debug for BasicVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BasicVerifier({} credentials, redacted)", self.0.len())
    }
}

impl BasicVerifier {
    pub fn new(credentials: &[BasicCredential]) -> Self {
        Self(
            credentials
                .iter()
                .map(|c| sha256(format!("{}:{}", c.username, c.password.expose()).as_bytes()))
                .collect(),
        )
    }

    /// `encoded`: what follows `Basic ` in `Authorization`, if the request sent Basic.
    pub fn verify(&self, encoded: Option<&str>) -> Result<(), AuthError> {
        let presented = encoded
            .and_then(|e| BASE64.decode(e).ok())
            .ok_or(AuthError::Basic)?;
        let candidate = sha256(&presented);
        if any_matches(&candidate, self.0.iter().map(|d| d.as_slice())) {
            Ok(())
        } else {
            Err(AuthError::Basic)
        }
    }
}
