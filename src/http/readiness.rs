//! `/readyz` answers from a probe write, reused for a short while: a probe is a synced write on
//! the single writer, so probing on every request would let anonymous callers slow deliveries.
//! Callers that arrive while a probe runs wait for it and share its result.

use crate::storage::Store;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

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
                tracing::warn!(error = %error, "readiness probe failed");
                false
            }
        };
        *last = Some((Instant::now(), ready));
        ready
    }
}
