//! A string that cannot be printed: its `Debug` and `Display` are redacted, and the value is
//! reachable only through [`Secret::expose`], called where it is compared. Also the decoding of
//! `whsec_` signing secrets, shared by configuration checks and signature verification.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use std::fmt;

const HMAC_SECRET_PREFIX: &str = "whsec_";

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub fn decode_hmac_secret(secret: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = secret
        .strip_prefix(HMAC_SECRET_PREFIX)
        .ok_or("must start with whsec_")?;
    let key = BASE64
        .decode(encoded)
        .map_err(|_| "must be base64 after whsec_")?;
    if key.is_empty() {
        return Err("must not be empty");
    }
    Ok(key)
}

#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The bytes are overwritten before the memory is given back, so that a freed secret does not
/// linger on the heap.
impl Drop for Secret {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.iter_mut().for_each(|b| *b = 0);
        // Keeps the compiler from dropping the writes as dead stores.
        std::hint::black_box(&bytes);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_prints_redacted() {
        let secret = Secret::new("s3cr3t");
        assert_eq!(
            format!("{secret:?} {secret}"),
            "Secret([redacted]) [redacted]"
        );
        assert_eq!(secret.expose(), "s3cr3t");
    }
}
