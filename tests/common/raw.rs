//! HTTP/1.1 by hand over a TCP stream, for what a client library hides: a request held in
//! flight between its headers and its body, or a body shorter than the length it declares.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a raw exchange may wait for the server before the test fails.
pub const RAW_WAIT: Duration = Duration::from_secs(10);

/// An answer read off the wire.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl RawResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// The request line and headers of a webhook delivery declaring `content_length`.
pub fn delivery_head(address: SocketAddr, authorization: &str, content_length: u64) -> String {
    format!(
        "POST /webhooks/rebilly HTTP/1.1\r\nHost: {address}\r\nAuthorization: {authorization}\r\n\
         Content-Type: application/json; charset=utf-8\r\nUser-Agent: Rebilly/test\r\n\
         Content-Length: {content_length}\r\nConnection: close\r\n"
    )
}

/// Reads one response: its head, then as many body bytes as its `Content-Length` says (or up
/// to the end of the stream). Fails the test if the server says nothing within [`RAW_WAIT`].
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    tokio::time::timeout(RAW_WAIT, read_response_now(stream))
        .await
        .expect("the server answers")
}

async fn read_response_now(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buffer, b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.expect("read the answer");
        assert!(n > 0, "the connection closed before an answer: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    let mut body = buffer[head_end..].to_vec();
    // An interim answer (100 Continue) has no body; the final answer follows it.
    let length = if status < 200 { Some(0) } else { length };
    match length {
        Some(length) => {
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                let n = stream.read(&mut chunk).await.expect("read the body");
                assert!(n > 0, "the connection closed inside the body");
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(length);
        }
        None => {
            stream.read_to_end(&mut body).await.expect("read the body");
        }
    }
    RawResponse {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A delivery whose headers the server has read and whose handler is waiting for the body: the
/// server answered `100 Continue`, which it does only once the handler starts reading.
pub struct HeldDelivery {
    stream: TcpStream,
    body: Vec<u8>,
}

impl HeldDelivery {
    /// Sends the headers with `Expect: 100-continue` and waits for the server's go-ahead.
    pub async fn start(address: SocketAddr, authorization: &str, body: Vec<u8>) -> HeldDelivery {
        let mut stream = TcpStream::connect(address).await.expect("connect");
        let head = delivery_head(address, authorization, body.len() as u64);
        stream
            .write_all(format!("{head}Expect: 100-continue\r\n\r\n").as_bytes())
            .await
            .expect("send the headers");
        let go_ahead = read_response(&mut stream).await;
        assert_eq!(go_ahead.status, 100, "100 Continue: {}", go_ahead.head);
        HeldDelivery { stream, body }
    }

    /// Sends the body and reads the answer.
    pub async fn finish(mut self) -> RawResponse {
        self.stream
            .write_all(&self.body)
            .await
            .expect("send the body");
        read_response(&mut self.stream).await
    }
}
