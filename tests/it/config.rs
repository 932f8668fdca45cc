//! Configuration through the real binary: environment overrides, invalid values and the
//! refusal to run without a webhook credential.

use crate::common::*;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 9. Configuration through the real binary
// ---------------------------------------------------------------------------------------------

fn binary_config(dir: &Path, with_credential: bool) -> std::path::PathBuf {
    let credential = if with_credential {
        format!("[[auth.basic]]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n")
    } else {
        String::new()
    };
    write_config(
        dir,
        &format!(
            r#"
[server]
listen = "127.0.0.1:1"
shutdown_grace_seconds = 5

[storage]
path = "{}"

{credential}
[api]
token = "{API_TOKEN}"
"#,
            dir.join("data").join("webhookd.db").display()
        ),
    )
}

#[tokio::test]
async fn serve_listens_on_the_address_from_the_environment_and_logs_the_real_port() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), true);
    let mut command = clean_command(&config, "serve");
    command.env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0");
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let port = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains("listening")
                    && let Some(rest) = line.split("address=127.0.0.1:").nth(1)
                {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    break digits.parse::<u16>().expect("a port number");
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no `listening` line with the address; stderr so far: {seen:#?}");
            }
        }
    };
    assert_ne!(port, 0, "the log shows the real port, not 0");
    assert_ne!(port, 1, "the environment overrides the file's listen");

    let health = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    let health_status = health.as_ref().map(|r| r.status().as_u16()).ok();

    // SIGTERM stops it gracefully; kill it if it does not stop in time.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > stop_deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(lines_rx);
    let _ = reader.join();

    assert_eq!(health_status, Some(200), "GET /healthz on the logged port");
    let exit = exit.expect("serve stops within 30 s of SIGTERM");
    assert!(exit.success(), "serve exits 0 after SIGTERM: {exit:?}");
    assert!(
        dir.path().join("data").join("webhookd.db").exists(),
        "the database and its folder were created"
    );
}

#[tokio::test]
async fn an_invalid_environment_value_stops_the_binary_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), true);
    let mut command = clean_command(&config, "serve");
    command
        .env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0")
        .env("REBILLY_WEBHOOKD__SERVER__MAX_BODY_BYTES", "0");
    let (success, code, stderr) = run_to_exit(command, Duration::from_secs(60));
    assert!(!success, "exit code {code:?}; stderr: {stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "a non-zero exit code, got {code:?}"
    );
    assert!(
        stderr.contains("server.max_body_bytes"),
        "stderr should name the key: {stderr}"
    );
}

#[tokio::test]
async fn serve_without_any_credential_exits_naming_allow_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let config = binary_config(dir.path(), false);
    let mut command = clean_command(&config, "serve");
    command.env("REBILLY_WEBHOOKD__SERVER__LISTEN", "127.0.0.1:0");
    let (success, code, stderr) = run_to_exit(command, Duration::from_secs(60));
    assert!(!success, "exit code {code:?}; stderr: {stderr}");
    assert!(
        code.is_some_and(|c| c != 0),
        "a non-zero exit code, got {code:?}"
    );
    assert!(
        stderr.contains("allow_unauthenticated"),
        "stderr should name allow_unauthenticated: {stderr}"
    );
}
