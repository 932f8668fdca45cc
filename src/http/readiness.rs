//! `/readyz` answers from a probe write, reused for a short while: a probe is a synced write on
//! the single writer, so probing on every request would let anonymous callers slow deliveries.
//! Callers that arrive while a probe runs wait for it and share its result. The probe writes
//! as much as a delivery does (see `Store::probe_write`), so a full disk is not ready.

use crate::log_limit::{self, LogLimit};
use crate::storage::Store;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Failed probes, logged at most once per interval: orchestrators probe every few seconds.
static PROBE_FAILURES: LogLimit = LogLimit::new(log_limit::INTERVAL);

#[derive(Debug)]
pub struct Readiness {
    reuse_for: Duration,
    /// The last probe: when it finished and whether the database took the write. An async
    /// mutex, because it is held across the probe so that concurrent callers share one.
    last: Mutex<Option<(Instant, bool)>>,
}

impl Readiness {
    pub fn new(reuse_for: Duration) -> Self {
        Self {
            reuse_for,
            last: Mutex::new(None),
        }
    }

    /// Whether the database accepts a write, probed at most once per `reuse_for`.
    pub async fn check(&self, store: &Store) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ready)) = *last
            && at.elapsed() < self.reuse_for
        {
            return ready;
        }
        let ready = match store.probe_write().await {
            Ok(()) => true,
            Err(error) => {
                if let Some(suppressed) = PROBE_FAILURES.admit() {
                    tracing::warn!(error = %error, suppressed, "readiness probe failed");
                }
                false
            }
        };
        *last = Some((Instant::now(), ready));
        ready
    }
}
