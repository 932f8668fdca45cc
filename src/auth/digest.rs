//! HTTP Digest authentication (RFC 7616), Rebilly's other webhook credential type.
//!
//! Nonces are stateless: the issue time and a random part, sealed with an HMAC under a key held
//! by this process (or shared between daemons through `auth.digest_nonce_key`), so that issuing a
//! challenge stores nothing. What must be stored is the highest nonce count accepted for each
//! nonce, so that a captured `Authorization` header cannot be sent again; that record has a fixed
//! capacity and, when full, forgets the oldest nonce and refuses it from then on (a client then
//! asks for a fresh nonce), so memory stays bounded and a forgotten nonce never becomes valid.
//! Passwords are not kept: only `H(username:realm:password)` for each algorithm.

use super::any_matches;
use crate::config::DigestCredential;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The protection space named in challenges; part of every stored hash.
pub const REALM: &str = "rebilly-webhookd";
/// Nonces whose counts are remembered at once; beyond it the oldest are forgotten and refused.
const TRACKED_NONCES: usize = 16_384;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// In order of preference, as the challenges list them.
    const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "SHA-256",
            Self::Md5 => "MD5",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// The lowercase hex digest RFC 7616 computes everything with.
    fn hex(self, data: &[u8]) -> String {
        match self {
            Self::Sha256 => to_hex(&Sha256::digest(data)),
            Self::Md5 => to_hex(&Md5::digest(data)),
        }
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// Why a Digest `Authorization` was not accepted. Only `Stale` invites the client to retry with
/// the same credentials (`stale=true`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestFailure {
    /// No `Authorization` header: the first step of every Digest exchange.
    Absent,
    /// Credentials of another scheme, or Digest credentials this server never offers (another qop, realm, ...).
    Missing,
    /// Wrong username or password, or a nonce this server did not issue.
    Invalid,
    /// Valid credentials on an expired or forgotten nonce.
    Stale,
    /// A nonce count already used with this nonce.
    Replayed,
}

/// A configured credential as the hashes of `username:realm:password`, one per algorithm.
struct StoredCredential {
    username: String,
    ha1: [String; 2],
}

impl StoredCredential {
    fn new(credential: &DigestCredential) -> Self {
        let a1 = format!(
            "{}:{REALM}:{}",
            credential.username,
            credential.password.expose()
        );
        Self {
            username: credential.username.clone(),
            ha1: Algorithm::ALL.map(|a| a.hex(a1.as_bytes())),
        }
    }

    fn ha1(&self, algorithm: Algorithm) -> &str {
        &self.ha1[Algorithm::ALL
            .iter()
            .position(|a| *a == algorithm)
            .unwrap_or(0)]
    }
}

impl std::fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredCredential({}, [redacted])", self.username)
    }
}

/// Issues and opens nonces: `issued_ms (8 bytes) | random (8) | HMAC (16)`, in hex.
struct NonceSeal {
    key: [u8; 32],
    lifetime_ms: u64,
}

impl std::fmt::Debug for NonceSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NonceSeal(lifetime_ms={}, key redacted)",
            self.lifetime_ms
        )
    }
}

/// A nonce this server issued: its identity and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Nonce {
    id: [u8; 16],
    issued_ms: u64,
}

impl NonceSeal {
    fn mac(&self, id: &[u8; 16]) -> [u8; 16] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(id);
        let full = mac.finalize().into_bytes();
        let mut short = [0u8; 16];
        short.copy_from_slice(&full[..16]);
        short
    }

    fn issue(&self, now_ms: u64) -> String {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&now_ms.to_be_bytes());
        getrandom::fill(&mut id[8..]).expect("the operating system provides random bytes");
        let mut sealed = id.to_vec();
        sealed.extend_from_slice(&self.mac(&id));
        to_hex(&sealed)
    }

    fn open(&self, text: &str) -> Option<Nonce> {
        let bytes = from_hex(text).filter(|b| b.len() == 32)?;
        let (id, mac) = bytes.split_at(16);
        let id: [u8; 16] = id.try_into().ok()?;
        if !any_matches(mac, std::iter::once(self.mac(&id).as_slice())) {
            return None;
        }
        let issued_ms = u64::from_be_bytes(id[..8].try_into().ok()?);
        Some(Nonce { id, issued_ms })
    }

    fn expired(&self, nonce: Nonce, now_ms: u64) -> bool {
        now_ms > nonce.issued_ms.saturating_add(self.lifetime_ms)
    }
}

/// The highest nonce count accepted per nonce, with a fixed capacity.
#[derive(Debug)]
struct NonceCounts {
    capacity: usize,
    counts: HashMap<[u8; 16], (u64, u64)>,
    /// Nonces issued at or before this time and no longer in `counts` were forgotten: refused.
    forgotten_up_to: u64,
}

impl NonceCounts {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            counts: HashMap::new(),
            forgotten_up_to: 0,
        }
    }

    fn advance(
        &mut self,
        nonce: Nonce,
        count: u64,
        oldest_valid_ms: u64,
    ) -> Result<(), DigestFailure> {
        if let Some((_, highest)) = self.counts.get_mut(&nonce.id) {
            if count <= *highest {
                return Err(DigestFailure::Replayed);
            }
            *highest = count;
            return Ok(());
        }
        if nonce.issued_ms <= self.forgotten_up_to {
            return Err(DigestFailure::Stale);
        }
        if self.counts.len() >= self.capacity {
            self.make_room(oldest_valid_ms);
        }
        self.counts.insert(nonce.id, (nonce.issued_ms, count));
        Ok(())
    }

    /// Drops expired nonces (they are refused as expired anyway), then the oldest live ones.
    fn make_room(&mut self, oldest_valid_ms: u64) {
        self.counts
            .retain(|_, (issued, _)| *issued >= oldest_valid_ms);
        while self.counts.len() >= self.capacity {
            let Some((&id, &(issued, _))) = self.counts.iter().min_by_key(|(_, (i, _))| *i) else {
                break;
            };
            self.counts.remove(&id);
            self.forgotten_up_to = self.forgotten_up_to.max(issued);
        }
    }
}

/// The parameters of a `Digest` `Authorization` header.
#[derive(Debug, Default)]
struct Response<'a> {
    params: Vec<(&'a str, String)>,
}

impl<'a> Response<'a> {
    fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `name=token` and `name="quoted \" string"` pairs separated by commas.
fn parse_params(text: &str) -> Option<Response<'_>> {
    let mut params = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim();
        if name.is_empty() || name.contains([' ', ',', '"']) {
            return None;
        }
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((name, value));
        rest = remainder.trim_start();
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start(),
            None if rest.is_empty() => {}
            None => return None,
        }
    }
    Some(Response { params })
}

/// The request being authenticated, as the response digest covers it.
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// The request target as received, such as `/webhooks/rebilly`.
    pub target: &'a str,
}

#[derive(Debug)]
pub struct DigestVerifier {
    credentials: Vec<StoredCredential>,
    seal: NonceSeal,
    /// A std mutex: held for a map lookup, never across an await.
    counts: Mutex<NonceCounts>,
}

impl DigestVerifier {
    /// `key`: the nonce key, such as 32 random bytes drawn at start-up.
    pub fn new(credentials: &[DigestCredential], nonce_lifetime: Duration, key: [u8; 32]) -> Self {
        Self::with_capacity(credentials, nonce_lifetime, key, TRACKED_NONCES)
    }

    fn with_capacity(
        credentials: &[DigestCredential],
        nonce_lifetime: Duration,
        key: [u8; 32],
        capacity: usize,
    ) -> Self {
        Self {
            credentials: credentials.iter().map(StoredCredential::new).collect(),
            seal: NonceSeal {
                key,
                lifetime_ms: u64::try_from(nonce_lifetime.as_millis()).unwrap_or(u64::MAX),
            },
            counts: Mutex::new(NonceCounts::new(capacity.max(1))),
        }
    }

    /// One `WWW-Authenticate` value per algorithm, most preferred first, sharing a fresh nonce.
    pub fn challenges(&self, stale: bool, now_ms: u64) -> Vec<String> {
        let nonce = self.seal.issue(now_ms);
        let stale = if stale { ", stale=true" } else { "" };
        Algorithm::ALL
            .iter()
            .map(|algorithm| {
                format!(
                    "Digest realm=\"{REALM}\", qop=\"auth\", algorithm={}, nonce=\"{nonce}\"{stale}",
                    algorithm.name()
                )
            })
            .collect()
    }

    /// Checks the parameters of a `Digest` authorization (the text after `Digest `).
    pub fn verify(
        &self,
        params: &str,
        request: &RequestLine<'_>,
        now_ms: u64,
    ) -> Result<(), DigestFailure> {
        let response = parse_params(params).ok_or(DigestFailure::Missing)?;
        let field = |name| response.get(name).ok_or(DigestFailure::Missing);
        let algorithm = match response.get("algorithm") {
            None => Algorithm::Md5,
            Some(name) => Algorithm::parse(name).ok_or(DigestFailure::Missing)?,
        };
        let qop = field("qop")?;
        if !qop.eq_ignore_ascii_case("auth")
            || field("realm")? != REALM
            || response
                .get("userhash")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(DigestFailure::Missing);
        }
        let count_text = field("nc")?;
        let count = u64::from_str_radix(count_text, 16)
            .ok()
            .filter(|c| *c > 0 && count_text.len() == 8)
            .ok_or(DigestFailure::Missing)?;
        let uri = field("uri")?;
        if !same_target(uri, request.target) {
            return Err(DigestFailure::Invalid);
        }
        let nonce_text = field("nonce")?;
        let nonce = self.seal.open(nonce_text).ok_or(DigestFailure::Invalid)?;
        let ha2 = algorithm.hex(format!("{}:{uri}", request.method).as_bytes());
        let tail = format!("{nonce_text}:{count_text}:{}:{qop}:{ha2}", field("cnonce")?);
        let presented = field("response")?.to_ascii_lowercase();
        let username = field("username")?;
        let mut valid = subtle::Choice::from(0);
        for credential in &self.credentials {
            let expected =
                algorithm.hex(format!("{}:{tail}", credential.ha1(algorithm)).as_bytes());
            let name_matches =
                subtle::ConstantTimeEq::ct_eq(credential.username.as_bytes(), username.as_bytes());
            let response_matches =
                subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), presented.as_bytes());
            valid |= name_matches & response_matches;
        }
        if !bool::from(valid) {
            return Err(DigestFailure::Invalid);
        }
        if self.seal.expired(nonce, now_ms) {
            return Err(DigestFailure::Stale);
        }
        let oldest_valid = now_ms.saturating_sub(self.seal.lifetime_ms);
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .advance(nonce, count, oldest_valid)
    }
}

/// The `uri` parameter names the request target, in origin form or as an absolute URI.
fn same_target(uri: &str, target: &str) -> bool {
    if uri == target {
        return true;
    }
    uri.parse::<axum::http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str() == target))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn credential(username: &str, password: &str) -> DigestCredential {
        DigestCredential {
            username: username.into(),
            password: Secret::new(password),
        }
    }

    /// A client computing the response the RFC 7616 way.
    fn respond(
        algorithm: Algorithm,
        (user, password): (&str, &str),
        nonce: &str,
        nc: u32,
        uri: &str,
    ) -> String {
        let ha1 = algorithm.hex(format!("{user}:{REALM}:{password}").as_bytes());
        let ha2 = algorithm.hex(format!("POST:{uri}").as_bytes());
        let nc = format!("{nc:08x}");
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let response = algorithm.hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}").as_bytes());
        format!(
            "username=\"{user}\", realm=\"{REALM}\", uri=\"{uri}\", algorithm={}, \
             nonce=\"{nonce}\", nc={nc}, cnonce=\"{cnonce}\", qop=auth, response=\"{response}\"",
            algorithm.name()
        )
    }

    fn nonce_of(challenge: &str) -> String {
        challenge
            .split("nonce=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap()
            .to_owned()
    }

    const TARGET: RequestLine<'static> = RequestLine {
        method: "POST",
        target: "/webhooks/rebilly",
    };

    fn verifier(credentials: &[DigestCredential]) -> DigestVerifier {
        DigestVerifier::new(credentials, Duration::from_secs(300), [7; 32])
    }

    #[test]
    fn rfc_7616_example_responses_are_reproduced() {
        // RFC 7616 section 3.9.1: user Mufasa, password "Circle of Life", GET /dir/index.html.
        let a1 = "Mufasa:http-auth@example.org:Circle of Life";
        let a2 = "GET:/dir/index.html";
        let nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
        let cnonce_md5 = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let cnonce_sha = cnonce_md5;
        let expect = |algorithm: Algorithm, cnonce: &str| {
            let ha1 = algorithm.hex(a1.as_bytes());
            let ha2 = algorithm.hex(a2.as_bytes());
            algorithm.hex(format!("{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}").as_bytes())
        };
        assert_eq!(
            expect(Algorithm::Md5, cnonce_md5),
            "8ca523f5e9506fed4657c9700eebdbec"
        );
        assert_eq!(
            expect(Algorithm::Sha256, cnonce_sha),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn a_response_to_our_challenge_is_accepted_with_either_algorithm() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        for algorithm in Algorithm::ALL {
            let nonce = nonce_of(&v.challenges(false, 1_000)[0]);
            let header = respond(algorithm, ("rebilly", "s3cret"), &nonce, 1, TARGET.target);
            assert_eq!(v.verify(&header, &TARGET, 2_000), Ok(()), "{algorithm:?}");
        }
    }

    #[test]
    fn challenges_offer_sha256_then_md5_with_qop_auth() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        let challenges = v.challenges(true, 1_000);
        assert_eq!(challenges.len(), 2);
        assert!(
            challenges[0].contains("algorithm=SHA-256"),
            "{challenges:?}"
        );
        assert!(challenges[1].contains("algorithm=MD5"), "{challenges:?}");
        for challenge in &challenges {
            assert!(challenge.contains("qop=\"auth\""), "{challenge}");
            assert!(
                challenge.contains("realm=\"rebilly-webhookd\""),
                "{challenge}"
            );
            assert!(challenge.ends_with("stale=true"), "{challenge}");
        }
    }

    #[test]
    fn a_wrong_password_a_foreign_nonce_and_another_uri_are_invalid() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        let nonce = nonce_of(&v.challenges(false, 1_000)[0]);
        let wrong = respond(
            Algorithm::Sha256,
            ("rebilly", "guess"),
            &nonce,
            1,
            TARGET.target,
        );
        assert_eq!(
            v.verify(&wrong, &TARGET, 1_000),
            Err(DigestFailure::Invalid)
        );
        let other = DigestVerifier::new(
            &[credential("rebilly", "s3cret")],
            Duration::from_secs(300),
            [8; 32],
        );
        let foreign = nonce_of(&other.challenges(false, 1_000)[0]);
        let forged = respond(
            Algorithm::Sha256,
            ("rebilly", "s3cret"),
            &foreign,
            1,
            TARGET.target,
        );
        assert_eq!(
            v.verify(&forged, &TARGET, 1_000),
            Err(DigestFailure::Invalid)
        );
        let elsewhere = respond(
            Algorithm::Md5,
            ("rebilly", "s3cret"),
            &nonce,
            1,
            "/customers",
        );
        assert_eq!(
            v.verify(&elsewhere, &TARGET, 1_000),
            Err(DigestFailure::Invalid)
        );
    }

    #[test]
    fn a_nonce_count_is_accepted_once_and_must_increase() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        let nonce = nonce_of(&v.challenges(false, 1_000)[0]);
        let first = respond(
            Algorithm::Sha256,
            ("rebilly", "s3cret"),
            &nonce,
            1,
            TARGET.target,
        );
        assert_eq!(v.verify(&first, &TARGET, 1_000), Ok(()));
        assert_eq!(
            v.verify(&first, &TARGET, 1_000),
            Err(DigestFailure::Replayed)
        );
        let third = respond(
            Algorithm::Sha256,
            ("rebilly", "s3cret"),
            &nonce,
            3,
            TARGET.target,
        );
        assert_eq!(v.verify(&third, &TARGET, 1_000), Ok(()));
        let second = respond(
            Algorithm::Sha256,
            ("rebilly", "s3cret"),
            &nonce,
            2,
            TARGET.target,
        );
        assert_eq!(
            v.verify(&second, &TARGET, 1_000),
            Err(DigestFailure::Replayed)
        );
    }

    #[test]
    fn an_expired_nonce_is_stale() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        let nonce = nonce_of(&v.challenges(false, 1_000)[0]);
        let header = respond(
            Algorithm::Md5,
            ("rebilly", "s3cret"),
            &nonce,
            1,
            TARGET.target,
        );
        assert_eq!(
            v.verify(&header, &TARGET, 301_001),
            Err(DigestFailure::Stale)
        );
        assert_eq!(v.verify(&header, &TARGET, 301_000), Ok(()));
    }

    #[test]
    fn a_full_record_forgets_the_oldest_nonce_and_refuses_it_afterwards() {
        let v = DigestVerifier::with_capacity(
            &[credential("rebilly", "s3cret")],
            Duration::from_secs(300),
            [7; 32],
            2,
        );
        let nonces: Vec<String> = (0..3)
            .map(|i| nonce_of(&v.challenges(false, 1_000 + i)[0]))
            .collect();
        let use_nonce = |i: usize, nc: u32| {
            let header = respond(
                Algorithm::Sha256,
                ("rebilly", "s3cret"),
                &nonces[i],
                nc,
                TARGET.target,
            );
            v.verify(&header, &TARGET, 2_000)
        };
        assert_eq!(use_nonce(0, 1), Ok(()));
        assert_eq!(use_nonce(1, 1), Ok(()));
        assert_eq!(
            use_nonce(2, 1),
            Ok(()),
            "room is made by forgetting nonce 0"
        );
        assert_eq!(
            use_nonce(0, 2),
            Err(DigestFailure::Stale),
            "a forgotten nonce is refused"
        );
        assert_eq!(use_nonce(1, 1), Err(DigestFailure::Replayed));
    }

    #[test]
    fn any_of_several_credentials_is_accepted() {
        let v = verifier(&[credential("rebilly", "old"), credential("rebilly", "new")]);
        for password in ["old", "new"] {
            let nonce = nonce_of(&v.challenges(false, 1_000)[0]);
            let header = respond(
                Algorithm::Sha256,
                ("rebilly", password),
                &nonce,
                1,
                TARGET.target,
            );
            assert_eq!(v.verify(&header, &TARGET, 1_000), Ok(()), "{password}");
        }
    }

    #[test]
    fn quoted_parameters_with_escapes_parse() {
        let parsed = parse_params(r#"username="a\"b", nc=00000001 , realm="x,y""#).unwrap();
        assert_eq!(parsed.get("username"), Some("a\"b"));
        assert_eq!(parsed.get("nc"), Some("00000001"));
        assert_eq!(parsed.get("realm"), Some("x,y"));
        assert!(parse_params(r#"username="unterminated"#).is_none());
    }

    #[test]
    fn debug_output_hides_the_hashes() {
        let v = verifier(&[credential("rebilly", "s3cret")]);
        let printed = format!("{v:?}");
        let ha1 = Algorithm::Md5.hex(format!("rebilly:{REALM}:s3cret").as_bytes());
        assert!(
            !printed.contains(&ha1) && !printed.contains("s3cret"),
            "{printed}"
        );
    }
}
