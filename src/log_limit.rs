//! Rate limits for log lines that repeat while a condition lasts.
//!
//! When storage fails (a full disk, most often) every delivery fails the same way, and the log
//! is usually on that same full disk: a line per failure would add to the trouble and bury the
//! first, useful, line. A [`LogLimit`] lets one line through per interval and counts the rest,
//! so the next line that passes says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The interval the daemon's own limits use: the first failure is logged at once, then at most
/// one line per site every this long.
pub const INTERVAL: Duration = Duration::from_secs(30);

/// One line per interval; the others are counted.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State {
                last_logged: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether to log an occurrence now: `Some(n)` to log it, saying that `n` occurrences were
    /// left out since the last line; `None` to leave it out (it is counted).
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`LogLimit::admit`] at a given instant, so that tests control time.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        // A std mutex: held for a few instructions, never across an await.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let due = state
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if due {
            state.last_logged = Some(now);
            Some(std::mem::take(&mut state.suppressed))
        } else {
            state.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_is_logged_then_one_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new(Duration::from_secs(30));
        let start = Instant::now();
        assert_eq!(limit.admit_at(start), Some(0));
        for second in 1..30 {
            assert_eq!(limit.admit_at(start + Duration::from_secs(second)), None);
        }
        assert_eq!(limit.admit_at(start + Duration::from_secs(30)), Some(29));
        assert_eq!(limit.admit_at(start + Duration::from_secs(31)), None);
        assert_eq!(limit.admit_at(start + Duration::from_secs(90)), Some(1));
    }

    #[test]
    fn dozens_of_failures_within_an_interval_make_one_line() {
        let limit = LogLimit::new(INTERVAL);
        let now = Instant::now();
        let logged = (0..50).filter(|_| limit.admit_at(now).is_some()).count();
        assert_eq!(logged, 1);
    }
}
