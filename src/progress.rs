//! Progress of a long operator command: a live bar on a terminal (indicatif, on stderr), plain
//! lines at a steady pace otherwise (logs, CI), nothing at all for background work. Standard
//! output stays free for the command's JSON result.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Plain progress lines are printed at most this often.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    mode: Mode,
}

enum Mode {
    Bar(ProgressBar),
    Lines {
        label: String,
        started: Instant,
        // A std Mutex: held only to compare and set an instant, never across an await.
        last: Mutex<Option<Instant>>,
        total: Mutex<Option<u64>>,
    },
    Hidden,
}

impl Progress {
    /// A bar when standard error is a terminal, plain lines otherwise.
    pub fn for_command(label: &str) -> Self {
        if std::io::stderr().is_terminal() {
            Self::bar(label)
        } else {
            Self::lines(label)
        }
    }

    /// Plain lines on standard error, whatever it is.
    pub fn lines(label: &str) -> Self {
        Self {
            mode: Mode::Lines {
                label: label.to_owned(),
                started: Instant::now(),
                last: Mutex::new(None),
                total: Mutex::new(None),
            },
        }
    }

    /// Reports nothing: for work running inside the daemon.
    pub fn hidden() -> Self {
        Self { mode: Mode::Hidden }
    }

    fn bar(label: &str) -> Self {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{spinner} {prefix} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Self {
            mode: Mode::Bar(bar),
        }
    }

    /// How many items the work is expected to cover, when known.
    pub fn set_total(&self, total: u64) {
        match &self.mode {
            Mode::Bar(bar) => bar.set_length(total),
            Mode::Lines { total: known, .. } => {
                *known.lock().expect("progress lock") = Some(total);
            }
            Mode::Hidden => {}
        }
    }

    /// Items done so far and a short description of the counts behind them.
    pub fn update(&self, done: u64, detail: &str) {
        match &self.mode {
            Mode::Bar(bar) => {
                if bar.length().is_some_and(|len| done > len) {
                    bar.set_length(done);
                }
                bar.set_position(done);
                bar.set_message(format!("{:.0}/s, {detail}", bar.per_sec()));
            }
            Mode::Lines { last, .. } => {
                let now = Instant::now();
                let mut last = last.lock().expect("progress lock");
                if last.is_none_or(|at| now.duration_since(at) >= LINE_EVERY) {
                    *last = Some(now);
                    drop(last);
                    self.print_line(done, detail);
                }
            }
            Mode::Hidden => {}
        }
    }

    /// The final state, always shown.
    pub fn finish(&self, done: u64, detail: &str) {
        match &self.mode {
            Mode::Bar(bar) => {
                bar.set_position(done);
                bar.finish_with_message(detail.to_owned());
            }
            Mode::Lines { .. } => self.print_line(done, detail),
            Mode::Hidden => {}
        }
    }

    /// Leaves the display as it is after a failure, adding nothing: the error has its own line.
    pub fn abandon(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.abandon();
        }
    }

    fn print_line(&self, done: u64, detail: &str) {
        if let Mode::Lines {
            label,
            total,
            started,
            ..
        } = &self.mode
        {
            let seconds = started.elapsed().as_secs_f64();
            let rate = if seconds > 0.0 {
                done as f64 / seconds
            } else {
                0.0
            };
            match *total.lock().expect("progress lock") {
                Some(total) => {
                    let eta = eta_seconds(done, total, rate)
                        .map_or_else(|| "unknown".to_owned(), |s| format!("{s}s"));
                    eprintln!("{label}: {done}/{total}, {rate:.0}/s, eta {eta}, {detail}")
                }
                None => eprintln!("{label}: {done}, {rate:.0}/s, {detail}"),
            }
        }
    }
}

/// Seconds left at the rate so far, once there is a rate to go by.
fn eta_seconds(done: u64, total: u64, rate: f64) -> Option<u64> {
    (rate > 0.0).then(|| (total.saturating_sub(done) as f64 / rate).ceil() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_eta_is_what_is_left_at_the_rate_so_far() {
        assert_eq!(super::eta_seconds(50, 150, 10.0), Some(10));
        assert_eq!(super::eta_seconds(150, 150, 10.0), Some(0));
        assert_eq!(super::eta_seconds(0, 150, 0.0), None);
    }
}
