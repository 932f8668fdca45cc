//! Authentication of webhook deliveries, over the raw request before any parsing.
//!
//! Every configured method must pass: source network, a sender credential (HTTP Basic, what
//! Rebilly recommends, or HTTP Digest; with both configured either one suffices, as Rebilly sends
//! one credential type per webhook), a static header secret, and Standard Webhooks HMAC
//! signatures. Credentials are compared in constant time and never logged. Only an
//! [`AuthenticatedBody`] can enter the ingest pipeline.

mod basic;
pub mod digest;
mod hmac;
pub mod proxy;

pub use hmac::sign;

use crate::config::AuthSettings;
use crate::secret::{Secret, decode_hmac_secret};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, Method, header};
use basic::BasicVerifier;
use digest::{DigestFailure, DigestVerifier, RequestLine};
use hmac::HmacVerifier;
use ipnet::IpNet;
use proxy::TrustedProxies;
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

/// Why a request was refused. The variants are for the log and metrics: every credential
/// failure is answered with the same 401, so that the answer does not tell which check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the source address is not in auth.allowed_networks")]
    NetworkNotAllowed,
    #[error("a trusted proxy sent no usable client address")]
    NoClientAddress,
    #[error("missing or invalid Basic credentials")]
    Basic,
    #[error("Digest credentials: {0:?}")]
    Digest(DigestFailure),
    #[error("missing or invalid secret header")]
    Header,
    #[error("missing or invalid webhook signature")]
    Signature,
    #[error("webhook timestamp outside the accepted tolerance")]
    Timestamp,
}

impl AuthError {
    /// A Digest challenge to a request without credentials, or a renewed one for an expired
    /// nonce: what every Digest delivery goes through before it passes.
    pub fn is_digest_handshake(self) -> bool {
        matches!(
            self,
            Self::Digest(DigestFailure::Absent | DigestFailure::Stale)
        )
    }
}

/// What the checks before the body need to know of a request.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The request target as received (path and query).
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// The address the connection comes from.
    pub peer: IpAddr,
}

#[derive(Debug)]
pub struct Authenticator {
    networks: Vec<IpNet>,
    proxies: Option<TrustedProxies>,
    basic: Option<BasicVerifier>,
    digest: Option<DigestVerifier>,
    header: Option<(HeaderName, Vec<Secret>)>,
    hmac: Option<HmacVerifier>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
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

/// The key that seals Digest nonces: derived from `auth.digest_nonce_key` when daemons share
/// one, else drawn at random for this process.
fn nonce_key(configured: Option<&Secret>) -> [u8; 32] {
    match configured {
        Some(secret) => sha256(format!("digest-nonce-key:{}", secret.expose()).as_bytes()),
        None => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).expect("the operating system provides random bytes");
            key
        }
    }
}

impl Authenticator {
    pub fn new(settings: &AuthSettings) -> Self {
        let basic = (!settings.basic.is_empty()).then(|| BasicVerifier::new(&settings.basic));
        let digest = (!settings.digest.is_empty()).then(|| {
            DigestVerifier::new(
                &settings.digest,
                std::time::Duration::from_secs(settings.digest_nonce_seconds),
                nonce_key(settings.digest_nonce_key.as_ref()),
            )
        });
        let header = settings.header.as_ref().map(|h| {
            let name = HeaderName::try_from(h.name.as_str()).expect("validated header name");
            (name, h.values.clone())
        });
        let hmac = settings.hmac.as_ref().map(|h| {
            let keys = h
                .secrets
                .iter()
                .map(|s| decode_hmac_secret(s.expose()).expect("validated secret"))
                .collect();
            HmacVerifier::new(keys, h.tolerance_seconds)
        });
        let proxies = settings.trusted_proxy_header.as_ref().map(|name| {
            TrustedProxies::new(
                HeaderName::try_from(name.as_str()).expect("validated header name"),
                settings.trusted_proxies.clone(),
            )
        });
        Self {
            networks: settings
                .allowed_networks
                .iter()
                .copied()
                .map(proxy::canonical_net)
                .collect(),
            proxies,
            basic,
            digest,
            header,
            hmac,
        }
    }

    /// The `WWW-Authenticate` challenges for a 401: Digest (SHA-256, then MD5) and Basic, each
    /// when configured. `stale` tells a Digest client to retry with a fresh nonce.
    pub fn challenges(&self, error: AuthError) -> Vec<String> {
        let mut challenges = Vec::new();
        if let Some(digest) = &self.digest {
            let stale = error == AuthError::Digest(DigestFailure::Stale);
            challenges.extend(digest.challenges(stale, unix_now_ms()));
        }
        if self.basic.is_some() {
            challenges.push("Basic realm=\"rebilly-webhookd\", charset=\"UTF-8\"".to_owned());
        }
        challenges
    }

    /// The checks that need only the request head; run before the body is read, so that an
    /// anonymous request costs no body read and no hashing of it.
    pub fn check_head(&self, request: &RequestHead<'_>) -> Result<(), AuthError> {
        self.check_network(request.headers, request.peer)?;
        self.check_sender_credential(request)?;
        self.check_header_secret(request.headers)?;
        if let Some(verifier) = &self.hmac {
            verifier.precheck(request.headers, unix_now())?;
        }
        Ok(())
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

    fn check_network(&self, headers: &HeaderMap, peer: IpAddr) -> Result<(), AuthError> {
        let client = match &self.proxies {
            Some(proxies) => proxies
                .client_address(headers, peer)
                .map_err(|_| AuthError::NoClientAddress)?,
            None => proxy::canonical(peer),
        };
        if self.networks.is_empty() || self.networks.iter().any(|net| net.contains(&client)) {
            Ok(())
        } else {
            Err(AuthError::NetworkNotAllowed)
        }
    }

    /// Basic or Digest, whichever the request presents; with neither configured, nothing to do.
    fn check_sender_credential(&self, request: &RequestHead<'_>) -> Result<(), AuthError> {
        let authorization = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .map(|(scheme, rest)| (scheme, rest.trim()));
        let presented_digest = authorization.filter(|(s, _)| s.eq_ignore_ascii_case("digest"));
        let presented_basic = authorization.filter(|(s, _)| s.eq_ignore_ascii_case("basic"));
        match (&self.basic, &self.digest, presented_digest) {
            (None, None, _) => Ok(()),
            (_, Some(digest), Some((_, params))) => {
                let line = RequestLine {
                    method: request.method.as_str(),
                    target: request.target,
                };
                digest
                    .verify(params, &line, unix_now_ms())
                    .map_err(AuthError::Digest)
            }
            (None, Some(_), None) => Err(AuthError::Digest(if authorization.is_some() {
                DigestFailure::Missing
            } else {
                DigestFailure::Absent
            })),
            (Some(basic), _, _) => basic.verify(presented_basic.map(|(_, p)| p)),
        }
    }

    fn check_header_secret(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        let Some((name, values)) = &self.header else {
            return Ok(());
        };
        let presented = headers.get(name).ok_or(AuthError::Header)?;
        // Hashing first gives every comparison the same length, whatever was presented.
        let candidate = sha256(presented.as_bytes());
        let accepted: Vec<[u8; 32]> = values
            .iter()
            .map(|v| sha256(v.expose().as_bytes()))
            .collect();
        if any_matches(&candidate, accepted.iter().map(|d| d.as_slice())) {
            Ok(())
        } else {
            Err(AuthError::Header)
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BasicCredential, DigestCredential, HeaderSecret, HmacSettings};
    use axum::http::HeaderValue;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as BASE64;

    fn settings() -> AuthSettings {
        AuthSettings {
            basic: vec![],
            digest: vec![],
            digest_nonce_seconds: 300,
            digest_nonce_key: None,
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

    fn check(auth: &Authenticator, headers: &HeaderMap, peer: IpAddr) -> Result<(), AuthError> {
        auth.check_head(&RequestHead {
            method: &Method::POST,
            target: "/webhooks/rebilly",
            headers,
            peer,
        })
    }

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
        assert!(check(&auth, &basic_header("rebilly", "old-password"), LOCAL).is_ok());
        assert!(check(&auth, &basic_header("rebilly", "new-password"), LOCAL).is_ok());
        assert_eq!(
            check(&auth, &basic_header("rebilly", "nope"), LOCAL),
            Err(AuthError::Basic)
        );
        assert_eq!(
            check(&auth, &HeaderMap::new(), LOCAL),
            Err(AuthError::Basic)
        );
    }

    #[test]
    fn with_basic_and_digest_configured_either_credential_passes() {
        let mut s = settings();
        s.basic.push(BasicCredential {
            username: "rebilly".into(),
            password: Secret::new("basic-password"),
        });
        s.digest.push(DigestCredential {
            username: "rebilly".into(),
            password: Secret::new("digest-password"),
        });
        let auth = Authenticator::new(&s);
        assert!(check(&auth, &basic_header("rebilly", "basic-password"), LOCAL).is_ok());
        assert_eq!(
            check(&auth, &basic_header("rebilly", "digest-password"), LOCAL),
            Err(AuthError::Basic)
        );
        let mut digest = HeaderMap::new();
        digest.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Digest username=\"rebilly\""),
        );
        assert_eq!(
            check(&auth, &digest, LOCAL),
            Err(AuthError::Digest(DigestFailure::Missing))
        );
        let challenges = auth.challenges(AuthError::Basic);
        assert_eq!(challenges.len(), 3, "{challenges:?}");
        assert!(challenges[2].starts_with("Basic "), "{challenges:?}");
    }

    #[test]
    fn only_a_request_without_credentials_is_a_digest_handshake() {
        let mut s = settings();
        s.digest.push(DigestCredential {
            username: "rebilly".into(),
            password: Secret::new("digest-password"),
        });
        let auth = Authenticator::new(&s);
        let absent = check(&auth, &HeaderMap::new(), LOCAL).unwrap_err();
        assert_eq!(absent, AuthError::Digest(DigestFailure::Absent));
        assert!(absent.is_digest_handshake());
        let basic = check(&auth, &basic_header("rebilly", "digest-password"), LOCAL).unwrap_err();
        assert_eq!(basic, AuthError::Digest(DigestFailure::Missing));
        assert!(!basic.is_digest_handshake());
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
        assert!(check(&auth, &headers, LOCAL).is_ok());
        headers.insert("x-webhook-token", HeaderValue::from_static("de"));
        assert_eq!(check(&auth, &headers, LOCAL), Err(AuthError::Header));
    }

    #[test]
    fn networks_and_trusted_proxies() {
        let mut s = settings();
        s.allowed_networks = vec!["203.0.113.0/24".parse().unwrap()];
        let auth = Authenticator::new(&s);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        assert_eq!(
            check(&auth, &headers, LOCAL),
            Err(AuthError::NetworkNotAllowed),
            "the header is ignored unless a proxy is trusted"
        );
        assert!(check(&auth, &headers, "203.0.113.7".parse().unwrap()).is_ok());
        assert!(
            check(&auth, &headers, "::ffff:203.0.113.7".parse().unwrap()).is_ok(),
            "an IPv4-mapped peer is its IPv4 address"
        );

        s.trusted_proxy_header = Some("X-Forwarded-For".into());
        s.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        let auth = Authenticator::new(&s);
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.1, 203.0.113.9"),
        );
        assert!(check(&auth, &headers, LOCAL).is_ok());
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("203.0.113.9, 198.51.100.1"),
        );
        assert_eq!(
            check(&auth, &headers, LOCAL),
            Err(AuthError::NetworkNotAllowed)
        );
        headers.remove("x-forwarded-for");
        assert_eq!(
            check(&auth, &headers, LOCAL),
            Err(AuthError::NoClientAddress),
            "a trusted proxy that names no client does not pass as the client"
        );
    }

    #[test]
    fn with_only_hmac_an_unsigned_request_is_refused_from_its_head() {
        let mut s = settings();
        s.hmac = Some(HmacSettings {
            secrets: vec![Secret::new(format!("whsec_{}", BASE64.encode("key")))],
            tolerance_seconds: 300,
        });
        let auth = Authenticator::new(&s);
        assert_eq!(
            check(&auth, &HeaderMap::new(), LOCAL),
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
        s.digest.push(DigestCredential {
            username: "d".into(),
            password: Secret::new("d1gestpass"),
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
            !printed.contains("pa55word")
                && !printed.contains("k3y")
                && !printed.contains("d1gest"),
            "{printed}"
        );
    }
}
