//! PostgreSQL's connection settings: the password in the URL or apart from it (from the
//! environment), and never in a log line or an error message.

use crate::common::cluster::{deliver, postgres_config};
use crate::common::postgres::{LocalServer, run_admin};
use crate::common::*;
use serde_json::json;
use std::process::Output;

const SUPERUSER_PASSWORD: &str = "superuser-secret-3f9c1e";
const ROLE_PASSWORD: &str = "role-secret-8d2a7b64";
const WRONG_PASSWORD: &str = "wrong-secret-51c0aa";

/// `customers get ID` on `config`, with `REBILLY_WEBHOOKD__STORAGE__PASSWORD` set to
/// `password`.
fn customers_get(config: &std::path::Path, id: &str, password: &str) -> Output {
    binary()
        .arg("--config")
        .arg(config)
        .args(["customers", "get", id])
        .env("REBILLY_WEBHOOKD__STORAGE__PASSWORD", password)
        .output()
        .expect("the binary runs")
}

fn assert_no_password(text: &str, what: &str) {
    for secret in [SUPERUSER_PASSWORD, ROLE_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "{what} shows a password:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_the_url_or_the_environment_and_never_shows() {
    let Some(server) =
        tokio::task::spawn_blocking(|| LocalServer::private_with_password(SUPERUSER_PASSWORD))
            .await
            .unwrap()
    else {
        return;
    };
    let admin = server.admin_url();
    tokio::task::spawn_blocking(move || {
        run_admin(
            &admin,
            format!("CREATE ROLE webhookd LOGIN PASSWORD '{ROLE_PASSWORD}'"),
        )?;
        run_admin(&admin, "CREATE DATABASE webhookd OWNER webhookd".into())
    })
    .await
    .unwrap()
    .expect("a role and its database");
    let port = server.port();
    let in_url = format!("postgres://webhookd:{ROLE_PASSWORD}@127.0.0.1:{port}/webhookd");
    let apart = format!("postgres://webhookd@127.0.0.1:{port}/webhookd");

    // The password in the URL: the daemon serves, and says nothing of the password.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &postgres_config(&in_url, ""));
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(&config))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let body = customer_event("customer-created", "cus_pw", 3, json!({}));
    let response = deliver(&client, &daemon, body).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_no_password(&daemon.log_text(), "the daemon's log");
    drop(daemon);

    // The password apart from the URL, from the environment: a command reads what was stored.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &postgres_config(&apart, ""));
    let (right, wrong) = tokio::task::spawn_blocking(move || {
        (
            customers_get(&config, "cus_pw", ROLE_PASSWORD),
            customers_get(&config, "cus_pw", WRONG_PASSWORD),
        )
    })
    .await
    .unwrap();
    assert_success(&right);
    assert_eq!(stdout_json(&right)["revision"], 3);

    // A wrong password fails with a message that names neither password.
    assert!(!wrong.status.success(), "a wrong password is refused");
    assert!(
        !stderr(&wrong).trim().is_empty(),
        "the failure is explained"
    );
    assert_no_password(&stderr(&wrong), "the error");
    assert_no_password(&stdout(&wrong), "the output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_asks_for_tls_gets_it_with_the_certificate_verified() {
    // A private server runs until the test process ends; its watchdog then removes it.
    let Some((_server, url)) = tokio::task::spawn_blocking(|| {
        let server = LocalServer::private()?;
        server.enable_tls().expect("TLS on the test server");
        let url = server.fresh_database_url();
        Some((server, url))
    })
    .await
    .unwrap() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plain = write_config(dir.path(), &postgres_config(&url, ""));
    let other = tempfile::tempdir().unwrap();
    let verified = write_config(
        other.path(),
        &postgres_config(&format!("{url}?sslmode=require"), ""),
    );
    let (plain, verified) = tokio::task::spawn_blocking(move || {
        let run = |config: &std::path::Path| {
            binary()
                .arg("--config")
                .arg(config)
                .args(["customers", "list"])
                .output()
                .expect("the binary runs")
        };
        (run(&plain), run(&verified))
    })
    .await
    .unwrap();
    // Without sslmode the connection is plain and works.
    assert_success(&plain);
    // With sslmode=require the client speaks TLS (the server said yes to it, or the driver
    // would say the server does not support TLS) and refuses the self-signed certificate.
    assert!(
        !verified.status.success(),
        "a certificate nobody vouches for is refused: {}",
        stdout(&verified)
    );
    let message = stderr(&verified).to_lowercase();
    assert!(
        message.contains("tls handshake"),
        "the handshake is what failed: {message}"
    );
}
