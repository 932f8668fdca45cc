//! Logs and metrics. Logs go through `tracing` (text or JSON); metrics through the `metrics`
//! facade, rendered in Prometheus text format by `metrics-exporter-prometheus`.

use crate::config::{LogFormat, LogSettings};
use crate::storage::HandlerStats;
use crate::storage::Status;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub const DELIVERIES: &str = "rebilly_webhookd_deliveries_total";
pub const REQUEST_SECONDS: &str = "rebilly_webhookd_request_duration_seconds";
pub const BATCH_SIZE: &str = "rebilly_webhookd_writer_batch_size";
pub const COMMIT_SECONDS: &str = "rebilly_webhookd_writer_commit_seconds";
pub const EVENT_LOG_SIZE: &str = "rebilly_webhookd_event_log_events";
pub const QUEUE_DEPTH: &str = "rebilly_webhookd_writer_queue_depth";
pub const HANDLER_ATTEMPTS: &str = "rebilly_webhookd_handler_attempts_total";
pub const HANDLER_BEHIND: &str = "rebilly_webhookd_handler_events_behind";
pub const HANDLER_PENDING: &str = "rebilly_webhookd_handler_retries_pending";
pub const HANDLER_DEAD: &str = "rebilly_webhookd_handler_dead_events";
pub const SYNC_RUNS: &str = "rebilly_webhookd_sync_runs_total";
pub const SYNC_FAILURES: &str = "rebilly_webhookd_sync_failures_total";
pub const SYNC_LAST_SUCCESS: &str = "rebilly_webhookd_sync_last_success_timestamp_seconds";
pub const SYNC_CUSTOMERS: &str = "rebilly_webhookd_sync_customers_total";

/// Delivery outcomes that never reach storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unauthorized,
    Forbidden,
    TooLarge,
    Overloaded,
    Failed,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::TooLarge => "too_large",
            Self::Overloaded => "overloaded",
            Self::Failed => "failed",
        }
    }
}

/// Starts logging; `RUST_LOG` wins over the configured level. Safe to call more than once.
pub fn init_logging(settings: &LogSettings) {
    // The migration library reports every start at info; that is noise for one-shot commands.
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(format!("{},rusqlite_migration=warn", settings.level)))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second call (tests start many servers in one process) keeps the first subscriber.
    drop(result);
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let sizes = [
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_SECONDS.into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(COMMIT_SECONDS.into()), &latency)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes))
                .expect("bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

pub fn record_delivery(status: Status) {
    counter!(DELIVERIES, "outcome" => status.as_str()).increment(1);
}

pub fn record_refusal(refusal: Refusal) {
    counter!(DELIVERIES, "outcome" => refusal.label()).increment(1);
}

pub fn record_request(route: &'static str, elapsed: Duration) {
    histogram!(REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}

pub fn record_batch(size: usize, commit: Duration) {
    histogram!(BATCH_SIZE).record(size as f64);
    histogram!(COMMIT_SECONDS).record(commit.as_secs_f64());
}

pub fn record_log_size(last_event_id: i64) {
    gauge!(EVENT_LOG_SIZE).set(last_event_id as f64);
}

pub fn record_queue_depth(depth: usize) {
    gauge!(QUEUE_DEPTH).set(depth as f64);
}

pub fn record_handler_result(handler: &str, result: &'static str) {
    counter!(HANDLER_ATTEMPTS, "handler" => handler.to_owned(), "result" => result).increment(1);
}

/// One finished sync run: its customers by outcome, and success or failure.
pub fn record_sync(summary: &crate::sync::Summary) {
    counter!(SYNC_RUNS).increment(1);
    for (outcome, count) in [
        ("fetched", summary.fetched),
        ("applied", summary.applied),
        ("stale", summary.stale),
        ("rejected", summary.rejected),
    ] {
        counter!(SYNC_CUSTOMERS, "outcome" => outcome).increment(count);
    }
    if summary.complete {
        gauge!(SYNC_LAST_SUCCESS).set(crate::clock::now_ms() as f64 / 1000.0);
    } else {
        counter!(SYNC_FAILURES).increment(1);
    }
}

pub fn record_handler_stats(handler: &str, stats: HandlerStats) {
    gauge!(HANDLER_BEHIND, "handler" => handler.to_owned()).set(stats.behind as f64);
    gauge!(HANDLER_PENDING, "handler" => handler.to_owned()).set(stats.pending as f64);
    gauge!(HANDLER_DEAD, "handler" => handler.to_owned()).set(stats.dead as f64);
}
