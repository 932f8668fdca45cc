//! Known-answer vectors: signatures checked against values published by the Standard Webhooks
//! specification, not against this project's own signer.

use crate::common::{self, *};
use base64::Engine;
use rebilly_webhookd::auth::sign;

/// The example of the Standard Webhooks specification ("Verifying webhook signatures").
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TIMESTAMP: &str = "1614265330";
const BODY: &[u8] = br#"{"test": 2432232314}"#;
const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

fn secret_key() -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap()
}

#[test]
fn the_signer_reproduces_the_standard_webhooks_example() {
    let mac = sign(&secret_key(), MSG_ID, TIMESTAMP, BODY);
    let encoded = base64::engine::general_purpose::STANDARD.encode(mac);
    assert_eq!(format!("v1,{encoded}"), SIGNATURE);
}

/// The daemon configured with the published secret, and a tolerance wide enough for the
/// example's 2021 timestamp.
async fn daemon_with_the_published_secret() -> TestApp {
    common::spawn_app_with(&format!(
        "[auth.hmac]\nsecrets = [\"{SECRET}\"]\ntolerance_seconds = 3000000000\n"
    ))
    .await
}

async fn deliver_signed(app: &TestApp, signature: &str, body: &[u8]) -> reqwest::Response {
    app.webhook_request()
        .basic_auth(USER, Some(PASSWORD))
        .header("webhook-id", MSG_ID)
        .header("webhook-timestamp", TIMESTAMP)
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

backends! {
#[tokio::test]
async fn the_daemon_accepts_the_published_signature_and_refuses_a_changed_body() {
    let app = daemon_with_the_published_secret().await;
    // Authenticated: the example body is not a Rebilly event, so it is kept as rejected (422)
    // rather than refused (401).
    let response = deliver_signed(&app, SIGNATURE, BODY).await;
    assert_eq!(response.status(), 422);

    let response = deliver_signed(&app, SIGNATURE, br#"{"test": 2432232315}"#).await;
    assert_eq!(response.status(), 401);
    let (_, total) = events(&app, "").await;
    assert_eq!(total, 1, "only the authenticated body is stored");
}
}
