//! Authentication of `POST /webhooks/rebilly`: Basic, header secrets, Standard Webhooks
//! signatures, source networks and trusted proxies; nothing of a refused delivery is stored.

use crate::common::{self, *};
use serde_json::json;
use std::time::Duration;

/// A configuration with only HMAC signatures as webhook credential (`#replace` form).
fn hmac_only_config(secrets: &[String]) -> String {
    let list = secrets
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[auth.hmac]
secrets = [{list}]
tolerance_seconds = 300

[api]
token = "{API_TOKEN}"
"#
    )
}

/// A signed request (no Basic) with the given headers.
async fn deliver_signed(
    app: &TestApp,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.webhook_request()
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signatures)
        .body(body)
        .send()
        .await
        .expect("request sent")
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_right_basic_credentials_are_accepted_and_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .header("authorization", basic_value(USER, PASSWORD))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    let (id, status) = accepted(response).await;
    assert_eq!(status, "applied");
    let (list, total) = events(&app, "").await;
    assert_eq!(total, 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["customerId"], "cus_alice_01");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .basic_auth(USER, Some("not-the-password"))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
    let unknown = app.api_get("/customers/cus_alice_01").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn an_unknown_user_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .basic_auth("someone-else", Some(PASSWORD))
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_delivery_without_credentials_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app().await;
    let response = app
        .webhook_request()
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    // A scheme other than Basic, carrying the right secret, is no better.
    let response = app
        .webhook_request()
        .bearer_auth(PASSWORD)
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn both_basic_credentials_are_accepted_during_rotation() {
    let app = common::spawn_app_with(
        r#"
[[auth.basic]]
username = "rebilly-next"
password = "the-new-password-after-rotation"
"#,
    )
    .await;
    let old = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .body(customer_event(
            "customer-created",
            "cus_rot_1",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(old).await.1, "applied");
    let new = app
        .webhook_request()
        .basic_auth("rebilly-next", Some("the-new-password-after-rotation"))
        .body(customer_event(
            "customer-created",
            "cus_rot_2",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(new).await.1, "applied");
    // Mixing one entry's user with the other's password matches neither.
    let mixed = app
        .webhook_request()
        .basic_auth(USER, Some("the-new-password-after-rotation"))
        .body(customer_event(
            "customer-created",
            "cus_rot_3",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(mixed).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 2);
}

const HEADER_SECRETS: &str = r#"
[auth.header]
name = "X-Webhook-Token"
values = ["header-secret-a-1234567890", "header-secret-b-0987654321"]
"#;

#[tokio::test]
async fn any_configured_header_secret_value_passes_alongside_basic() {
    let app = common::spawn_app_with(HEADER_SECRETS).await;
    for (n, value) in ["header-secret-a-1234567890", "header-secret-b-0987654321"]
        .into_iter()
        .enumerate()
    {
        let response = app
            .webhook_request()
            .basic_auth(USER, Some(PASSWORD))
            .header("X-Webhook-Token", value)
            .body(customer_event(
                "customer-created",
                &format!("cus_hdr_{n}"),
                1,
                json!({}),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(accepted(response).await.1, "applied", "value {value}");
    }
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 2);
}

#[tokio::test]
async fn without_basic_credentials_a_refusal_offers_no_basic_challenge() {
    let config = format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[api]
token = "{API_TOKEN}"
{HEADER_SECRETS}"#
    );
    let app = common::spawn_app_with(&config).await;
    let response = app
        .webhook_request()
        .header("X-Webhook-Token", "wrong")
        .body(customer_event(
            "customer-created",
            "cus_hdr_only",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(
        response.headers().get("www-authenticate").is_none(),
        "no Basic challenge when Basic is not configured: {:?}",
        response.headers()
    );
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_wrong_or_missing_header_secret_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app_with(HEADER_SECRETS).await;
    let body = || customer_event("customer-created", "cus_hdr_x", 1, json!({}));
    // Right Basic, wrong header value.
    let wrong = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Webhook-Token", "header-secret-a-123456789")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_problem(wrong, 401).await;
    // Right Basic, no header.
    let missing = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .body(body())
        .send()
        .await
        .unwrap();
    expect_problem(missing, 401).await;
    // Right header, wrong Basic.
    let wrong_basic = app
        .webhook_request()
        .basic_auth(USER, Some("wrong-password"))
        .header("X-Webhook-Token", "header-secret-a-1234567890")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(wrong_basic).await;
    // Right header, no Basic at all.
    let no_basic = app
        .webhook_request()
        .header("X-Webhook-Token", "header-secret-b-0987654321")
        .body(body())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(no_basic).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_header_secret_alone_authenticates_when_it_is_the_only_credential() {
    let app = common::spawn_app_with(&format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"
{HEADER_SECRETS}
[api]
token = "{API_TOKEN}"
"#
    ))
    .await;
    let missing = app
        .webhook_request()
        .body(customer_event(
            "customer-created",
            "cus_hdr_only",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    expect_problem(missing, 401).await;
    assert_nothing_stored(&app).await;
    let right = app
        .webhook_request()
        .header("X-Webhook-Token", "header-secret-b-0987654321")
        .body(customer_event(
            "customer-created",
            "cus_hdr_only",
            1,
            json!({}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(right).await.1, "applied");
    assert_eq!(app.customer("cus_hdr_only").await["id"], "cus_hdr_only");
}

const HMAC_KEY_1: &[u8] = b"first-hmac-key-material-0123456789";
const HMAC_KEY_2: &[u8] = b"second-hmac-key-material-9876543210";

#[tokio::test]
async fn a_valid_standard_webhooks_signature_is_accepted() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_1", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_1", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_1", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    assert_eq!(app.customer("cus_sig_1").await["revision"], 1);
}

#[tokio::test]
async fn a_tampered_body_fails_its_signature_and_nothing_is_stored() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_2", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_2", &timestamp, &body);
    let tampered = customer_event("customer-created", "cus_sig_2", 2, json!({}));
    let response = deliver_signed(&app, "msg_sig_2", &timestamp, &signatures, tampered).await;
    expect_problem(response, 401).await;
    // A signature over another message id does not carry over either.
    let response = deliver_signed(&app, "msg_other", &timestamp, &signatures, body.clone()).await;
    expect_problem(response, 401).await;
    // Nor does a request with no signature at all.
    let response = app.webhook_request().body(body).send().await.unwrap();
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_signature_ten_minutes_old_is_refused_and_nothing_is_stored() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_3", 1, json!({}));
    let timestamp = (unix_now() - 600).to_string();
    let signatures = signature(HMAC_KEY_1, "msg_sig_3", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_3", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn a_signature_by_the_second_of_two_secrets_is_accepted() {
    let app =
        common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1), whsec(HMAC_KEY_2)])).await;
    let body = customer_event("customer-created", "cus_sig_4", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_2, "msg_sig_4", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_4", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    // A key that is not configured is refused.
    let body = customer_event("customer-created", "cus_sig_5", 1, json!({}));
    let signatures = signature(b"an-unknown-key", "msg_sig_5", &timestamp, &body);
    let response = deliver_signed(&app, "msg_sig_5", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn one_valid_signature_among_several_is_enough() {
    let app = common::spawn_app_with(&hmac_only_config(&[whsec(HMAC_KEY_1)])).await;
    let body = customer_event("customer-created", "cus_sig_6", 1, json!({}));
    let timestamp = unix_now().to_string();
    let valid = signature(HMAC_KEY_1, "msg_sig_6", &timestamp, &body);
    let other = signature(b"some-retired-key", "msg_sig_6", &timestamp, &body);
    let signatures = format!("{other} v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAA {valid}");
    let response = deliver_signed(&app, "msg_sig_6", &timestamp, &signatures, body).await;
    assert_eq!(accepted(response).await.1, "applied");
    // Several signatures of which none is valid are refused.
    let body = customer_event("customer-created", "cus_sig_7", 1, json!({}));
    let signatures = format!("{other} v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let response = deliver_signed(&app, "msg_sig_7", &timestamp, &signatures, body).await;
    expect_problem(response, 401).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

#[tokio::test]
async fn with_basic_and_hmac_configured_both_must_pass() {
    let app = common::spawn_app_with(&format!(
        "[auth.hmac]\nsecrets = [\"{}\"]\n",
        whsec(HMAC_KEY_1)
    ))
    .await;
    let body = customer_event("customer-created", "cus_both_1", 1, json!({}));
    let timestamp = unix_now().to_string();
    let signatures = signature(HMAC_KEY_1, "msg_both", &timestamp, &body);
    let signed = |user: &str, password: &str, body: Vec<u8>| {
        app.webhook_request()
            .basic_auth(user, Some(password))
            .header("webhook-id", "msg_both")
            .header("webhook-timestamp", timestamp.clone())
            .header("webhook-signature", signatures.clone())
            .body(body)
    };
    // Valid signature, wrong Basic.
    let response = signed(USER, "wrong-password", body.clone())
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    // Right Basic, no signature.
    let response = app.deliver(body.clone()).await;
    expect_problem(response, 401).await;
    assert_nothing_stored(&app).await;
    // Both right.
    let response = signed(USER, PASSWORD, body).send().await.unwrap();
    assert_eq!(accepted(response).await.1, "applied");
}

#[tokio::test]
async fn a_delivery_from_an_allowed_network_is_accepted() {
    let app = common::spawn_app_with("[auth]\nallowed_networks = [\"127.0.0.0/8\"]\n").await;
    let (_, status) = app
        .deliver_ok(fixture("deliveries/01-customer-created-alice.json"))
        .await;
    assert_eq!(status, "applied");
    // The network check does not replace the credential check.
    let response = app
        .webhook_request()
        .body(fixture("deliveries/02-customer-created-bob.json"))
        .send()
        .await
        .unwrap();
    expect_basic_challenge(response).await;
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1);
}

/// Whether this machine accepts IPv4 connections on an IPv6 wildcard socket.
fn dual_stack() -> bool {
    let Ok(listener) = std::net::TcpListener::bind("[::]:0") else {
        return false;
    };
    let port = listener.local_addr().unwrap().port();
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_matches_ipv4_networks() {
    if !dual_stack() {
        eprintln!("skipped: this machine has no dual-stack sockets");
        return;
    }
    // On `[::]` an IPv4 client appears as `::ffff:127.0.0.1`; it must still match 127.0.0.0/8.
    let config = common::config_text("[::]:0", std::path::Path::new("{db}"), "");
    let app = common::spawn_app_with(&format!(
        "#replace{config}\n[auth]\nallowed_networks = [\"127.0.0.0/8\"]\n"
    ))
    .await;
    let response = app
        .client
        .post(format!(
            "http://127.0.0.1:{}/webhooks/rebilly",
            app.address.port()
        ))
        .basic_auth(USER, Some(PASSWORD))
        .header("content-type", "application/json; charset=utf-8")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(response).await.1, "applied");
}

#[tokio::test]
async fn a_delivery_from_outside_the_allowed_networks_is_forbidden_and_nothing_is_stored() {
    let app = common::spawn_app_with("[auth]\nallowed_networks = [\"203.0.113.0/24\"]\n").await;
    let response = app
        .deliver(fixture("deliveries/01-customer-created-alice.json"))
        .await;
    expect_problem(response, 403).await;
    // Without a trusted proxy, a forwarding header is not believed.
    let response = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "203.0.113.5")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 403).await;
    assert_nothing_stored(&app).await;
}

#[tokio::test]
async fn the_client_address_from_a_trusted_proxy_decides_the_network_check() {
    let app = common::spawn_app_with(
        r#"
[auth]
trusted_proxy_header = "X-Forwarded-For"
trusted_proxies = ["127.0.0.0/8"]
allowed_networks = ["203.0.113.0/24"]
"#,
    )
    .await;
    let outside = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "198.51.100.7")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    expect_problem(outside, 403).await;
    assert_nothing_stored(&app).await;
    let inside = app
        .webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("X-Forwarded-For", "203.0.113.5")
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(inside).await.1, "applied");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}

#[tokio::test]
async fn the_server_refuses_to_start_without_any_webhook_credential() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("webhookd.db");
    let config = write_config(
        dir.path(),
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[storage]\npath = \"{}\"\n\n[api]\ntoken = \"{API_TOKEN}\"\n",
            db.display()
        ),
    );
    let settings = rebilly_webhookd::config::Settings::load(Some(&config)).expect("loads");
    let listener = rebilly_webhookd::server::bind(&settings).await.unwrap();
    let address = listener.local_addr().unwrap();
    let outcome = tokio::time::timeout(
        Duration::from_secs(20),
        rebilly_webhookd::server::run(settings, listener, std::future::pending::<()>()),
    )
    .await
    .expect("run returns at once instead of serving");
    let error = outcome.expect_err("run must refuse an anonymous configuration");
    assert!(
        error.to_string().contains("allow_unauthenticated"),
        "the error should point at allow_unauthenticated: {error}"
    );
    // Nothing is listening any more.
    assert!(
        reqwest::Client::new()
            .get(format!("http://{address}/healthz"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn allow_unauthenticated_accepts_an_anonymous_delivery() {
    let app = common::spawn_app_with(&format!(
        r#"#replace
[server]
listen = "127.0.0.1:0"

[storage]
path = "{{db}}"
synchronous = "normal"

[auth]
allow_unauthenticated = true

[api]
token = "{API_TOKEN}"
"#
    ))
    .await;
    let response = app
        .webhook_request()
        .body(fixture("deliveries/01-customer-created-alice.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted(response).await.1, "applied");
    assert_eq!(app.customer("cus_alice_01").await["revision"], 1);
}
