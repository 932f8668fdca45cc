//! Drives asynchronous handlers from the event log.
//!
//! Each handler has a worker that reads applied events after its cursor, runs the handler, and
//! records the results and the new cursor in one write. A failed event is retried with
//! exponential backoff and jitter; the customer's later events wait behind it, so a handler sees
//! one customer's events in order. After `max_attempts` the event is marked `dead` and waits
//! for an operator's redrive, holding its customer's later events back with it.
//!
//! An event waits behind every customer it touches: a merge behind both the customer merged
//! away and its target, so that an undelivered update of the merged-away customer never
//! reaches the handler after the merge.
//!
//! A handler seen for the first time starts at its configured position (by default after the
//! newest event). An event whose body retention has pruned is never dispatched: the handler
//! skips it, and the skip and its reason are recorded with the event (`events show`).

use crate::clock::now_ms;
use crate::config::{HandlerSettings, HandlerStart};
use crate::handlers::{self, AsyncHandler, DispatchedEvent};
use crate::storage::{Candidate, Outcome, Work};
use crate::storage::{HANDLER_LEASE, StorageError, Store};
use crate::telemetry;
use std::time::Duration;
use tokio::sync::watch;

/// Events read per pass.
const PASS_SIZE: u32 = 256;
/// Failed passes of every handler, logged at most once per interval.
static PASS_FAILURES: crate::log_limit::LogLimit =
    crate::log_limit::LogLimit::new(crate::log_limit::INTERVAL);
/// Pause after a storage error before the worker tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// How often a pass renews its lease on the handler: twice within the lease's term, even when
/// a renewal takes as long as it may.
const LEASE_RENEWAL: Duration = Duration::from_millis(HANDLER_LEASE.as_millis() as u64 / 4);
/// Longest idle sleep: redrives (by the admin endpoint or by another process, such as
/// `handlers redrive`) and events written by other processes wake no watcher, so an idle worker
/// looks again at least this often.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Retry timing of one handler.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub max_attempts: u32,
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl Backoff {
    /// The delay after the `attempts`-th failure: doubling, capped, with jitter in [½, 1].
    pub fn delay_ms(&self, attempts: u32, jitter: f64) -> u64 {
        let exponent = attempts.saturating_sub(1).min(32);
        let base = self
            .initial_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_ms);
        let factor = 0.5 + 0.5 * jitter.clamp(0.0, 1.0);
        ((base as f64) * factor) as u64
    }
}

/// Whether a worker pass did something; it sleeps only when idle.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    Processed,
    Idle,
}

pub struct Worker {
    name: String,
    handler: Box<dyn AsyncHandler>,
    backoff: Backoff,
    start: HandlerStart,
    store: Store,
}

/// Why a pruned event is skipped, as recorded with it.
const PRUNED_REASON: &str = "the body was pruned by retention before this handler reached it";

impl Worker {
    pub fn new(settings: &HandlerSettings, store: Store) -> Self {
        Self::with_handler(settings, handlers::build(settings), store)
    }

    pub fn with_handler(
        settings: &HandlerSettings,
        handler: Box<dyn AsyncHandler>,
        store: Store,
    ) -> Self {
        Self {
            name: settings.name.clone(),
            handler,
            backoff: Backoff {
                max_attempts: settings.max_attempts,
                initial_ms: settings.backoff_initial_ms,
                max_ms: settings.backoff_max_ms,
            },
            start: settings.start,
            store,
        }
    }

    /// Runs until `shutdown` turns true, finishing the event in hand first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut committed = self.store.committed();
        if !self.register(&mut shutdown).await {
            return;
        }
        while !*shutdown.borrow() {
            match self.pass(&shutdown).await {
                Ok(Pass::Processed) => continue,
                Ok(Pass::Idle) => {
                    let wait = self.idle_wait().await;
                    tokio::select! {
                        _ = committed.changed() => {}
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Err(StorageError::LeaseLost(_)) => {
                    // Another daemon works the handler now; this one looks again when idle.
                    tracing::warn!(handler = %self.name,
                        "handler taken over by another daemon; this pass's results were dropped");
                }
                Err(error) => {
                    // Storage errors (a full disk) repeat every pause: one line per interval.
                    if let Some(suppressed) = PASS_FAILURES.admit() {
                        tracing::error!(handler = %self.name, error = %error, suppressed,
                            "handler pass failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        tracing::info!(handler = %self.name, "handler worker stopped");
    }

    /// Makes sure the handler has a cursor before its first pass, so that a new handler
    /// starts where it is configured to and never from position 0 by default. Returns false
    /// if shutdown came first.
    async fn register(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        while !*shutdown.borrow() {
            match self
                .store
                .start_handler(self.name.clone(), self.start)
                .await
            {
                Ok(cursor) => {
                    tracing::info!(handler = %self.name, cursor, "handler worker started");
                    return true;
                }
                Err(error) => {
                    tracing::error!(handler = %self.name, error = %error, "cannot start handler");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        false
    }

    async fn idle_wait(&self) -> Duration {
        let next = self
            .store
            .next_handler_due(self.name.clone())
            .await
            .ok()
            .flatten();
        match next {
            Some(due) => {
                Duration::from_millis(due.saturating_sub(now_ms()).max(1) as u64).min(IDLE_POLL)
            }
            None => IDLE_POLL,
        }
    }

    async fn pass(&self, shutdown: &watch::Receiver<bool>) -> Result<Pass, StorageError> {
        let work = self
            .store
            .handler_work(self.name.clone(), PASS_SIZE)
            .await?;
        if work.due.is_empty() && work.fresh.is_empty() {
            self.publish_stats().await;
            return Ok(Pass::Idle);
        }
        let (cursor, results) = self.holding_lease(self.run_handler(work, shutdown)).await?;
        self.store
            .record_handler_pass(self.name.clone(), cursor, results)
            .await?;
        self.publish_stats().await;
        Ok(Pass::Processed)
    }

    /// Runs `pass` while renewing this daemon's lease on the handler, so that no other daemon
    /// on the same database takes the handler over meanwhile. A pass continues only while its
    /// lease is renewed: if a renewal fails or comes too late, the pass stops, records nothing
    /// and is answered with an error, since another daemon may take over once the lease lapses
    /// and two daemons must never work one customer's events at once. The next holder delivers
    /// what this pass had in hand.
    async fn holding_lease<T>(&self, pass: impl Future<Output = T>) -> Result<T, StorageError> {
        tokio::pin!(pass);
        loop {
            tokio::select! {
                done = &mut pass => return Ok(done),
                () = tokio::time::sleep(LEASE_RENEWAL) => {}
            }
            let renewal = tokio::time::timeout(
                LEASE_RENEWAL,
                self.store.renew_handler_lease(self.name.clone()),
            );
            tokio::pin!(renewal);
            let renewed = tokio::select! {
                done = &mut pass => return Ok(done),
                renewed = &mut renewal => renewed,
            };
            match renewed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) | Err(_) => return Err(StorageError::LeaseLost(self.name.clone())),
                Ok(Err(error)) => return Err(error),
            }
        }
    }

    /// Runs the handler over due retries, then fresh events; stops early on shutdown.
    async fn run_handler(
        &self,
        mut work: Work,
        shutdown: &watch::Receiver<bool>,
    ) -> (i64, Vec<(DispatchedEvent, Outcome)>) {
        let mut results = Vec::new();
        for owed in std::mem::take(&mut work.due) {
            if *shutdown.borrow() {
                return (work.cursor, results);
            }
            let outcome = self.dispatch(&owed, false).await;
            results.push(settled(owed.event, outcome, &mut work));
        }
        let mut cursor = work.cursor;
        for fresh in std::mem::take(&mut work.fresh) {
            if *shutdown.borrow() {
                break;
            }
            cursor = fresh.event.id;
            let blocked = fresh
                .event
                .customers
                .iter()
                .any(|c| work.blocked.contains(c));
            let outcome = self.dispatch(&fresh, blocked).await;
            results.push(settled(fresh.event, outcome, &mut work));
        }
        (cursor, results)
    }

    /// What to do with one event: skip it if its body is gone, park it behind an earlier
    /// event of one of its customers, or attempt it.
    async fn dispatch(&self, candidate: &Candidate, blocked: bool) -> Outcome {
        if candidate.body_pruned {
            tracing::warn!(handler = %self.name, event_id = candidate.event.id,
                "event skipped: its body was pruned before this handler reached it");
            telemetry::record_handler_result(&self.name, "skipped");
            return Outcome::Skipped {
                reason: PRUNED_REASON.to_owned(),
            };
        }
        if blocked {
            // Parked, not attempted yet.
            return Outcome::Retry {
                attempts: 0,
                next_attempt_ms: now_ms(),
                error: None,
            };
        }
        self.attempt(&candidate.event, candidate.attempts).await
    }

    async fn attempt(&self, event: &DispatchedEvent, attempts_before: u32) -> Outcome {
        let attempts = attempts_before + 1;
        match self.handler.handle(event).await {
            Ok(()) => {
                telemetry::record_handler_result(&self.name, "delivered");
                Outcome::Delivered
            }
            Err(error) if attempts >= self.backoff.max_attempts => {
                tracing::warn!(handler = %self.name, event_id = event.id, attempts, error = %error,
                    "handler gave up; event marked dead");
                telemetry::record_handler_result(&self.name, "dead");
                Outcome::Dead { attempts, error }
            }
            Err(error) => {
                let delay = self.backoff.delay_ms(attempts, fastrand::f64());
                tracing::info!(handler = %self.name, event_id = event.id, attempts, retry_in_ms = delay,
                    error = %error, "handler failed; will retry");
                telemetry::record_handler_result(&self.name, "retry");
                Outcome::Retry {
                    attempts,
                    next_attempt_ms: now_ms() + delay as i64,
                    error: Some(error),
                }
            }
        }
    }

    async fn publish_stats(&self) {
        if let Ok(stats) = self.store.handler_stats(self.name.clone()).await {
            telemetry::record_handler_stats(&self.name, stats);
        }
    }
}

/// An event not delivered now holds back the later events of every customer it touches.
fn settled(
    event: DispatchedEvent,
    outcome: Outcome,
    work: &mut Work,
) -> (DispatchedEvent, Outcome) {
    if matches!(outcome, Outcome::Retry { .. } | Outcome::Dead { .. }) {
        work.blocked.extend(event.customers.iter().cloned());
    }
    (event, outcome)
}

/// Starts a worker per configured handler; they stop when `shutdown` turns true.
pub fn spawn_all(
    settings: &[HandlerSettings],
    store: &Store,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    settings
        .iter()
        .map(|s| tokio::spawn(Worker::new(s, store.clone()).run(shutdown.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let backoff = Backoff {
            max_attempts: 5,
            initial_ms: 100,
            max_ms: 1_000,
        };
        assert_eq!(backoff.delay_ms(1, 1.0), 100);
        assert_eq!(backoff.delay_ms(2, 1.0), 200);
        assert_eq!(backoff.delay_ms(3, 1.0), 400);
        assert_eq!(backoff.delay_ms(10, 1.0), 1_000);
        assert_eq!(backoff.delay_ms(2, 0.0), 100);
        assert_eq!(backoff.delay_ms(200, 0.5), 750);
    }
}
