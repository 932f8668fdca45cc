//! Standard Webhooks signatures (`webhook-id`, `webhook-timestamp`, `webhook-signature`), for
//! deliveries relayed through a signing gateway. The headers and the timestamp are checked before
//! the body is read, so an anonymous request costs no body read and no hashing.

use super::{AuthError, any_matches};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SIGNATURE_VERSION: &str = "v1,";

struct HmacKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for HmacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacKeys({} keys, redacted)", self.0.len())
    }
}

#[derive(Debug)]
pub struct HmacVerifier {
    keys: HmacKeys,
    tolerance_seconds: u64,
}

/// The three signature headers, present and readable.
struct Signed<'a> {
    id: &'a str,
    timestamp: &'a str,
    signatures: &'a str,
}

impl HmacVerifier {
    pub fn new(keys: Vec<Vec<u8>>, tolerance_seconds: u64) -> Self {
        Self {
            keys: HmacKeys(keys),
            tolerance_seconds,
        }
    }

    fn signed<'a>(&self, headers: &'a HeaderMap, now: i64) -> Result<Signed<'a>, AuthError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Signature)
        };
        let signed = Signed {
            id: text("webhook-id")?,
            timestamp: text("webhook-timestamp")?,
            signatures: text("webhook-signature")?,
        };
        let sent: i64 = signed
            .timestamp
            .trim()
            .parse()
            .map_err(|_| AuthError::Timestamp)?;
        if now.abs_diff(sent) > self.tolerance_seconds {
            return Err(AuthError::Timestamp);
        }
        Ok(signed)
    }

    /// What can be refused before the body is read: missing headers, a stale timestamp.
    pub fn precheck(&self, headers: &HeaderMap, now: i64) -> Result<(), AuthError> {
        self.signed(headers, now).map(|_| ())
    }

    pub fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), AuthError> {
        let signed = self.signed(headers, now)?;
        let presented: Vec<Vec<u8>> = signed
            .signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix(SIGNATURE_VERSION))
            .filter_map(|s| BASE64.decode(s).ok())
            .collect();
        let mut valid = false;
        for key in &self.keys.0 {
            let expected = sign(key, signed.id, signed.timestamp, body);
            // Every pair is compared, so timing does not reveal which key or signature matched.
            valid |= any_matches(&expected, presented.iter().map(Vec::as_slice));
        }
        if valid {
            Ok(())
        } else {
            Err(AuthError::Signature)
        }
    }
}

/// The Standard Webhooks signature: HMAC-SHA256 over `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::decode_hmac_secret;
    use axum::http::HeaderValue;

    #[test]
    fn standard_webhooks_signatures_verify_with_rotation_and_tolerance() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", BASE64.encode(key));
        let verifier = HmacVerifier::new(
            vec![
                b"another-key".to_vec(),
                decode_hmac_secret(&secret).unwrap(),
            ],
            300,
        );
        let body = br#"{"eventType":"customer-created"}"#;
        let signature = BASE64.encode(sign(key, "msg_1", "1000", body));
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from_static("1000"));
        let both = format!("v1,AAAA v1,{signature}");
        headers.insert("webhook-signature", HeaderValue::from_str(&both).unwrap());
        assert!(verifier.verify(&headers, body, 1100).is_ok());
        assert_eq!(
            verifier.verify(&headers, body, 1400),
            Err(AuthError::Timestamp)
        );
        assert_eq!(
            verifier.verify(&headers, b"{}", 1000),
            Err(AuthError::Signature)
        );
        headers.insert("webhook-id", HeaderValue::from_static("msg_2"));
        assert_eq!(
            verifier.verify(&headers, body, 1000),
            Err(AuthError::Signature)
        );
    }

    #[test]
    fn the_precheck_refuses_missing_headers_and_stale_timestamps() {
        let verifier = HmacVerifier::new(vec![b"key".to_vec()], 300);
        assert_eq!(
            verifier.precheck(&HeaderMap::new(), 1000),
            Err(AuthError::Signature)
        );
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
        headers.insert("webhook-timestamp", HeaderValue::from_static("1000"));
        headers.insert("webhook-signature", HeaderValue::from_static("v1,AAAA"));
        assert!(verifier.precheck(&headers, 1200).is_ok());
        assert_eq!(verifier.precheck(&headers, 2000), Err(AuthError::Timestamp));
    }
}
