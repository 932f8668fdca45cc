//! `send`: posts bodies to a running daemon the way Rebilly does, for trying a deployment.

use base64::Engine;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("--basic must be USER:PASSWORD")]
    Credentials,
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// One file's result: the HTTP status and body, or why it could not be sent.
pub struct Sent {
    pub path: PathBuf,
    pub result: Result<(u16, String), String>,
}

impl Sent {
    pub fn succeeded(&self) -> bool {
        matches!(self.result, Ok((status, _)) if (200..300).contains(&status))
    }
}

pub async fn send_files(
    url: &str,
    basic: Option<&str>,
    files: &[PathBuf],
) -> Result<Vec<Sent>, SendError> {
    let authorization = basic
        .map(|credentials| {
            if !credentials.contains(':') {
                return Err(SendError::Credentials);
            }
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            Ok(format!("Basic {encoded}"))
        })
        .transpose()?;
    let client = reqwest::Client::builder()
        .user_agent(concat!("rebilly-webhookd-send/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(SendError::Client)?;
    let mut results = Vec::with_capacity(files.len());
    for path in files {
        let result = post_file(&client, url, authorization.as_deref(), path).await;
        results.push(Sent {
            path: path.clone(),
            result,
        });
    }
    Ok(results)
}

async fn post_file(
    client: &reqwest::Client,
    url: &str,
    authorization: Option<&str>,
    path: &PathBuf,
) -> Result<(u16, String), String> {
    let body = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read the file: {e}"))?;
    // As Rebilly does: JSON with a charset, and a new connection for every delivery.
    let mut request = client
        .post(url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/json; charset=utf-8",
        )
        .header(reqwest::header::CONNECTION, "close")
        .body(body);
    if let Some(value) = authorization {
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?;
    Ok((status, text))
}
