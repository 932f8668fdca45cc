//! A client for Rebilly's Customers API that behaves as a good API citizen: bounded pages,
//! timeouts, retries with exponential backoff and jitter on network errors and 5xx answers,
//! `429` honoured (`Retry-After`, else `Rate-Limit-Reset`), a pause when `Rate-Limit-Remaining`
//! reaches 0, and an immediate stop on a rejected key (401/403), which retrying cannot cure.

use super::cursor::PageRequest;
use crate::config::{RebillySettings, SyncSettings};
use crate::secret::Secret;
use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde_json::Value;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const API_KEY_HEADER: &str = "REB-APIKEY";
const ORGANIZATION_HEADER: &str = "Organization-Id";
const TOTAL_HEADER: &str = "Pagination-Total";
const REMAINING_HEADER: &str = "Rate-Limit-Remaining";
const RESET_HEADER: &str = "Rate-Limit-Reset";
/// Customers sorted by last change, ties broken by id, so that pages follow one fixed order.
const SORT: &str = "updatedTime,id";
/// Longest pause the client accepts from the server's rate-limit headers.
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(600);
/// `429` answers tolerated for one page before the sync gives up.
const MAX_THROTTLED: u32 = 50;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is quoted in the message.
const DETAIL_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("rebilly.api_key is not set: `sync` needs a Rebilly API key")]
    MissingKey,
    #[error(
        "Rebilly rejected the API key (HTTP {status}): check rebilly.api_key{hint}; the database is unchanged"
    )]
    KeyRejected { status: u16, hint: &'static str },
    #[error("Rebilly answered HTTP {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("Rebilly's Customers API failed {attempts} times in a row; last: {last}")]
    Unavailable { attempts: u32, last: String },
    #[error("Rebilly's answer is not a list of customers: {0}")]
    Malformed(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// One page of customers and the total the API reported for the filter.
#[derive(Debug)]
pub struct Page {
    pub customers: Vec<Value>,
    pub total: Option<u64>,
}

/// Retry timing for failed requests.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    max_attempts: u32,
    initial_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// The delay after the `attempt`-th failure: doubling, capped, with jitter in [½, 1].
    fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(32))
            .min(self.max_ms);
        let jittered = base as f64 * (0.5 + 0.5 * fastrand::f64());
        Duration::from_millis(jittered as u64)
    }
}

/// Why one attempt failed.
enum Failure {
    /// Worth another attempt after the backoff.
    Transient(String),
    /// Throttled: wait this long, then try again.
    Throttled(Duration),
    Fatal(ApiError),
}

pub struct RebillyClient {
    http: reqwest::Client,
    customers: Url,
    api_key: Secret,
    organization_id: Option<String>,
    backoff: Backoff,
    // A std Mutex: held only to read or set an instant, never across an await.
    pause_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RebillyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RebillyClient")
            .field("customers", &self.customers.as_str())
            .field("api_key", &self.api_key)
            .field("organization_id", &self.organization_id)
            .finish()
    }
}

impl RebillyClient {
    pub fn new(rebilly: &RebillySettings, sync: &SyncSettings) -> Result<Self, ApiError> {
        let api_key = rebilly.api_key.clone().ok_or(ApiError::MissingKey)?;
        let base = format!("{}/", rebilly.api_url.trim_end_matches('/'));
        let customers = Url::parse(&base)
            .and_then(|base| base.join("customers"))
            .map_err(|e| ApiError::Client(format!("rebilly.api_url: {e}")))?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(sync.request_timeout())
            .user_agent(concat!("rebilly-webhookd/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Client(e.to_string()))?;
        Ok(Self {
            http,
            customers,
            api_key,
            organization_id: Some(rebilly.organization_id.clone()).filter(|o| !o.is_empty()),
            backoff: Backoff {
                max_attempts: sync.max_attempts,
                initial_ms: sync.backoff_initial_ms,
                max_ms: sync.backoff_max_ms,
            },
            pause_until: Mutex::new(None),
        })
    }

    /// Fetches one page, retrying what retrying can cure.
    pub async fn fetch(&self, request: &PageRequest) -> Result<Page, ApiError> {
        let url = self.page_url(request);
        let mut failures = 0;
        let mut throttled = 0;
        loop {
            self.wait_for_rate_limit().await;
            match self.attempt(url.clone()).await {
                Ok(page) => return Ok(page),
                Err(Failure::Fatal(error)) => return Err(error),
                Err(Failure::Throttled(wait)) => {
                    throttled += 1;
                    if throttled > MAX_THROTTLED {
                        return Err(ApiError::Unavailable {
                            attempts: throttled,
                            last: "HTTP 429 Too Many Requests".into(),
                        });
                    }
                    tracing::info!(wait_ms = wait.as_millis() as u64, "Rebilly throttled sync");
                    tokio::time::sleep(wait).await;
                }
                Err(Failure::Transient(last)) => {
                    failures += 1;
                    if failures >= self.backoff.max_attempts {
                        return Err(ApiError::Unavailable {
                            attempts: failures,
                            last,
                        });
                    }
                    let delay = self.backoff.delay(failures);
                    tracing::warn!(
                        attempt = failures,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %last,
                        "Rebilly request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn page_url(&self, request: &PageRequest) -> Url {
        let mut url = self.customers.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("limit", &request.limit.to_string())
                .append_pair("offset", &request.offset.to_string())
                .append_pair("sort", SORT);
            if let Some(filter) = &request.filter {
                query.append_pair("filter", filter);
            }
        }
        url
    }

    async fn attempt(&self, url: Url) -> Result<Page, Failure> {
        let mut builder = self
            .http
            .get(url)
            .header(API_KEY_HEADER, self.api_key.expose())
            .header(ACCEPT, "application/json");
        if let Some(organization) = &self.organization_id {
            builder = builder.header(ORGANIZATION_HEADER, organization);
        }
        let response = builder
            .send()
            .await
            .map_err(|e| Failure::Transient(e.without_url().to_string()))?;
        let status = response.status();
        let headers = response.headers().clone();
        self.note_rate_limit(&headers);
        if status.is_success() {
            let body = response
                .bytes()
                .await
                .map_err(|e| Failure::Transient(e.without_url().to_string()))?;
            return parse_page(&body, &headers).map_err(Failure::Fatal);
        }
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(Failure::Fatal(ApiError::KeyRejected {
                    status: status.as_u16(),
                    hint: if status == StatusCode::FORBIDDEN {
                        " and rebilly.organization_id"
                    } else {
                        ""
                    },
                }))
            }
            StatusCode::TOO_MANY_REQUESTS => Err(Failure::Throttled(throttle_wait(
                &headers,
                self.backoff.delay(1),
            ))),
            StatusCode::REQUEST_TIMEOUT => Err(Failure::Transient(format!("HTTP {status}"))),
            status if status.is_server_error() => Err(Failure::Transient(format!("HTTP {status}"))),
            status => {
                let text = response.text().await.unwrap_or_default();
                Err(Failure::Fatal(ApiError::Refused {
                    status: status.as_u16(),
                    detail: text.chars().take(DETAIL_CHARS).collect(),
                }))
            }
        }
    }

    /// Remembers to pause until the window resets when the server says none are left.
    fn note_rate_limit(&self, headers: &HeaderMap) {
        let exhausted = header_text(headers, REMAINING_HEADER)
            .and_then(|v| v.trim().parse::<u64>().ok())
            == Some(0);
        if exhausted && let Some(wait) = header_text(headers, RESET_HEADER).and_then(reset_wait) {
            *self.pause_until.lock().expect("pause lock") = Some(Instant::now() + wait);
        }
    }

    async fn wait_for_rate_limit(&self) {
        let until = self.pause_until.lock().expect("pause lock").take();
        if let Some(until) = until {
            tokio::time::sleep_until(until.into()).await;
        }
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn parse_page(body: &[u8], headers: &HeaderMap) -> Result<Page, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    let Value::Array(customers) = value else {
        return Err(ApiError::Malformed("expected a JSON array".into()));
    };
    let total = header_text(headers, TOTAL_HEADER).and_then(|v| v.trim().parse().ok());
    Ok(Page { customers, total })
}

/// How long a `429` asks to wait: `Retry-After` seconds, else until `Rate-Limit-Reset`, else
/// the first backoff step.
fn throttle_wait(headers: &HeaderMap, fallback: Duration) -> Duration {
    let retry_after = header_text(headers, RETRY_AFTER.as_str())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    retry_after
        .or_else(|| header_text(headers, RESET_HEADER).and_then(reset_wait))
        .unwrap_or(fallback)
        .min(MAX_THROTTLE_WAIT)
}

/// `Rate-Limit-Reset` as a wait from now: seconds to wait, a Unix time, or a date-time.
fn reset_wait(value: &str) -> Option<Duration> {
    let value = value.trim();
    let now = OffsetDateTime::now_utc();
    let until = if let Ok(number) = value.parse::<i64>() {
        // Small numbers are a delay; large ones a Unix time.
        if number < 1_000_000_000 {
            return Some(Duration::from_secs(number.max(0) as u64).min(MAX_THROTTLE_WAIT));
        }
        OffsetDateTime::from_unix_timestamp(number).ok()?
    } else {
        OffsetDateTime::parse(value, &Rfc3339)
            .or_else(|_| OffsetDateTime::parse(&format!("{}Z", value.replace(' ', "T")), &Rfc3339))
            .ok()?
    };
    let wait = (until - now).max(time::Duration::ZERO);
    Some(Duration::try_from(wait).ok()?.min(MAX_THROTTLE_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn retry_after_wins_then_the_reset_header() {
        let fallback = Duration::from_millis(500);
        let both = headers(&[("retry-after", "3"), ("rate-limit-reset", "9")]);
        assert_eq!(throttle_wait(&both, fallback), Duration::from_secs(3));
        let reset = headers(&[("rate-limit-reset", "7")]);
        assert_eq!(throttle_wait(&reset, fallback), Duration::from_secs(7));
        assert_eq!(throttle_wait(&HeaderMap::new(), fallback), fallback);
        let huge = headers(&[("retry-after", "999999")]);
        assert_eq!(throttle_wait(&huge, fallback), MAX_THROTTLE_WAIT);
    }

    #[test]
    fn a_reset_time_in_the_past_means_no_wait() {
        assert_eq!(reset_wait("2001-01-01T00:00:00Z"), Some(Duration::ZERO));
        assert_eq!(reset_wait("2001-01-01 00:00:00"), Some(Duration::ZERO));
        assert_eq!(reset_wait("1000000000"), Some(Duration::ZERO));
        assert_eq!(reset_wait("soon"), None);
    }

    #[test]
    fn backoff_doubles_within_its_cap() {
        let backoff = Backoff {
            max_attempts: 5,
            initial_ms: 100,
            max_ms: 1_000,
        };
        for _ in 0..50 {
            let first = backoff.delay(1).as_millis();
            assert!((50..=100).contains(&first), "{first}");
            let capped = backoff.delay(20).as_millis();
            assert!((500..=1_000).contains(&capped), "{capped}");
        }
    }

    #[test]
    fn the_api_key_never_prints() {
        let rebilly = RebillySettings {
            api_url: "https://api-sandbox.rebilly.com/".into(),
            api_key: Some(Secret::new("sk_sandbox_do-not-print")),
            organization_id: String::new(),
        };
        let sync = SyncSettings {
            interval_seconds: 0,
            page_size: 100,
            look_back_seconds: 0,
            request_timeout_seconds: 5,
            max_attempts: 3,
            backoff_initial_ms: 10,
            backoff_max_ms: 100,
        };
        let client = RebillyClient::new(&rebilly, &sync).unwrap();
        let printed = format!("{client:?}");
        assert!(!printed.contains("do-not-print"), "{printed}");
        let request = PageRequest {
            filter: Some("updatedTime:2026-01-01T00:00:00+02:00..".into()),
            offset: 4,
            limit: 100,
            expect: None,
        };
        assert_eq!(
            client.page_url(&request).as_str(),
            "https://api-sandbox.rebilly.com/customers?limit=100&offset=4&sort=updatedTime%2Cid\
             &filter=updatedTime%3A2026-01-01T00%3A00%3A00%2B02%3A00.."
        );
    }
}
