//! Synthetic but realistic customer events for `bench/run.sh`.
//!
//! `bench_seed seed --config FILE --total N` fills the configured database until its event log
//! holds N events, through the library's own ingest pipeline (parse, dedupe, projection, group
//! commit), keeping many bodies in flight as `rebilly-webhookd replay` does. Three events in
//! four create a new customer (`cus_seed_0000000`, `cus_seed_0000001`, ... numbered densely, so a
//! load generator can pick any id below the printed `seeded_customers`), the fourth is a higher
//! revision of a customer already seeded. Running it again continues where it stopped.
//!
//! `bench_seed files --dir DIR --count N` writes N such bodies as `DIR/0000000.json`, ... (for
//! timing `rebilly-webhookd replay DIR`); replayed in name order, every one is applied.

use clap::{Parser, Subcommand};
use rebilly_webhookd::auth::AuthenticatedBody;
use rebilly_webhookd::config::Settings;
use rebilly_webhookd::ingest::{Pipeline, Receipt};
use rebilly_webhookd::storage::Store;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Bodies kept in flight, so that the writer always has a full batch waiting.
const WINDOW: usize = 4096;
/// One event in `UPDATE_EVERY` is an update of an existing customer.
const UPDATE_EVERY: u64 = 4;

#[derive(Debug, Parser)]
#[command(about = "Seed a rebilly-webhookd database with synthetic customer events")]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Ingest events until the event log holds `--total` events.
    Seed {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        total: u64,
    },
    /// Write `--count` bodies as `.json` files into `--dir`.
    Files {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        count: u64,
    },
}

const FIRST_NAMES: [&str; 16] = [
    "Alice", "Bruno", "Chloé", "David", "Emma", "Farid", "Giulia", "Hugo", "Inès", "Jonas",
    "Karin", "Léa", "Mateo", "Nora", "Oscar", "Paula",
];
const LAST_NAMES: [&str; 16] = [
    "Martin", "Bernard", "Dubois", "Schmidt", "Rossi", "García", "Smith", "Müller", "Lefebvre",
    "Moreau", "Fischer", "Romano", "López", "Jones", "Laurent", "Weber",
];
/// (country, region, city, postal code prefix); FR is one customer in eight.
const PLACES: [(&str, &str, &str, &str); 8] = [
    ("FR", "IDF", "Paris", "750"),
    ("DE", "BE", "Berlin", "101"),
    ("US", "NY", "New York", "100"),
    ("GB", "LND", "London", "EC1"),
    ("ES", "MD", "Madrid", "280"),
    ("IT", "RM", "Roma", "001"),
    ("CA", "QC", "Montréal", "H2X"),
    ("NL", "NH", "Amsterdam", "101"),
];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];
const SOURCES: [&str; 4] = ["web", "partner", "import", "mobile"];
const JOBS: [&str; 5] = [
    "Engineer",
    "Consultant",
    "Designer",
    "Teacher",
    "Accountant",
];

/// `2026-03-03T09:00:00+00:00`, as Rebilly writes times.
fn rebilly_time(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A `customer-created` (revision 1) or `customer-updated` body with a full Customer resource,
/// about 1.5 KB. Attributes that do not change with revisions are derived from the id.
fn customer_event(prefix: &str, number: u64, revision: i64) -> Vec<u8> {
    let id = format!("cus_{prefix}_{number:07}");
    let mut stable = fastrand::Rng::with_seed(number ^ 0x5eed_cafe);
    let first = FIRST_NAMES[stable.usize(..FIRST_NAMES.len())];
    let last = LAST_NAMES[stable.usize(..LAST_NAMES.len())];
    let (country, region, city, postal) = PLACES[stable.usize(..PLACES.len())];
    let created = 1_546_300_800 + stable.i64(0..220_000_000); // 2019-01-01 onwards
    let updated = created + revision * 3_600 + stable.i64(0..3_600);
    let email = format!(
        "{}.{}.{number}@example.com",
        first.to_lowercase(),
        last.to_lowercase()
    );
    let phone = format!("+3361{:07}", number % 10_000_000);
    let organization = format!("{last} {} SARL", JOBS[stable.usize(..JOBS.len())]);
    let payments = revision - 1;
    let revenue = payments * (1_000 + stable.i64(0..9_000));
    let event_type = if revision == 1 {
        "customer-created"
    } else {
        "customer-updated"
    };
    let href = format!("https://api.rebilly.com/organizations/org_bench_01/customers/{id}");
    let body = serde_json::json!({
        "eventType": event_type,
        "customerId": id,
        "_embedded": {"customer": {
            "id": id,
            "email": email,
            "firstName": first,
            "lastName": last,
            "primaryAddress": {
                "firstName": first,
                "lastName": last,
                "organization": organization,
                "address": format!("{} Rue {}", 1 + number % 200, last),
                "address2": null,
                "city": city,
                "region": region,
                "country": country,
                "postalCode": format!("{postal}{:02}", number % 100),
                "phoneNumbers": [{"label": "mobile", "value": phone, "primary": true}],
                "emails": [{"label": "main", "value": email, "primary": true}],
                "dob": format!("19{:02}-{:02}-{:02}", 50 + number % 50, 1 + number % 12, 1 + number % 28),
                "jobTitle": JOBS[stable.usize(..JOBS.len())]
            },
            "defaultPaymentInstrument": {
                "method": "payment-card",
                "paymentInstrumentId": format!("pin_{number:07}")
            },
            "createdTime": rebilly_time(created),
            "updatedTime": rebilly_time(updated),
            "revision": revision,
            "websiteId": "web_main_01",
            "customFields": {
                "loyaltyTier": TIERS[(revision as usize + number as usize) % TIERS.len()],
                "source": SOURCES[stable.usize(..SOURCES.len())],
                "crmId": format!("crm-{:08x}", stable.u32(..)),
                "marketingOptIn": stable.bool()
            },
            "tags": [
                {"id": "tag_newsletter", "name": "newsletter",
                 "createdTime": "2024-01-01T00:00:00+00:00", "updatedTime": "2024-01-01T00:00:00+00:00"},
                {"id": format!("tag_{}", country.to_lowercase()), "name": country,
                 "createdTime": "2024-01-01T00:00:00+00:00", "updatedTime": "2024-01-01T00:00:00+00:00"}
            ],
            "isEddRequired": false,
            "invoiceCount": payments,
            "paymentCount": payments,
            "lastPaymentTime": if payments > 0 { serde_json::Value::from(rebilly_time(updated)) } else { serde_json::Value::Null },
            "lifetimeRevenue": {"amount": revenue, "currency": "EUR"},
            "averageValue": {"amount": if payments > 0 { revenue / payments } else { 0 }, "currency": "EUR"},
            "organizationId": "org_bench_01",
            "_links": [{"rel": "self", "href": href}]
        }},
        "_links": [{"rel": "customer", "href": href}]
    });
    serde_json::to_vec(&body).expect("a JSON value serializes")
}

/// Yields (customer number, revision) for event `n` of a run that starts with `customers`
/// customers and gives updates revisions from `revision_base` upwards (higher than any before).
struct Plan {
    customers: u64,
    revision_base: i64,
    rng: fastrand::Rng,
}

impl Plan {
    fn next(&mut self, n: u64) -> (u64, i64) {
        if n % UPDATE_EVERY == UPDATE_EVERY - 1 && self.customers > 0 {
            (
                self.rng.u64(..self.customers),
                self.revision_base + n as i64,
            )
        } else {
            self.customers += 1;
            (self.customers - 1, 1)
        }
    }
}

/// Counts through a connection of its own: the store's interface does not expose SQL.
fn counts(path: &std::path::Path) -> Result<(u64, u64), Box<dyn std::error::Error>> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let projection = rebilly_webhookd::storage::sqlite::projection_path(path);
    let projection = projection
        .to_str()
        .ok_or("the projection path is not UTF-8")?;
    conn.execute("ATTACH DATABASE ?1 AS projection", [projection])?;
    let events: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
    // Seeded ids sort between `cus_seed_` and `cus_seed``; a range scan of the primary key.
    let seeded: i64 = conn.query_row(
        "SELECT COUNT(*) FROM customers WHERE id >= 'cus_seed_' AND id < 'cus_seed`'",
        [],
        |r| r.get(0),
    )?;
    Ok((events as u64, seeded as u64))
}

async fn seed(config: PathBuf, total: u64) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let settings = Settings::load(Some(&config))?;
    let store = Store::open(&settings.storage)?;
    let (events, seeded) = counts(&settings.storage.path)?;
    let to_add = total.saturating_sub(events);
    let started = Instant::now();
    let pipeline = Pipeline::new(store.clone());
    let mut plan = Plan {
        customers: seeded,
        revision_base: events as i64 + 2,
        rng: fastrand::Rng::with_seed(events),
    };
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    let mut tally = |receipt: Receipt| *outcomes.entry(receipt.status.as_str()).or_default() += 1;
    for n in 0..to_add {
        let (number, revision) = plan.next(n);
        let body = customer_event("seed", number, revision);
        let answer = pipeline
            .enqueue(AuthenticatedBody::from_operator(body.into()))
            .await?;
        in_flight.push_back(Box::pin(answer));
        if in_flight.len() >= WINDOW
            && let Some(answer) = in_flight.pop_front()
        {
            tally(answer.await?);
        }
        if (n + 1) % 100_000 == 0 {
            eprintln!("bench_seed: {} of {to_add} events queued", n + 1);
        }
    }
    while let Some(answer) = in_flight.pop_front() {
        tally(answer.await?);
    }
    let (events_after, seeded_after) = counts(&settings.storage.path)?;
    store.close().await;
    let seconds = started.elapsed().as_secs_f64();
    let summary: Vec<String> = outcomes.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "events={events_after} seeded_customers={seeded_after} added={to_add} seconds={seconds:.1} \
         rate={:.0} {}",
        to_add as f64 / seconds.max(1e-9),
        summary.join(" ")
    );
    let applied = outcomes.get("applied").copied().unwrap_or(0);
    Ok(if applied == to_add {
        ExitCode::SUCCESS
    } else {
        eprintln!("bench_seed: {} events were not applied", to_add - applied);
        ExitCode::FAILURE
    })
}

fn files(dir: PathBuf, count: u64) -> Result<ExitCode, Box<dyn std::error::Error>> {
    std::fs::create_dir_all(&dir)?;
    let mut plan = Plan {
        customers: 0,
        revision_base: 2,
        rng: fastrand::Rng::with_seed(count),
    };
    let mut bytes = 0;
    for n in 0..count {
        let (number, revision) = plan.next(n);
        let body = customer_event("replay", number, revision);
        bytes += body.len();
        std::fs::write(dir.join(format!("{n:07}.json")), body)?;
    }
    println!(
        "files={count} bytes={bytes} average_bytes={}",
        bytes as u64 / count.max(1)
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Mode::Seed { config, total } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|runtime| runtime.block_on(seed(config, total))),
        Mode::Files { dir, count } => files(dir, count),
    };
    result.unwrap_or_else(|error| {
        eprintln!("bench_seed: {error}");
        ExitCode::FAILURE
    })
}
