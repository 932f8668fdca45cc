//! Arbitrary authentication headers (Basic, Digest, a static header secret, Standard Webhooks
//! signature headers, proxy address headers) and peers through the public `Authenticator`: it
//! never panics, never accepts a request that lacks one of the configured credentials, and
//! accepts a request that presents all of them in their canonical form. (A Digest response
//! needs a nonce the daemon issued, so no input here can pass Digest: with Digest the only
//! sender credential configured, every acceptance is a failure.)

#![no_main]

use arbitrary::Arbitrary;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use rebilly_webhookd::auth::{Authenticator, RequestHead};
use rebilly_webhookd_fuzz::load_settings;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

const USERNAME: &str = "rebilly";
const PASSWORD: &str = "correct horse battery staple";
const TOKEN_HEADER: &str = "x-webhook-token";
const TOKEN: &str = "a-static-secret-token";
/// `whsec_` followed by the base64 of [`HMAC_KEY`].
const HMAC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOLERANCE_SECONDS: i64 = 300;
/// Deliveries are allowed from here, either directly or through a trusted proxy.
const ALLOWED: [&str; 2] = ["203.0.113.0/24", "2001:db8::/32"];
const PROXIES: [&str; 2] = ["10.0.0.0/8", "fd00::/8"];

/// Which methods are configured: every one configured must pass.
#[derive(Debug, Arbitrary, Clone, Copy)]
struct Methods {
    basic: bool,
    digest: bool,
    token: bool,
    hmac: bool,
    networks: bool,
    proxy: Option<ProxyHeader>,
}

#[derive(Debug, Arbitrary, Clone, Copy)]
enum ProxyHeader {
    XForwardedFor,
    Forwarded,
}

impl ProxyHeader {
    fn name(self) -> &'static str {
        match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        }
    }
}

/// A header value: either the right one (possibly reshaped) or arbitrary bytes.
#[derive(Debug, Arbitrary)]
enum Presented {
    Absent,
    Canonical,
    Raw(Vec<u8>),
    /// The canonical value with arbitrary bytes around it.
    Wrapped(Vec<u8>, Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Timestamp {
    /// Now, shifted by this many seconds.
    Near(i16),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Peer {
    V4([u8; 4]),
    V6([u8; 16]),
    Allowed(u8),
    Proxy(u8),
    Loopback,
}

impl Peer {
    fn address(&self) -> IpAddr {
        match self {
            Self::V4(octets) => Ipv4Addr::from(*octets).into(),
            Self::V6(octets) => Ipv6Addr::from(*octets).into(),
            Self::Allowed(last) => Ipv4Addr::new(203, 0, 113, *last).into(),
            Self::Proxy(last) => Ipv4Addr::new(10, 1, 2, *last).into(),
            Self::Loopback => Ipv4Addr::LOCALHOST.into(),
        }
    }
}

/// One hop of a proxy header, as a proxy would write it, or arbitrary bytes.
#[derive(Debug, Arbitrary)]
enum Hop {
    Allowed(u8),
    AllowedV6(u16),
    Proxy(u8),
    Outside([u8; 4]),
    WithPort(u8, u16),
    Raw(Vec<u8>),
}

impl Hop {
    fn render(&self, proxy: ProxyHeader) -> Vec<u8> {
        let address = match self {
            Self::Raw(bytes) => return bytes.clone(),
            Self::Allowed(last) => format!("203.0.113.{last}"),
            Self::AllowedV6(last) => format!("2001:db8::{last:x}"),
            Self::Proxy(last) => format!("10.1.2.{last}"),
            Self::Outside(octets) => Ipv4Addr::from(*octets).to_string(),
            Self::WithPort(last, port) => format!("203.0.113.{last}:{port}"),
        };
        match proxy {
            ProxyHeader::XForwardedFor => address.into_bytes(),
            ProxyHeader::Forwarded if address.contains("::") => {
                format!("for=\"[{address}]\";proto=https").into_bytes()
            }
            ProxyHeader::Forwarded => format!("for={address}").into_bytes(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Request {
    methods: Methods,
    peer: Peer,
    authorization: Presented,
    token: Presented,
    webhook_id: Vec<u8>,
    timestamp: Timestamp,
    signature: Presented,
    /// Each item is one line of the proxy header, of comma-separated hops.
    forwarded: Vec<Vec<Hop>>,
    /// Extra arbitrary headers, named by index into a few names the daemon reads.
    extra: Vec<(u8, Vec<u8>)>,
    body: Vec<u8>,
}

fuzz_target!(|request: Request| {
    let methods = request.methods;
    let authenticator = authenticator(methods);
    let now = unix_now();
    let Some(headers) = headers(&request, now) else {
        return;
    };
    let peer = request.peer.address();
    let head = RequestHead {
        method: &Method::POST,
        target: "/webhooks/rebilly",
        headers: &headers,
        peer,
    };
    let accepted = authenticator.check_head(&head).is_ok()
        && authenticator
            .check_body(&headers, Bytes::from(request.body.clone()))
            .is_ok();
    if accepted {
        assert_every_configured_credential_is_present(methods, &headers, peer, &request.body, now);
    }
    if presents_everything_canonically(&request) && !accepted {
        panic!("canonical credentials were refused: {request:?}");
    }
});

fn authenticator(methods: Methods) -> &'static Authenticator {
    // One authenticator per combination of methods, built once.
    static ALL: OnceLock<Vec<Authenticator>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        (0..COMBINATIONS)
            .map(|bits| Authenticator::new(&load_settings(&settings(bits)).auth))
            .collect()
    });
    &all[bits(methods)]
}

const COMBINATIONS: usize = 3 << 5;

fn bits(methods: Methods) -> usize {
    let proxy = match methods.proxy {
        None => 0,
        Some(ProxyHeader::XForwardedFor) => 1,
        Some(ProxyHeader::Forwarded) => 2,
    };
    usize::from(methods.basic)
        | usize::from(methods.token) << 1
        | usize::from(methods.hmac) << 2
        | usize::from(methods.networks) << 3
        | usize::from(methods.digest) << 4
        | proxy << 5
}

/// The configuration file of one combination of methods.
fn settings(bits: usize) -> String {
    let list = |items: &[&str]| format!("{items:?}");
    let mut auth = String::from("[auth]\n");
    if bits & 8 != 0 {
        auth += &format!("allowed_networks = {}\n", list(&ALLOWED));
    }
    let proxy = match bits >> 5 {
        1 => Some(ProxyHeader::XForwardedFor),
        2 => Some(ProxyHeader::Forwarded),
        _ => None,
    };
    if let Some(proxy) = proxy {
        auth += &format!("trusted_proxy_header = \"{}\"\n", proxy.name());
        auth += &format!("trusted_proxies = {}\n", list(&PROXIES));
    }
    if bits & 1 != 0 {
        auth += &format!("[[auth.basic]]\nusername = \"{USERNAME}\"\npassword = \"{PASSWORD}\"\n");
    }
    if bits & 16 != 0 {
        auth += &format!("[[auth.digest]]\nusername = \"{USERNAME}\"\npassword = \"{PASSWORD}\"\n");
    }
    if bits & 2 != 0 {
        auth += &format!("[auth.header]\nname = \"{TOKEN_HEADER}\"\nvalues = [\"{TOKEN}\"]\n");
    }
    if bits & 4 != 0 {
        auth += &format!(
            "[auth.hmac]\nsecrets = [\"{HMAC_SECRET}\"]\ntolerance_seconds = {TOLERANCE_SECONDS}\n"
        );
    }
    auth
}

fn hmac_key() -> Vec<u8> {
    STANDARD
        .decode(HMAC_SECRET.trim_start_matches("whsec_"))
        .expect("base64 key")
}

fn signature(id: &[u8], timestamp: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&hmac_key()).expect("any key length");
    for part in [id, b".", timestamp, b".", body] {
        mac.update(part);
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

fn canonical_basic() -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{USERNAME}:{PASSWORD}"))
    )
}

fn timestamp_bytes(timestamp: &Timestamp, now: i64) -> Vec<u8> {
    match timestamp {
        Timestamp::Near(shift) => (now + i64::from(*shift)).to_string().into_bytes(),
        Timestamp::Raw(bytes) => bytes.clone(),
    }
}

fn presented(presented: &Presented, canonical: &[u8]) -> Option<Vec<u8>> {
    match presented {
        Presented::Absent => None,
        Presented::Canonical => Some(canonical.to_vec()),
        Presented::Raw(bytes) => Some(bytes.clone()),
        Presented::Wrapped(before, after) => {
            Some([before.as_slice(), canonical, after.as_slice()].concat())
        }
    }
}

/// The request's headers, or `None` when a value is not a valid header value (an HTTP parser
/// would have refused the request before the daemon saw it).
fn headers(request: &Request, now: i64) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    let mut insert = |name: &str, value: &[u8]| -> Option<()> {
        let value = HeaderValue::from_bytes(value).ok()?;
        headers.append(HeaderName::from_bytes(name.as_bytes()).ok()?, value);
        Some(())
    };
    if let Some(value) = presented(&request.authorization, canonical_basic().as_bytes()) {
        insert("authorization", &value)?;
    }
    if let Some(value) = presented(&request.token, TOKEN.as_bytes()) {
        insert(TOKEN_HEADER, &value)?;
    }
    let timestamp = timestamp_bytes(&request.timestamp, now);
    let signed = format!(
        "v1,{}",
        signature(&request.webhook_id, &timestamp, &request.body)
    );
    if let Some(value) = presented(&request.signature, signed.as_bytes()) {
        insert("webhook-id", &request.webhook_id)?;
        insert("webhook-timestamp", &timestamp)?;
        insert("webhook-signature", &value)?;
    }
    let proxy = request.methods.proxy.unwrap_or(ProxyHeader::XForwardedFor);
    for hops in &request.forwarded {
        let rendered: Vec<Vec<u8>> = hops.iter().map(|hop| hop.render(proxy)).collect();
        insert(proxy.name(), &rendered.join(&b", "[..]))?;
    }
    const NAMES: [&str; 6] = [
        "authorization",
        "webhook-signature",
        "webhook-timestamp",
        "x-forwarded-for",
        "forwarded",
        "x-real-ip",
    ];
    for (which, value) in &request.extra {
        insert(NAMES[usize::from(*which) % NAMES.len()], value)?;
    }
    Some(headers)
}

fn values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).iter().map(HeaderValue::as_bytes)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn assert_every_configured_credential_is_present(
    methods: Methods,
    headers: &HeaderMap,
    peer: IpAddr,
    body: &[u8],
    now: i64,
) {
    assert!(
        methods.basic || !methods.digest,
        "accepted without Digest credentials: {headers:?}"
    );
    if methods.basic {
        // Strict base64 has one encoding per value: an accepted header carries it.
        let encoded = STANDARD_NO_PAD.encode(format!("{USERNAME}:{PASSWORD}"));
        assert!(
            values(headers, "authorization").any(|v| contains(v, encoded.as_bytes())),
            "accepted without the Basic credential: {headers:?}"
        );
    }
    if methods.token {
        assert!(
            values(headers, TOKEN_HEADER).any(|v| v == TOKEN.as_bytes()),
            "accepted without the header secret: {headers:?}"
        );
    }
    if methods.hmac {
        assert_signed(headers, body, now);
    }
    if methods.networks {
        assert_from_allowed_network(methods, headers, peer);
    }
}

fn assert_signed(headers: &HeaderMap, body: &[u8], now: i64) {
    let single = |name: &str| {
        values(headers, name)
            .next()
            .unwrap_or_else(|| panic!("accepted without {name}"))
    };
    let timestamp = single("webhook-timestamp");
    let sent: i64 = std::str::from_utf8(timestamp)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("accepted with an unreadable timestamp");
    // One second of slack: the clock may tick between the check and this assertion.
    assert!(
        (sent - now).abs() <= TOLERANCE_SECONDS + 1,
        "accepted a timestamp outside the tolerance: {sent} at {now}"
    );
    let expected = signature(single("webhook-id"), timestamp, body);
    let expected = expected.trim_end_matches('=');
    assert!(
        values(headers, "webhook-signature").any(|v| contains(v, expected.as_bytes())),
        "accepted without a valid signature: {headers:?}"
    );
}

fn in_any(address: IpAddr, networks: &[&str]) -> bool {
    let address = match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::from).unwrap_or(address),
        v4 => v4,
    };
    networks.iter().any(|net| {
        net.parse::<ipnet::IpNet>()
            .expect("a network")
            .contains(&address)
    })
}

/// One hop of a proxy header as an address: bare, with a port, or bracketed, possibly quoted.
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| hop.split_once(':')?.0.parse().ok())
}

/// The hops of every line of the header, left to right; for `Forwarded`, each element's `for`.
fn hops(proxy: ProxyHeader, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let lines: Vec<String> = values(headers, proxy.name())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    let elements = lines.iter().flat_map(|line| line.split(','));
    match proxy {
        ProxyHeader::XForwardedFor => elements
            .filter(|hop| !hop.trim().is_empty())
            .map(hop_address)
            .collect(),
        ProxyHeader::Forwarded => elements
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (key, value) = pair.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| hop_address(value))
                })
            })
            .collect(),
    }
}

fn assert_from_allowed_network(methods: Methods, headers: &HeaderMap, peer: IpAddr) {
    let Some(proxy) = methods.proxy.filter(|_| in_any(peer, &PROXIES)) else {
        assert!(
            in_any(peer, &ALLOWED),
            "accepted a peer outside the allowed networks: {peer}"
        );
        return;
    };
    // The sender is the right-most hop that is not a trusted proxy; hops to its left are
    // whatever the sender wrote. Hops no reader could use are passed over here, so that
    // only a decision taken on a sender-written hop counts as a failure.
    let client = hops(proxy, headers)
        .into_iter()
        .flatten()
        .rev()
        .find(|hop| !in_any(*hop, &PROXIES));
    assert!(
        client.is_some_and(|client| in_any(client, &ALLOWED)),
        "accepted through a proxy whose right-most untrusted hop ({client:?}) is not allowed: \
         {headers:?}"
    );
}

/// Whether the request presents every configured credential exactly as a sender would, with
/// nothing else that could contradict it.
fn presents_everything_canonically(request: &Request) -> bool {
    let methods = request.methods;
    let exact = |p: &Presented| matches!(p, Presented::Canonical);
    // Signature ids are ASCII; the clock may tick between building and checking.
    let fresh = matches!(request.timestamp, Timestamp::Near(shift)
        if i64::from(shift).abs() < TOLERANCE_SECONDS - 5)
        && request.webhook_id.is_ascii();
    // No input can pass Digest; with Basic also configured, Basic suffices.
    (!methods.digest || methods.basic)
        && (!methods.basic || exact(&request.authorization))
        && (!methods.token || exact(&request.token))
        && (!methods.hmac || (exact(&request.signature) && fresh))
        // Directly from an allowed address: a trusted proxy must name the client.
        && matches!(request.peer, Peer::Allowed(_))
        && request.forwarded.is_empty()
        && request.extra.is_empty()
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
