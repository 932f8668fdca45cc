//! The command line: `serve`, `replay`, `sync`, queries, operator actions and `send`, all thin faces
//! over the library. Output is JSON; errors are one line on stderr with a non-zero exit.

use crate::admin;
use crate::auth::AuthenticatedBody;
use crate::config::{HandlerSettings, Settings, StorageBackend};
use crate::ingest::{Pipeline, Receipt};
use crate::progress::Progress;
use crate::query::{CustomerQuery, EventListOptions, ListOptions, parse_event_query};
use crate::storage::{Status, Store};
use crate::{retention, send, server, telemetry};
use clap::{Args, Parser, Subcommand};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "rebilly-webhookd",
    version,
    about = "A durable receiver for Rebilly webhooks"
)]
pub struct Cli {
    /// Configuration file (TOML); built-in defaults and REBILLY_WEBHOOKD__* variables apply.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "REBILLY_WEBHOOKD_CONFIG"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon.
    Serve,
    /// Feed webhook bodies from files or folders through the ingest pipeline.
    Replay {
        /// `.json` files, or folders whose `.json` files are read in name order.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Query the customer projection.
    #[command(subcommand)]
    Customers(CustomersCommand),
    /// Inspect and replay the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Operate asynchronous handlers.
    #[command(subcommand)]
    Handlers(HandlersCommand),
    /// Maintain the projection.
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// Post bodies to a running daemon as Rebilly would, printing each answer.
    Send {
        #[arg(long)]
        url: String,
        /// Basic credentials, USER:PASSWORD.
        #[arg(long, value_name = "USER:PASSWORD")]
        basic: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Fetch customers from Rebilly's Customers API into the projection (`[rebilly]`).
    Sync {
        /// Read every customer from the beginning instead of resuming from the last sync.
        #[arg(long)]
        full: bool,
    },
    /// Exit 0 if the daemon on the configured address answers its health check.
    Healthcheck {
        /// Check readiness (a real database write) instead of liveness.
        #[arg(long)]
        ready: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CustomersCommand {
    /// Print one projected customer.
    Get { id: String },
    /// Print customers, with the HTTP list's paging and query options.
    List(CustomerListArgs),
}

#[derive(Debug, Args)]
struct CustomerListArgs {
    #[arg(long)]
    limit: Option<String>,
    #[arg(long)]
    offset: Option<String>,
    /// Partial text over names and emails.
    #[arg(long)]
    q: Option<String>,
    /// Rebilly's filter grammar: `field:v1,v2;field2:!v`, ranges `a..b`, `a..`, `..b`
    /// (see the README).
    #[arg(long, allow_hyphen_values = true)]
    filter: Option<String>,
    /// Field name, `-` prefix for descending.
    #[arg(long, allow_hyphen_values = true)]
    sort: Option<String>,
    /// Comma-separated fields to print.
    #[arg(long)]
    fields: Option<String>,
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print the event log, newest first.
    List {
        #[arg(long)]
        customer: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long = "event-type")]
        event_type: Option<String>,
        /// Rebilly's filter grammar over id, customerId, eventType, status, revision and
        /// receivedTime, e.g. `status:!duplicate;receivedTime:2026-01-01T00:00:00Z..`.
        #[arg(long, allow_hyphen_values = true)]
        filter: Option<String>,
        #[arg(long)]
        limit: Option<String>,
        #[arg(long)]
        offset: Option<String>,
    },
    /// Print one event with its raw body and handler attempts.
    Show { id: i64 },
    /// Run a stored event through the pipeline again.
    Replay { id: i64 },
    /// Clear raw bodies older than a number of days, keeping metadata and the projection.
    Prune {
        #[arg(long = "older-than-days", value_name = "DAYS")]
        older_than_days: u64,
        /// Confirms the bodies may be discarded.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum HandlersCommand {
    /// Give a handler's dead events a fresh set of attempts.
    Redrive { name: String },
}

#[derive(Debug, Subcommand)]
enum ProjectionCommand {
    /// Recompute the projection from the event log alone.
    Rebuild {
        /// Leave out stored bodies that no longer parse (they are listed) instead of failing.
        #[arg(long)]
        skip_unparsable: bool,
    },
}

/// A failure worth one line on stderr.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Self(error.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("rebilly-webhookd: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rebilly-webhookd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command, settings)) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("rebilly-webhookd: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, settings: Settings) -> Result<ExitCode, Failure> {
    match command {
        Command::Serve => {
            let listener = server::bind(&settings).await?;
            server::run(settings, listener, server::shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { paths } => replay(&settings, &paths).await,
        Command::Customers(command) => customers(&settings, command).await,
        Command::Events(command) => events(&settings, command).await,
        Command::Handlers(HandlersCommand::Redrive { name }) => {
            if !settings.handlers.iter().any(|h| h.name == name) {
                return Err(Failure(format!(
                    "no handler named {name} in the configuration"
                )));
            }
            let store = open_existing(&settings)?;
            let count = store.redrive(name.clone()).await;
            store.close().await;
            let count = count?;
            print_json(&serde_json::json!({"handler": name, "redriven": count}));
            Ok(ExitCode::SUCCESS)
        }
        Command::Projection(ProjectionCommand::Rebuild { skip_unparsable }) => {
            let store = open_existing(&settings)?;
            let progress = std::sync::Arc::new(Progress::for_command("rebuild"));
            let reporter = progress.clone();
            let result = store
                .rebuild_projection_reporting(skip_unparsable, move |done, total| {
                    reporter.set_total(total);
                    reporter.update(done, "events replayed");
                })
                .await;
            match &result {
                Ok(report) => progress.finish(report.replayed, "events replayed"),
                Err(_) => progress.abandon(),
            }
            store.close().await;
            print_json(&result?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Send { url, basic, files } => {
            let results = send::send_files(&url, basic.as_deref(), &files).await?;
            for sent in &results {
                match &sent.result {
                    Ok((status, body)) => {
                        println!("{}: {status} {}", sent.path.display(), body.trim())
                    }
                    Err(error) => println!("{}: error: {error}", sent.path.display()),
                }
            }
            Ok(exit_code(results.iter().all(send::Sent::succeeded)))
        }
        Command::Sync { full } => sync(&settings, full).await,
        Command::Healthcheck { ready } => healthcheck(&settings, ready).await,
    }
}

fn exit_code(success: bool) -> ExitCode {
    if success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("rebilly-webhookd: cannot print JSON: {error}"),
    }
}

/// Opens the database for a command that reads or repairs what was received; unlike `serve`
/// and `replay`, such a command never creates an empty database by mistake.
fn open_existing(settings: &Settings) -> Result<Store, Failure> {
    let path = &settings.storage.path;
    if settings.storage.backend == StorageBackend::Sqlite && !path.exists() {
        return Err(Failure(format!(
            "no database at {} (storage.path): nothing has been received there yet",
            path.display()
        )));
    }
    Ok(Store::open(&settings.storage)?)
}

async fn customers(settings: &Settings, command: CustomersCommand) -> Result<ExitCode, Failure> {
    let store = open_existing(settings)?;
    let result = match command {
        CustomersCommand::Get { id } => match store.customer(id.clone()).await? {
            Some(customer) => {
                print_json(&customer);
                Ok(ExitCode::SUCCESS)
            }
            None => Err(Failure(format!("no customer with id {id}"))),
        },
        CustomersCommand::List(args) => {
            let options = ListOptions {
                limit: args.limit,
                offset: args.offset,
                sort: args.sort,
                filter: args.filter,
                q: args.q,
                fields: args.fields,
            };
            let query = CustomerQuery::parse(&options)?;
            let page = store.customers(query).await?;
            print_json(&page.customers);
            Ok(ExitCode::SUCCESS)
        }
    };
    store.close().await;
    result
}

async fn events(settings: &Settings, command: EventsCommand) -> Result<ExitCode, Failure> {
    if let EventsCommand::Prune { yes: false, .. } = command {
        return Err(Failure(
            "events prune discards raw bodies for good: add --yes to confirm".into(),
        ));
    }
    let store = open_existing(settings)?;
    let result = events_with(&store, &settings.handlers, command).await;
    store.close().await;
    result
}

async fn events_with(
    store: &Store,
    handlers: &[HandlerSettings],
    command: EventsCommand,
) -> Result<ExitCode, Failure> {
    match command {
        EventsCommand::List {
            customer,
            status,
            event_type,
            filter,
            limit,
            offset,
        } => {
            let query = parse_event_query(&EventListOptions {
                customer_id: customer,
                status,
                event_type,
                filter,
                limit,
                offset,
            })?;
            let (events, _total) = store.events(query).await?;
            print_json(&events);
            Ok(ExitCode::SUCCESS)
        }
        EventsCommand::Show { id } => match store.event(id).await? {
            Some(detail) => {
                print_json(&detail);
                Ok(ExitCode::SUCCESS)
            }
            None => Err(Failure(format!("no event with id {id}"))),
        },
        EventsCommand::Replay { id } => {
            let pipeline = Pipeline::new(store.clone());
            match admin::replay_event(&pipeline, id).await? {
                Some(receipt) => {
                    print_json(&admin::replay_report(id, &receipt));
                    Ok(exit_code(receipt.status != Status::Rejected))
                }
                None => Err(Failure(format!(
                    "no event with id {id}, or its body was pruned"
                ))),
            }
        }
        EventsCommand::Prune {
            older_than_days, ..
        } => {
            let cutoff = retention::cutoff_ms(older_than_days, crate::clock::now_ms());
            let progress = Progress::for_command("prune");
            let count = retention::prune_before(store, cutoff, handlers, &progress).await;
            match &count {
                Ok(count) => progress.finish(*count, "bodies cleared"),
                Err(_) => progress.abandon(),
            }
            let count = count?;
            print_json(&serde_json::json!({"pruned": count, "olderThanDays": older_than_days}));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Bodies kept in flight by `replay`, so that the writer can batch them.
const REPLAY_WINDOW: usize = 1024;

/// Expands folders into their `.json` files, in name order; files are kept as given.
fn replay_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| Failure(format!("cannot read {}: {e}", path.display())))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && p.extension().is_some_and(|ext| ext == "json"))
                .collect();
            entries.sort();
            files.extend(entries);
        } else if path.is_file() {
            files.push(path.clone());
        } else {
            return Err(Failure(format!(
                "{}: no such file or folder",
                path.display()
            )));
        }
    }
    Ok(files)
}

fn describe(path: &Path, receipt: &Receipt) -> String {
    match &receipt.rejection {
        Some(error) => format!(
            "{}: rejected (event {}): {error}",
            path.display(),
            receipt.event_id
        ),
        None => format!(
            "{}: {} (event {})",
            path.display(),
            receipt.status.as_str(),
            receipt.event_id
        ),
    }
}

async fn replay(settings: &Settings, paths: &[PathBuf]) -> Result<ExitCode, Failure> {
    let files = replay_files(paths)?;
    let store = Store::open(&settings.storage)?;
    let pipeline = Pipeline::new(store.clone());
    let mut counts: BTreeMap<&'static str, u64> =
        Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
    let mut in_flight = VecDeque::new();
    let mut failed = false;
    let progress = Progress::for_command("replay");
    progress.set_total(files.len() as u64);
    for path in files {
        let body = match tokio::fs::read(&path).await {
            Ok(body) => body,
            Err(error) => {
                println!("{}: unreadable: {error}", path.display());
                failed = true;
                continue;
            }
        };
        let answer = pipeline
            .enqueue(AuthenticatedBody::from_operator(body.into()))
            .await?;
        in_flight.push_back((path, Box::pin(answer)));
        if in_flight.len() >= REPLAY_WINDOW
            && let Some((path, answer)) = in_flight.pop_front()
        {
            let receipt = answer.await?;
            report(&path, &receipt, &mut counts, &progress);
        }
    }
    while let Some((path, answer)) = in_flight.pop_front() {
        let receipt = answer.await?;
        report(&path, &receipt, &mut counts, &progress);
    }
    store.close().await;
    let rejected = counts["rejected"];
    let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    progress.finish(counts.values().sum(), &summary.join(", "));
    println!(
        "replayed {} bodies: {}",
        counts.values().sum::<u64>(),
        summary.join(", ")
    );
    Ok(exit_code(rejected == 0 && !failed))
}

fn report(
    path: &Path,
    receipt: &Receipt,
    counts: &mut BTreeMap<&'static str, u64>,
    progress: &Progress,
) {
    println!("{}", describe(path, receipt));
    *counts.entry(receipt.status.as_str()).or_default() += 1;
    progress.update(counts.values().sum(), "bodies replayed");
}

/// Prints the JSON summary on stdout in every case; a failure also gets its one line on stderr.
async fn sync(settings: &Settings, full: bool) -> Result<ExitCode, Failure> {
    let (client, options) = crate::sync::prepare(settings, full)?;
    let store = Store::open(&settings.storage)?;
    let progress = Progress::for_command("sync");
    let (summary, error) = crate::sync::run(&store, &client, &options, &progress).await;
    store.close().await;
    print_json(&summary);
    match error {
        None => Ok(ExitCode::SUCCESS),
        Some(error) => Err(Failure(error.to_string())),
    }
}

async fn healthcheck(settings: &Settings, ready: bool) -> Result<ExitCode, Failure> {
    let mut address = settings.server.listen;
    if address.ip().is_unspecified() {
        address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let path = if ready { "readyz" } else { "healthz" };
    let url = format!("http://{address}/{path}");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()?;
    let status = client.get(&url).send().await?.status();
    if status.is_success() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Failure(format!("{url} answered {status}")))
    }
}
