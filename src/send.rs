//! `send`: posts bodies to a running daemon the way Rebilly does, for trying a deployment.

use base64::Engine;
use std::path::PathBuf;
use std::time::Duration;

/// Longest one delivery may take, from connecting to the end of the answer.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Most of an answer printed; the daemon's answers are small, anything longer is cut.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

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
    send_files_within(url, basic, files, TIMEOUT).await
}

async fn send_files_within(
    url: &str,
    basic: Option<&str>,
    files: &[PathBuf],
    timeout: Duration,
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
        .timeout(timeout)
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
    let mut response = request
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let mut answer = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("cannot read the answer: {e}"))?
    {
        let room = MAX_ANSWER_BYTES - answer.len();
        if chunk.len() >= room {
            answer.extend_from_slice(&chunk[..room]);
            let mut text = String::from_utf8_lossy(&answer).into_owned();
            text.push_str(" [answer cut]");
            return Ok((status, text));
        }
        answer.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&answer).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that reads a request, then answers with `answer` (or never, if `None`).
    async fn server(answer: Option<Vec<u8>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            match answer {
                Some(bytes) => {
                    let _ = stream.write_all(&bytes).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        format!("http://{address}/webhooks/rebilly")
    }

    fn body_file() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"{}").unwrap();
        file
    }

    #[tokio::test]
    async fn a_daemon_that_never_answers_fails_the_file_after_the_timeout() {
        let url = server(None).await;
        let file = body_file();
        let sent = send_files_within(
            &url,
            None,
            &[file.path().to_owned()],
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(sent[0].result.is_err(), "no answer is an error, not a wait");
    }

    #[tokio::test]
    async fn a_huge_answer_is_cut() {
        let body = vec![b'x'; 4 * MAX_ANSWER_BYTES];
        let mut answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        answer.extend_from_slice(&body);
        let url = server(Some(answer)).await;
        let file = body_file();
        let sent = send_files(&url, None, &[file.path().to_owned()])
            .await
            .unwrap();
        let (status, text) = sent[0].result.as_ref().unwrap();
        assert_eq!(*status, 200);
        assert!(text.len() < MAX_ANSWER_BYTES + 64, "{}", text.len());
        assert!(text.ends_with("[answer cut]"));
    }
}
