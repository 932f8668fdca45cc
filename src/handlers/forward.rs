//! Forwards each event's raw body to another URL, with that URL's own credentials.
//!
//! Redirects are never followed: a 302 would turn the POST into a GET without the body (and a
//! login page answering 200 would pass for a delivery), a 307 would post customer data to
//! whatever host the `Location` names. Any answer but a 2xx, a 3xx included, is a failed attempt.

use super::{AsyncHandler, DispatchedEvent, HandlerFuture};
use crate::config::BasicCredential;
use std::time::Duration;

pub struct ForwardHandler {
    client: reqwest::Client,
    url: String,
    basic: Option<BasicCredential>,
}

impl ForwardHandler {
    pub fn new(url: &str, basic: Option<BasicCredential>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("rebilly-webhookd/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings builds");
        Self {
            client,
            url: url.to_owned(),
            basic,
        }
    }

    async fn forward(&self, event: &DispatchedEvent) -> Result<(), String> {
        let mut request = self
            .client
            .post(&self.url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/json; charset=utf-8",
            )
            .header("X-Rebilly-Webhookd-Event-Id", event.id.to_string())
            .body(event.body.clone());
        if let Some(revision) = event.projected_revision {
            request = request.header(
                "X-Rebilly-Webhookd-Projected-Revision",
                revision.to_string(),
            );
        }
        if let Some(basic) = &self.basic {
            request = request.basic_auth(&basic.username, Some(basic.password.expose()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("request failed: {}", e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(format!(
                "the target answered {status}; redirects are not followed, configure the final URL"
            ))
        } else {
            Err(format!("the target answered {status}"))
        }
    }
}

impl AsyncHandler for ForwardHandler {
    fn handle<'a>(&'a self, event: &'a DispatchedEvent) -> HandlerFuture<'a> {
        Box::pin(self.forward(event))
    }
}
