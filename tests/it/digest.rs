//! HTTP Digest (RFC 7616) webhook credentials through the real server: challenges, both
//! algorithms, wrong passwords, replayed headers, expired nonces, rotation, and clients that are
//! not the daemon's own (curl `--digest`, Python's standard library).

use crate::common::{self, *};
use md5::Md5;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::process::Command;

const DIGEST_USER: &str = "rebilly-digest";
const DIGEST_PASSWORD: &str = "digest-password-0123456789";
const WEBHOOK_PATH: &str = "/webhooks/rebilly";

/// A configuration whose only webhook credentials are the given Digest ones.
fn digest_config(credentials: &[(&str, &str)], auth_lines: &str) -> String {
    let entries: String = credentials
        .iter()
        .map(|(user, password)| {
            format!("\n[[auth.digest]]\nusername = \"{user}\"\npassword = \"{password}\"\n")
        })
        .collect();
    format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[auth]
{auth_lines}
{entries}
[api]
token = "{API_TOKEN}"
"#
    )
}

async fn digest_app(auth_lines: &str) -> TestApp {
    common::spawn_app_with(&digest_config(
        &[(DIGEST_USER, DIGEST_PASSWORD)],
        auth_lines,
    ))
    .await
}

/// One `WWW-Authenticate: Digest` challenge, by parameter.
#[derive(Debug)]
struct Challenge {
    realm: String,
    nonce: String,
    algorithm: String,
    qop: String,
    stale: bool,
}

fn param(challenge: &str, name: &str) -> Option<String> {
    challenge.split(',').find_map(|part| {
        let (key, value) = part.trim().trim_start_matches("Digest ").split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"').to_owned())
    })
}

fn challenges(response: &reqwest::Response) -> Vec<Challenge> {
    response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .filter(|v| v.starts_with("Digest "))
        .map(|v| Challenge {
            realm: param(&v, "realm").unwrap_or_default(),
            nonce: param(&v, "nonce").unwrap_or_default(),
            algorithm: param(&v, "algorithm").unwrap_or_default(),
            qop: param(&v, "qop").unwrap_or_default(),
            stale: param(&v, "stale").is_some_and(|s| s == "true"),
        })
        .collect()
}

fn hex_digest(algorithm: &str, text: &str) -> String {
    let bytes: Vec<u8> = match algorithm {
        "SHA-256" => Sha256::digest(text.as_bytes()).to_vec(),
        "MD5" => Md5::digest(text.as_bytes()).to_vec(),
        other => panic!("unexpected algorithm {other}"),
    };
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Authorization` value a client computes for `challenge` (RFC 7616, qop=auth).
fn authorization(challenge: &Challenge, (user, password): (&str, &str), nc: u32) -> String {
    let algorithm = &challenge.algorithm;
    let ha1 = hex_digest(algorithm, &format!("{user}:{}:{password}", challenge.realm));
    let ha2 = hex_digest(algorithm, &format!("POST:{WEBHOOK_PATH}"));
    let nc = format!("{nc:08x}");
    let cnonce = format!("cn{}", fastrand::u64(..));
    let response = hex_digest(
        algorithm,
        &format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", challenge.nonce),
    );
    format!(
        "Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{WEBHOOK_PATH}\", \
         algorithm={algorithm}, qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\"",
        challenge.realm, challenge.nonce
    )
}

fn body(id: &str) -> Vec<u8> {
    customer_event("customer-created", id, 1, json!({}))
}

/// Posts without credentials and returns the challenges of the 401.
async fn challenge(app: &TestApp) -> Vec<Challenge> {
    let response = app
        .webhook_request()
        .body(body("cus_digest_probe"))
        .send()
        .await
        .unwrap();
    let found = challenges(&response);
    expect_problem(response, 401).await;
    found
}

async fn post_with(app: &TestApp, authorization: &str, id: &str) -> reqwest::Response {
    app.webhook_request()
        .header("Authorization", authorization)
        .body(body(id))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_anonymous_delivery_is_challenged_with_sha256_and_md5() {
    let app = digest_app("").await;
    let found = challenge(&app).await;
    let algorithms: Vec<&str> = found.iter().map(|c| c.algorithm.as_str()).collect();
    assert_eq!(algorithms, ["SHA-256", "MD5"], "{found:?}");
    for c in &found {
        assert_eq!(c.realm, "rebilly-webhookd");
        assert_eq!(c.qop, "auth");
        assert!(!c.nonce.is_empty() && !c.stale, "{c:?}");
    }
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_valid_digest_response_is_accepted_with_either_algorithm() {
    let app = digest_app("").await;
    // Both challenges carry the same nonce, so the counts go on from one to the other.
    for (i, c) in challenge(&app).await.iter().enumerate() {
        let value = authorization(c, (DIGEST_USER, DIGEST_PASSWORD), i as u32 + 1);
        let response = post_with(&app, &value, &format!("cus_digest_ok_{i}")).await;
        assert_eq!(accepted(response).await.1, "applied", "{}", c.algorithm);
    }
    assert_eq!(events(&app, "").await.1, 2);
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_new_challenge_and_nothing_is_stored() {
    let app = digest_app("").await;
    let c = &challenge(&app).await[0];
    let value = authorization(c, (DIGEST_USER, "not-the-password"), 1);
    let response = post_with(&app, &value, "cus_digest_wrong").await;
    assert_eq!(
        challenges(&response).len(),
        2,
        "the refusal challenges again"
    );
    expect_problem(response, 401).await;
    // Basic credentials are no substitute when only Digest is configured.
    let response = app
        .webhook_request()
        .basic_auth(DIGEST_USER, Some(DIGEST_PASSWORD))
        .body(body("cus_digest_basic"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_replayed_authorization_header_is_refused_and_stores_nothing() {
    let app = digest_app("").await;
    let c = &challenge(&app).await[0];
    let captured = authorization(c, (DIGEST_USER, DIGEST_PASSWORD), 1);
    let first = post_with(&app, &captured, "cus_digest_replay").await;
    assert_eq!(accepted(first).await.1, "applied");
    // The same header again, with another body: the nonce count was used.
    let replay = post_with(&app, &captured, "cus_digest_replay_forged").await;
    expect_problem(replay, 401).await;
    // The legitimate client goes on with the next count on the same nonce.
    let next = authorization(c, (DIGEST_USER, DIGEST_PASSWORD), 2);
    let response = post_with(&app, &next, "cus_digest_replay_next").await;
    assert_eq!(accepted(response).await.1, "applied");
    let (listed, total) = events(&app, "").await;
    assert_eq!(total, 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .all(|e| e["customerId"] != "cus_digest_replay_forged")
    );
}

#[tokio::test]
async fn an_expired_nonce_is_answered_stale_and_a_fresh_one_works() {
    let app = digest_app("digest_nonce_seconds = 1").await;
    let c = &challenge(&app).await[0];
    // The nonce lifetime is one second: wait until it is certainly over.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let late = authorization(c, (DIGEST_USER, DIGEST_PASSWORD), 1);
    let response = post_with(&app, &late, "cus_digest_stale").await;
    let renewed = challenges(&response);
    assert!(
        renewed.iter().all(|c| c.stale),
        "an expired nonce with the right password is stale: {renewed:?}"
    );
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
    let fresh = authorization(&renewed[0], (DIGEST_USER, DIGEST_PASSWORD), 1);
    let response = post_with(&app, &fresh, "cus_digest_fresh").await;
    assert_eq!(accepted(response).await.1, "applied");
}

#[tokio::test]
async fn both_digest_credentials_are_accepted_during_rotation() {
    let app = common::spawn_app_with(&digest_config(
        &[
            ("rebilly", "old-digest-password"),
            ("rebilly", "new-digest-password"),
        ],
        "",
    ))
    .await;
    for (i, password) in ["old-digest-password", "new-digest-password"]
        .into_iter()
        .enumerate()
    {
        let c = &challenge(&app).await[0];
        let value = authorization(c, ("rebilly", password), 1);
        let response = post_with(&app, &value, &format!("cus_digest_rot_{i}")).await;
        assert_eq!(accepted(response).await.1, "applied", "{password}");
    }
}

#[tokio::test]
async fn with_basic_and_digest_configured_either_valid_credential_passes() {
    let app = common::spawn_app_with(&format!(
        "\n[[auth.digest]]\nusername = \"{DIGEST_USER}\"\npassword = \"{DIGEST_PASSWORD}\"\n"
    ))
    .await;
    let response = app
        .webhook_request()
        .body(body("cus_digest_none"))
        .send()
        .await
        .unwrap();
    let schemes: Vec<String> = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().split(' ').next().unwrap().to_owned())
        .collect();
    assert_eq!(schemes, ["Digest", "Digest", "Basic"]);
    let c = &challenges(&response)[0];
    expect_problem(response, 401).await;
    let digest = authorization(c, (DIGEST_USER, DIGEST_PASSWORD), 1);
    assert_eq!(
        accepted(post_with(&app, &digest, "cus_digest_either_1").await)
            .await
            .1,
        "applied"
    );
    let basic = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .body(body("cus_digest_either_2"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(basic).await.1, "applied");
}

// ---------------------------------------------------------------------------------------------
// Independent clients
// ---------------------------------------------------------------------------------------------

fn available(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

const CLIENTS: [(&str, &str); 2] = [("curl", "--version"), ("python3", "--version")];

/// Without the client, the test is skipped with a message; but at least one independent client
/// must run, and in CI (`CI` set) a machine with neither fails.
fn require(program: &str) -> bool {
    let (_, flag) = CLIENTS.iter().find(|(p, _)| *p == program).unwrap();
    if available(program, flag) {
        return true;
    }
    let any = CLIENTS.iter().any(|(p, f)| available(p, f));
    assert!(
        any || std::env::var("CI").is_err(),
        "neither curl nor python3 is installed: the independent Digest client tests cannot run"
    );
    eprintln!("skipped: {program} is not installed");
    false
}

/// Runs a blocking client next to the server and returns its output.
async fn run_client(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("the client runs"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_digest_delivers() {
    if !require("curl") {
        return;
    }
    let app = digest_app("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body("cus_digest_curl")).unwrap();
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--digest", "--user"])
        .arg(format!("{DIGEST_USER}:{DIGEST_PASSWORD}"))
        .args(["--header", "Content-Type: application/json; charset=utf-8"])
        .args(["--write-out", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(app.url(WEBHOOK_PATH));
    let output = run_client(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.trim_end().ends_with("200"),
        "curl: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        app.customer("cus_digest_curl").await["id"],
        "cus_digest_curl"
    );
}

/// Python's `HTTPDigestAuthHandler`, which computes the response itself. Its hash table knows
/// MD5 and SHA-1 only, so the script adds SHA-256 through the handler's own hook; the handler
/// answers the first challenge.
const PYTHON_CLIENT: &str = r#"
import hashlib, sys, urllib.request
class Handler(urllib.request.HTTPDigestAuthHandler):
    def get_algorithm_impls(self, algorithm):
        if algorithm == "SHA-256":
            H = lambda x: hashlib.sha256(x.encode("utf-8")).hexdigest()
            return H, lambda s, d: H("%s:%s" % (s, d))
        return super().get_algorithm_impls(algorithm)
url, user, password, path = sys.argv[1:5]
passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
passwords.add_password(None, url, user, password)
opener = urllib.request.build_opener(Handler(passwords))
request = urllib.request.Request(url, data=open(path, "rb").read(),
    headers={"Content-Type": "application/json; charset=utf-8"}, method="POST")
with opener.open(request) as response:
    print(response.status, response.read().decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_standard_library_digest_delivers() {
    if !require("python3") {
        return;
    }
    let app = digest_app("").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body("cus_digest_python")).unwrap();
    let mut command = Command::new("python3");
    command
        .args(["-c", PYTHON_CLIENT])
        .arg(app.url(WEBHOOK_PATH))
        .args([DIGEST_USER, DIGEST_PASSWORD])
        .arg(&file);
    let output = run_client(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.starts_with("200"),
        "python: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        app.customer("cus_digest_python").await["id"],
        "cus_digest_python"
    );
}
