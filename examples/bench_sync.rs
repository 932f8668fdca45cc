//! Sync speed: customers per second from a local fake of Rebilly's Customers API into a new
//! database, through the real client, walk and writer.
//!
//! `cargo run --release --example bench_sync -- --customers 100000`
//!
//! The fake (the one the test suite uses) serves full-looking Customer resources over loopback
//! HTTP; several customers share each `updatedTime`. The example runs a backfill, then an
//! incremental sync with nothing changed, then a `--full` sync over unchanged data, and prints
//! one JSON summary per run.

#[path = "../tests/common/fake_rebilly.rs"]
#[allow(dead_code)]
mod fake_rebilly;

use clap::Parser;
use fake_rebilly::{FAKE_API_KEY, FakeRebilly, api_customer, time_at};
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::progress::Progress;
use rebilly_webhookd::storage::Store;
use rebilly_webhookd::sync;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(about = "Measure sync speed against a local fake Customers API")]
struct Cli {
    #[arg(long, default_value_t = 100_000)]
    customers: u64,
    #[arg(long, default_value_t = 1000)]
    page_size: u32,
    /// `full` or `normal` (SQLite synchronous).
    #[arg(long, default_value = "full")]
    synchronous: String,
}

/// CPU time of this process (the fake API included), from `/proc/self/stat` on Linux: on a
/// shared machine it tells how much of the wall time was this work.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let fake = FakeRebilly::start().await;
    for i in 0..cli.customers {
        let mut customer = api_customer(
            &format!("cus_bench_{i:07}"),
            1 + (i % 7) as i64,
            &time_at((i / 4) as i64),
        );
        customer["customFields"] = serde_json::json!({"plan": "gold", "segment": i % 13});
        customer["tags"] = serde_json::json!([{"name": "bench"}]);
        fake.upsert(customer);
    }
    let dir = tempfile::tempdir().expect("temporary folder");
    let text = format!(
        "[storage]\npath = \"{}\"\nsynchronous = \"{}\"\n{}",
        dir.path().join("bench.db").display(),
        cli.synchronous,
        fake.config(FAKE_API_KEY, cli.page_size).replace(
            "request_timeout_seconds = 1",
            "request_timeout_seconds = 30"
        )
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).expect("write config");
    let settings = Settings::load(Some(&config)).expect("configuration");
    let store = Store::open(&settings.storage).expect("database");
    let mut ok = true;
    for (label, full) in [("backfill", false), ("incremental", false), ("full", true)] {
        let (client, options) = sync::prepare(&settings, full).expect("client");
        let progress = Progress::for_command(label);
        let cpu_before = cpu_seconds();
        let (summary, error) = sync::run(&store, &client, &options, &progress).await;
        let cpu = cpu_seconds()
            .zip(cpu_before)
            .map(|(after, before)| after - before);
        println!(
            "{label}: {} cpuSeconds={}",
            serde_json::to_string(&summary).expect("summary serializes"),
            cpu.map_or("unknown".to_owned(), |c| format!("{c:.1}"))
        );
        if let Some(error) = error {
            eprintln!("{label} failed: {error}");
            ok = false;
        }
    }
    store.close().await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
