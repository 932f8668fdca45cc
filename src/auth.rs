//! Authentication of webhook deliveries, over the raw request before any parsing.
//!
//! Every configured method must pass: source network, HTTP Basic (what Rebilly sends), a static
//! header secret, and Standard Webhooks HMAC signatures. Credentials are compared in constant
//! time and never logged. Only an [`AuthenticatedBody`] can enter the ingest pipeline.

use crate::config::AuthSettings;
use crate::secret::Secret;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// A body that passed authentication, or that an operator fed in locally (`replay`).
#[derive(Debug, Clone)]
pub struct AuthenticatedBody(Bytes);

impl AuthenticatedBody {
    /// Bodies read from local files by the operator are trusted as they are.
    pub fn from_operator(bytes: Bytes) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the source address is not in auth.allowed_networks")]
    NetworkNotAllowed,
    #[error("missing or invalid Basic credentials")]
    Basic,
    #[error("missing or invalid secret header")]
    Header,
    #[error("missing or invalid webhook signature")]
    Signature,
    #[error("webhook timestamp outside the accepted tolerance")]
    Timestamp,
}

const SIGNATURE_VERSION: &str = "v1,";
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

/// A Basic credential kept as the SHA-256 of `username:password`, so that comparisons have a
/// fixed length and run in constant time whatever the candidate's length.
struct BasicDigest([u8; 32]);

impl std::fmt::Debug for BasicDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicDigest([redacted])")
    }
}

struct HmacKeys(Vec<Vec<u8>>);

impl std::fmt::Debug for HmacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HmacKeys({} keys, redacted)", self.0.len())
    }
}

#[derive(Debug)]
struct HmacVerifier {
    keys: HmacKeys,
    tolerance_seconds: u64,
}

#[derive(Debug)]
pub struct Authenticator {
    networks: Vec<IpNet>,
    proxy_header: Option<(HeaderName, Vec<IpNet>)>,
    basic: Vec<BasicDigest>,
    header: Option<(HeaderName, Vec<Secret>)>,
    hmac: Option<HmacVerifier>,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Compares without an early exit, so the time taken does not tell which byte differed.
fn any_matches<'a>(candidate: &[u8], accepted: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut matched = subtle::Choice::from(0);
    for value in accepted {
        matched |= candidate.ct_eq(value);
    }
    matched.into()
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let basic = settings
            .basic
            .iter()
            .map(|c| {
                BasicDigest(digest(
                    format!("{}:{}", c.username, c.password.expose()).as_bytes(),
                ))
            })
            .collect();
        let header = settings.header.as_ref().map(|h| {
            let name = HeaderName::try_from(h.name.as_str()).expect("validated header name");
            (name, h.values.clone())
        });
        let hmac = settings.hmac.as_ref().map(|h| HmacVerifier {
            keys: HmacKeys(
                h.secrets
                    .iter()
                    .map(|s| decode_hmac_secret(s.expose()).expect("validated secret"))
                    .collect(),
            ),
            tolerance_seconds: h.tolerance_seconds,
        });
        let proxy_header = settings.trusted_proxy_header.as_ref().map(|name| {
            (
                HeaderName::try_from(name.as_str()).expect("validated header name"),
                settings.trusted_proxies.clone(),
            )
        });
        Self {
            networks: settings.allowed_networks.clone(),
            proxy_header,
            basic,
            header,
            hmac,
        }
    }

    /// Whether Basic is one of the configured methods (decides `WWW-Authenticate`).
    pub fn uses_basic(&self) -> bool {
        !self.basic.is_empty()
    }

    /// The checks that need only the headers and the peer; run before the body is read.
    pub fn check_headers(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), AuthError> {
        self.check_network(headers, peer)?;
        self.check_basic(headers)?;
        self.check_header_secret(headers)
    }

    /// The checks over the body; the only way to obtain an [`AuthenticatedBody`] from a request.
    pub fn check_body(
        &self,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<AuthenticatedBody, AuthError> {
        if let Some(verifier) = &self.hmac {
            verifier.verify(headers, &body, unix_now())?;
        }
        Ok(AuthenticatedBody(body))
    }

    fn client_address(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let Some((name, proxies)) = &self.proxy_header else {
            return peer;
        };
        if !proxies.iter().any(|net| net.contains(&peer)) {
            return peer;
        }
        // The trusted proxy appends the address it saw last: read from the right.
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(peer)
    }

    fn check_network(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), AuthError> {
        if self.networks.is_empty() {
            return Ok(());
        }
        let client = canonical(self.client_address(headers, peer));
        if self.networks.iter().any(|net| net.contains(&client)) {
            Ok(())
        } else {
            Err(AuthError::NetworkNotAllowed)
        }
    }

    fn check_basic(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if self.basic.is_empty() {
            return Ok(());
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
            })
            .and_then(|encoded| BASE64.decode(encoded).ok())
            .ok_or(AuthError::Basic)?;
        let candidate = digest(&presented);
        if any_matches(&candidate, self.basic.iter().map(|d| d.0.as_slice())) {
            Ok(())
        } else {
            Err(AuthError::Basic)
        }
    }

    fn check_header_secret(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some((name, values)) = &self.header else {
            return Ok(());
        };
        let presented = headers.get(name).ok_or(AuthError::Header)?;
        let candidate = digest(presented.as_bytes());
        let accepted: Vec<[u8; 32]> = values
            .iter()
            .map(|v| digest(v.expose().as_bytes()))
            .collect();
        if any_matches(&candidate, accepted.iter().map(|d| d.as_slice())) {
            Ok(())
        } else {
            Err(AuthError::Header)
        }
    }
}

/// An IPv4 peer seen through an IPv6 socket is compared as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl HmacVerifier {
    fn verify(&self, headers: &HeaderMap, body: &[u8], now: i64) -> Result<(), AuthError> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Signature)
        };
        let id = text("webhook-id")?;
        let timestamp = text("webhook-timestamp")?;
        let signatures = text("webhook-signature")?;
        let sent: i64 = timestamp.trim().parse().map_err(|_| AuthError::Timestamp)?;
        if now.abs_diff(sent) > self.tolerance_seconds {
            return Err(AuthError::Timestamp);
        }
        let presented: Vec<Vec<u8>> = signatures
            .split_whitespace()
            .filter_map(|s| s.strip_prefix(SIGNATURE_VERSION))
            .filter_map(|s| BASE64.decode(s).ok())
            .collect();
        let mut valid = false;
        for key in &self.keys.0 {
            let expected = sign(key, id, timestamp, body);
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
    use crate::config::{BasicCredential, HeaderSecret, HmacSettings};
    use axum::http::HeaderValue;

    fn settings() -> AuthSettings {
        AuthSettings {
            basic: vec![],
            header: None,
            hmac: None,
            allowed_networks: vec![],
            trusted_proxy_header: None,
            trusted_proxies: vec![],
            allow_unauthenticated: false,
        }
    }

    fn basic_header(user: &str, password: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", BASE64.encode(format!("{user}:{password}")));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        headers
    }

    const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn any_of_several_basic_credentials_is_accepted() {
        let mut s = settings();
        for password in ["old-password", "new-password"] {
            s.basic.push(BasicCredential {
                username: "rebilly".into(),
                password: Secret::new(password),
            });
        }
        let auth = Authenticator::new(&s);
        assert!(
            auth.check_headers(&basic_header("rebilly", "old-password"), LOCAL)
                .is_ok()
        );
        assert!(
            auth.check_headers(&basic_header("rebilly", "new-password"), LOCAL)
                .is_ok()
        );
        assert_eq!(
            auth.check_headers(&basic_header("rebilly", "nope"), LOCAL),
            Err(AuthError::Basic)
        );
        assert_eq!(
            auth.check_headers(&HeaderMap::new(), LOCAL),
            Err(AuthError::Basic)
        );
    }

    #[test]
    fn the_header_secret_must_match_one_value() {
        let mut s = settings();
        s.header = Some(HeaderSecret {
            name: "X-Webhook-Token".into(),
            values: vec![Secret::new("abc"), Secret::new("def")],
        });
        let auth = Authenticator::new(&s);
        let mut headers = HeaderMap::new();
        headers.insert("x-webhook-token", HeaderValue::from_static("def"));
        assert!(auth.check_headers(&headers, LOCAL).is_ok());
        headers.insert("x-webhook-token", HeaderValue::from_static("de"));
        assert_eq!(auth.check_headers(&headers, LOCAL), Err(AuthError::Header));
    }

    #[test]
    fn networks_and_trusted_proxies() {
        let mut s = settings();
        s.allowed_networks = vec!["203.0.113.0/24".parse().unwrap()];
        let auth = Authenticator::new(&s);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            auth.check_headers(&headers, LOCAL),
            Err(AuthError::NetworkNotAllowed),
            "the header is ignored unless a proxy is trusted"
        );
        assert!(
            auth.check_headers(&headers, "203.0.113.7".parse().unwrap())
                .is_ok()
        );

        s.trusted_proxy_header = Some("X-Forwarded-For".into());
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        let auth = Authenticator::new(&s);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1, 203.0.113.9"),
        );
        assert!(auth.check_headers(&headers, LOCAL).is_ok());
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.1"),
        );
        assert_eq!(
            auth.check_headers(&headers, LOCAL),
            Err(AuthError::NetworkNotAllowed)
        );
    }

    #[test]
    fn standard_webhooks_signatures_verify_with_rotation_and_tolerance() {
        let key = b"0123456789abcdef0123456789abcdef";
        let secret = format!("whsec_{}", BASE64.encode(key));
        let verifier = HmacVerifier {
            keys: HmacKeys(vec![
                b"another-key".to_vec(),
                decode_hmac_secret(&secret).unwrap(),
            ]),
            tolerance_seconds: 300,
        };
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
    fn debug_output_hides_credentials() {
        let mut s = settings();
        s.basic.push(BasicCredential {
            username: "u".into(),
            password: Secret::new("pa55word"),
        });
        s.hmac = Some(HmacSettings {
            secrets: vec![Secret::new(format!(
                "whsec_{}",
                BASE64.encode("k3y-material")
            ))],
            tolerance_seconds: 300,
        });
        let printed = format!("{:?}", Authenticator::new(&s));
        assert!(
            !printed.contains("pa55word") && !printed.contains("k3y"),
            "{printed}"
        );
    }
}
