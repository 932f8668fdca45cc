//! The daemon: storage, handler workers and the HTTP server, started together and stopped
//! gracefully. `run` takes its listener and shutdown signal from the caller, so tests bind
//! port 0 and stop the server when they like.

use crate::auth::Authenticator;
use crate::config::{MIN_EXPOSED_TOKEN_CHARS, Settings};
use crate::dispatch;
use crate::http::{self, AppState};
use crate::ingest::Pipeline;
use crate::retention;
use crate::storage::Store;
use crate::telemetry;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds the configured address; port 0 picks a free port.
pub async fn bind(settings: &Settings) -> Result<TcpListener, ServeError> {
    let address = settings.server.listen;
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Runs until `shutdown` completes, then stops accepting, answers what is in flight, lets the
/// handlers finish their current event and flushes the writer, within the grace period.
pub async fn run(
    mut settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    settings.require_webhook_credential()?;
    settings.require_safe_exposure()?;
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    if settings.auth.allow_unauthenticated && !settings.auth.has_credential() {
        tracing::warn!(
            "UNAUTHENTICATED MODE: auth.allow_unauthenticated is set and no webhook credential is \
             configured; anyone who can reach this port can write events"
        );
    }
    if settings
        .api
        .token
        .as_ref()
        .is_some_and(|t| t.expose().chars().count() < MIN_EXPOSED_TOKEN_CHARS)
    {
        tracing::warn!(
            "api.token is shorter than {MIN_EXPOSED_TOKEN_CHARS} characters: accepted on loopback \
             only; use a long random token"
        );
    }
    // Opening migrates the database and catches the projection up with the event log, which
    // can take long after a crash: off the async workers. Connections wait in the listen queue.
    let storage = settings.storage.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&storage))
        .await
        .map_err(crate::storage::StorageError::from)??;
    let address = listener.local_addr()?;
    tracing::info!(%address, database = %settings.storage.describe(), "listening");

    // Before any delivery can be accepted, so that a new handler starting "now" starts at the
    // log as it stood when the daemon started, not wherever its worker first ran.
    for handler in &settings.handlers {
        store
            .start_handler(handler.name.clone(), handler.start)
            .await?;
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let workers = dispatch::spawn_all(&settings.handlers, &store, stop_rx.clone());
    let handler_names: Vec<String> = settings.handlers.iter().map(|h| h.name.clone()).collect();
    let pruner = retention::spawn(
        &settings.storage,
        settings.handlers.clone(),
        store.clone(),
        stop_rx.clone(),
    );
    let reconciler = crate::sync::schedule::spawn(&settings, store.clone(), stop_rx.clone());
    let authenticator = Authenticator::new(&settings.auth);
    // The authenticator keeps only hashes of the Basic and Digest passwords: the clear ones
    // need not outlive start-up (a dropped Secret overwrites its bytes).
    settings.auth.basic.clear();
    settings.auth.digest.clear();
    let state = AppState {
        pipeline: Pipeline::new(store.clone()),
        store: store.clone(),
        authenticator: Arc::new(authenticator),
        api_token: settings.api.token.clone(),
        max_body_bytes: settings.server.max_body_bytes,
        handler_names: Arc::new(handler_names),
        metrics: telemetry::metrics_handle(),
        readiness: Arc::new(http::Readiness::new(settings.server.readiness_cache())),
    };
    let app = http::router(
        state,
        http::Limits {
            request_timeout: settings.server.request_timeout(),
            deliveries: settings.server.max_concurrent_deliveries,
            others: settings.server.max_concurrent_requests,
        },
    );

    let (signalled_tx, mut signalled_rx) = watch::channel(false);
    let serving = tokio::spawn(http::serve(
        listener,
        app,
        settings.server.request_timeout(),
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections; finishing requests in flight");
            let _ = signalled_tx.send(true);
        },
    ));
    let grace = settings.server.shutdown_grace();
    // The grace period starts at the signal; the server normally finishes well before it.
    let grace_over = async {
        let _ = signalled_rx.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = serving => {
            if let Err(error) = result {
                tracing::error!(error = %error, "the HTTP server task failed");
            }
        }
        () = grace_over => {
            tracing::warn!(grace_seconds = grace.as_secs(), "grace period over; closing");
        }
    }
    let _ = stop_tx.send(true);
    for worker in workers.into_iter().chain(pruner).chain(reconciler) {
        let _ = tokio::time::timeout(grace, worker).await;
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
