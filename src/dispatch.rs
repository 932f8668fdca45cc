//! Drives asynchronous handlers from the event log.
//!
//! Each handler has a worker that reads applied events after its cursor, runs the handler, and
//! records the results and the new cursor in one write. A failed event is retried with
//! exponential backoff and jitter; the customer's later events wait behind it, so a handler sees
//! one customer's events in order. After `max_attempts` the event is marked `dead` and waits
//! for an operator's redrive, holding its customer's later events back with it.

use crate::clock::now_ms;
use crate::config::HandlerSettings;
use crate::handlers::{self, AsyncHandler, DispatchedEvent};
use crate::storage::handler_state::{Outcome, Work};
use crate::storage::{StorageError, Store};
use crate::telemetry;
use std::time::Duration;
use tokio::sync::watch;

/// Events read per pass.
const PASS_SIZE: u32 = 256;
/// Pause after a storage error before the worker tries again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
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
    store: Store,
}

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
            store,
        }
    }

    /// Runs until `shutdown` turns true, finishing the event in hand first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut committed = self.store.committed();
        tracing::info!(handler = %self.name, "handler worker started");
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
                Err(error) => {
                    tracing::error!(handler = %self.name, error = %error, "handler pass failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        tracing::info!(handler = %self.name, "handler worker stopped");
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
        let (cursor, results) = self.run_handler(work, shutdown).await;
        self.store
            .record_handler_pass(self.name.clone(), cursor, results)
            .await?;
        self.publish_stats().await;
        Ok(Pass::Processed)
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
            let outcome = self.attempt(&owed.event, owed.attempts).await;
            if !matches!(outcome, Outcome::Delivered)
                && let Some(customer) = &owed.event.customer_id
            {
                work.blocked.insert(customer.clone());
            }
            results.push((owed.event, outcome));
        }
        let mut cursor = work.cursor;
        for event in std::mem::take(&mut work.fresh) {
            if *shutdown.borrow() {
                break;
            }
            cursor = event.id;
            let blocked = event
                .customer_id
                .as_ref()
                .is_some_and(|c| work.blocked.contains(c));
            let outcome = if blocked {
                // Parked behind an earlier event of the same customer, not attempted yet.
                Outcome::Retry {
                    attempts: 0,
                    next_attempt_ms: now_ms(),
                    error: None,
                }
            } else {
                self.attempt(&event, 0).await
            };
            if !matches!(outcome, Outcome::Delivered)
                && let Some(customer) = &event.customer_id
            {
                work.blocked.insert(customer.clone());
            }
            results.push((event, outcome));
        }
        (cursor, results)
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
