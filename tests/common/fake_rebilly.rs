//! A fake of Rebilly's Customers API (`GET /customers`) on port 0, for `sync` tests: the key
//! and organization headers, `limit`/`offset` paging, `sort` by `updatedTime`/`id`,
//! `updatedTime` range filters compared as instants, Pagination and Rate-Limit headers. It can
//! answer 429s, 5xx and slow pages on demand, change its data between pages, and it records
//! every request it served.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub const FAKE_API_KEY: &str = "sk_test_fake-rebilly-key";

/// What the next request gets instead of (or before) its page.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The page, as usual.
    Pass,
    /// This HTTP status with a problem body.
    Status(u16),
    /// `429`, with `Retry-After` seconds when given.
    Throttle { retry_after: Option<u64> },
    /// The page, after this delay.
    Slow(Duration),
    /// The page, with `Rate-Limit-Remaining: 0` and `Rate-Limit-Reset` in this many seconds.
    Exhausted { reset_seconds: u64 },
}

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct Served {
    pub at: Instant,
    pub status: u16,
    pub offset: usize,
    pub limit: usize,
    pub filter: Option<String>,
    pub customers: usize,
    /// The injected fault, if any, as `{:?}`.
    pub fault: Option<String>,
}

/// Sort fields, each with `true` when descending.
type Sort = Vec<(String, bool)>;
/// A customer's place in the sorted list: its parsed `updatedTime` and its id.
type Listed = (Option<OffsetDateTime>, String);
type Hook = Box<dyn FnMut(usize, &mut BTreeMap<String, Value>) + Send>;

#[derive(Default)]
struct Inner {
    customers: BTreeMap<String, Value>,
    faults: VecDeque<Fault>,
    served: Vec<Served>,
    /// Called after every page served, with the page's number: data changing between pages.
    after_page: Option<Hook>,
    organization_id: Option<String>,
    /// The customers in the last requested order, with their parsed `updatedTime`; cleared by
    /// every change. The fake must stay far faster than what it measures.
    sorted: Option<(Sort, Vec<Listed>)>,
}

pub struct FakeRebilly {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRebilly {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Customer resource as the API lists it.
pub fn api_customer(id: &str, revision: i64, updated: &str) -> Value {
    json!({
        "id": id,
        "revision": revision,
        "email": format!("{id}@example.com"),
        "firstName": "Synced",
        "lastName": format!("Customer {revision}"),
        "createdTime": "2020-01-01T00:00:00Z",
        "updatedTime": updated,
        "primaryAddress": {"firstName": "Synced", "lastName": format!("Customer {revision}"),
            "country": "DE", "city": "Berlin",
            "emails": [{"label": "main", "value": format!("{id}@example.com"), "primary": true}]},
        "tags": [],
        "customFields": {},
        "invoiceCount": revision,
        "_links": [{"rel": "self", "href": format!("https://api.rebilly.com/customers/{id}")}]
    })
}

/// `2026-01-01T00:00:00Z` plus `seconds`.
pub fn time_at(seconds: i64) -> String {
    (OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_767_225_600 + seconds))
        .format(&Rfc3339)
        .unwrap()
}

impl FakeRebilly {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/customers", get(list))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, inner, task }
    }

    /// The `[rebilly]` and `[sync]` tables pointing at this fake, with fast retries. Syncs start
    /// exactly at the mark (no look-back), so that tests can count what each run reads.
    pub fn config(&self, api_key: &str, page_size: u32) -> String {
        format!(
            "\n[rebilly]\napi_url = \"{}\"\napi_key = \"{api_key}\"\n\n[sync]\npage_size = {page_size}\n\
             request_timeout_seconds = 1\nmax_attempts = 4\nbackoff_initial_ms = 10\nbackoff_max_ms = 40\n\
             look_back_seconds = 0\n",
            self.url
        )
    }

    pub fn require_organization(&self, id: &str) {
        self.inner.lock().unwrap().organization_id = Some(id.to_owned());
    }

    pub fn upsert(&self, customer: Value) {
        let id = customer["id"].as_str().unwrap().to_owned();
        let mut inner = self.inner.lock().unwrap();
        inner.customers.insert(id, customer);
        inner.sorted = None;
    }

    pub fn remove(&self, id: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.customers.remove(id);
        inner.sorted = None;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().customers.len()
    }

    pub fn customers(&self) -> BTreeMap<String, Value> {
        self.inner.lock().unwrap().customers.clone()
    }

    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().faults.extend(faults);
    }

    pub fn after_each_page(
        &self,
        hook: impl FnMut(usize, &mut BTreeMap<String, Value>) + Send + 'static,
    ) {
        self.inner.lock().unwrap().after_page = Some(Box::new(hook));
    }

    /// Every request answered, in order of arrival.
    pub fn served(&self) -> Vec<Served> {
        let mut served = self.inner.lock().unwrap().served.clone();
        served.sort_by_key(|s| s.at);
        served
    }

    pub fn forget_served(&self) {
        self.inner.lock().unwrap().served.clear();
    }

    /// Customers sent in successful pages since the log was last cleared.
    pub fn customers_served(&self) -> usize {
        self.served().iter().map(|s| s.customers).sum()
    }
}

fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [("content-type", "application/problem+json")],
        json!({"status": status.as_u16(), "detail": detail}).to_string(),
    )
        .into_response()
}

fn instant(value: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(value, &Rfc3339).ok()
}

/// `updatedTime:A..B`, `A..` or `..B`; anything else is refused as Rebilly would.
fn parse_filter(filter: &str) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>), String> {
    let range = filter
        .strip_prefix("updatedTime:")
        .ok_or_else(|| format!("unsupported filter {filter}"))?;
    let (from, to) = range
        .split_once("..")
        .ok_or_else(|| format!("not a range: {range}"))?;
    let bound = |text: &str| -> Result<Option<OffsetDateTime>, String> {
        if text.is_empty() {
            Ok(None)
        } else {
            instant(text)
                .map(Some)
                .ok_or_else(|| format!("not a date-time: {text}"))
        }
    };
    Ok((bound(from)?, bound(to)?))
}

/// One customer's value for one sort field: date-times compare as instants.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortKey<'a> {
    Time(Option<OffsetDateTime>),
    Text(Option<&'a str>),
}

fn sort_keys<'a>(customer: &'a Value, sort: &[(String, bool)]) -> Vec<SortKey<'a>> {
    sort.iter()
        .map(|(field, _)| {
            if field == "updatedTime" || field == "createdTime" {
                SortKey::Time(customer[field].as_str().and_then(instant))
            } else {
                SortKey::Text(customer[field].as_str())
            }
        })
        .collect()
}

fn compare(a: &[SortKey<'_>], b: &[SortKey<'_>], sort: &[(String, bool)]) -> std::cmp::Ordering {
    for ((ka, kb), (_, descending)) in a.iter().zip(b).zip(sort) {
        let ordering = if *descending {
            ka.cmp(kb).reverse()
        } else {
            ka.cmp(kb)
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    std::cmp::Ordering::Equal
}

async fn list(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let arrived = Instant::now();
    let fault = inner.lock().unwrap().faults.pop_front();
    let mut exhausted = None;
    match fault {
        Some(Fault::Slow(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::Exhausted { reset_seconds }) => exhausted = Some(reset_seconds),
        _ => {}
    }
    let mut state = inner.lock().unwrap();
    let offset: usize = params
        .get("offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let limit: usize = params
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let filter = params.get("filter").cloned();
    let mut log = Served {
        at: arrived,
        status: 200,
        offset,
        limit,
        filter: filter.clone(),
        customers: 0,
        fault: fault.as_ref().map(|f| format!("{f:?}")),
    };
    let refused = match (&fault, headers.get("REB-APIKEY")) {
        (_, key) if key.is_none_or(|k| k != FAKE_API_KEY) => {
            Some(problem(StatusCode::UNAUTHORIZED, "Invalid API key"))
        }
        (Some(Fault::Status(code)), _) => Some(problem(
            StatusCode::from_u16(*code).unwrap(),
            "injected failure",
        )),
        (Some(Fault::Throttle { retry_after }), _) => {
            let mut response = problem(StatusCode::TOO_MANY_REQUESTS, "Too many requests");
            if let Some(seconds) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", seconds.to_string().parse().unwrap());
            }
            Some(response)
        }
        _ => None,
    };
    let organization_ok = state.organization_id.as_deref().is_none_or(|required| {
        headers
            .get("Organization-Id")
            .is_some_and(|given| given == required)
    });
    let refused = refused.or_else(|| {
        (!organization_ok).then(|| problem(StatusCode::FORBIDDEN, "Wrong organization"))
    });
    let refused = refused.or_else(|| {
        (limit > 1000).then(|| problem(StatusCode::BAD_REQUEST, "limit must be at most 1000"))
    });
    if let Some(response) = refused {
        log.status = response.status().as_u16();
        state.served.push(log);
        return response;
    }
    let range = match filter.as_deref().map(parse_filter).transpose() {
        Ok(range) => range,
        Err(detail) => {
            log.status = 400;
            state.served.push(log);
            return problem(StatusCode::BAD_REQUEST, &detail);
        }
    };
    let sort: Sort = params
        .get("sort")
        .map(|s| {
            s.split(',')
                .map(|f| match f.strip_prefix('-') {
                    Some(name) => (name.to_owned(), true),
                    None => (f.to_owned(), false),
                })
                .collect()
        })
        .unwrap_or_else(|| vec![("id".to_owned(), false)]);
    if state
        .sorted
        .as_ref()
        .is_none_or(|(order, _)| *order != sort)
    {
        let mut keyed: Vec<(Vec<SortKey<'_>>, &Value)> = state
            .customers
            .values()
            .map(|c| (sort_keys(c, &sort), c))
            .collect();
        keyed.sort_by(|a, b| compare(&a.0, &b.0, &sort));
        let order = keyed
            .into_iter()
            .map(|(_, c)| {
                let updated = c["updatedTime"].as_str().and_then(instant);
                (updated, c["id"].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        state.sorted = Some((sort.clone(), order));
    }
    let (_, order) = state.sorted.as_ref().unwrap();
    let matching: Vec<&String> = order
        .iter()
        .filter(|(updated, _)| match range {
            None => true,
            Some((from, to)) => updated.is_some_and(|updated| {
                from.is_none_or(|f| updated >= f) && to.is_none_or(|t| updated <= t)
            }),
        })
        .map(|(_, id)| id)
        .collect();
    let total = matching.len();
    let page: Vec<Value> = matching
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|id| state.customers[id].clone())
        .collect();
    log.customers = page.len();
    let number = state.served.len();
    state.served.push(log);
    if let Some(mut hook) = state.after_page.take() {
        hook(number, &mut state.customers);
        state.after_page = Some(hook);
        state.sorted = None;
    }
    let (remaining, reset) = match exhausted {
        Some(seconds) => (0, seconds),
        None => (999, 60),
    };
    (
        StatusCode::OK,
        [
            ("content-type", "application/json".to_owned()),
            ("pagination-total", total.to_string()),
            ("pagination-limit", limit.to_string()),
            ("pagination-offset", offset.to_string()),
            ("rate-limit-limit", "1000".to_owned()),
            ("rate-limit-remaining", remaining.to_string()),
            ("rate-limit-reset", reset.to_string()),
        ],
        Value::Array(page).to_string(),
    )
        .into_response()
}
