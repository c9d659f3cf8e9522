//! The live line: redrawn in place on a terminal, printed every few seconds otherwise.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What the live line shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Status {
    /// Seconds since the producer started.
    pub elapsed_seconds: f64,
    /// The work queue: visible messages (`None` if the last read failed).
    pub queue_visible: Option<u64>,
    /// The work queue: messages in flight or waiting out a backoff.
    pub queue_in_flight: Option<u64>,
    /// Messages started so far (the function's `Started`).
    pub started: u64,
    /// Executions started so far (the function's `Executions`): `started` in single mode.
    pub executions: u64,
    /// Executions started per second over the last few seconds, summed over the deployments.
    pub rate: f64,
    /// The same per deployment, `(name, rate)`; shown when there are two or more.
    pub rates: Vec<(String, f64)>,
    /// The target starts per second.
    pub target: f64,
    /// Batch executions (`MESSAGES_PER_EXECUTION` > 1): the line also shows messages.
    pub batch: bool,
    /// Messages started per second over the last few seconds, summed over the deployments.
    pub message_rate: f64,
    /// Messages in the DLQ (`None` if the last read failed).
    pub dlq: Option<u64>,
    /// What the producer is doing ("producing", "produced 3000").
    pub phase: String,
}

fn or_unknown(v: Option<u64>) -> String {
    v.map_or_else(|| "?".to_string(), |n| n.to_string())
}

/// The line itself.
pub fn status_line(s: &Status) -> String {
    let split = if s.rates.len() > 1 {
        let parts: Vec<String> = s.rates.iter().map(|(name, r)| format!("{name} {r:.1}")).collect();
        format!(" ({})", parts.join(" + "))
    } else {
        String::new()
    };
    let (started, rate) = if s.batch {
        (
            format!("started {} messages in {} executions", s.started, s.executions),
            format!(
                "{:.1} executions/s{split} of {:.0}/s, {:.1} messages/s",
                s.rate, s.target, s.message_rate
            ),
        )
    } else {
        (
            format!("started {}", s.started),
            format!("{:.1}/s{split} of {:.0}/s", s.rate, s.target),
        )
    };
    format!(
        "{:>5.0}s | queue {} (+{} in flight) | {started} | {rate} | DLQ {} | {}",
        s.elapsed_seconds,
        or_unknown(s.queue_visible),
        or_unknown(s.queue_in_flight),
        or_unknown(s.dlq),
        s.phase
    )
}

/// Where the line goes (stderr).
pub struct Live {
    bar: Option<ProgressBar>,
    plain_every: Duration,
    last_plain: Option<Instant>,
    last_line: String,
}

impl Live {
    /// A live line: redrawn when stderr is a terminal, else printed every `plain_every`.
    pub fn new(plain_every: Duration) -> Live {
        let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            Some(bar)
        } else {
            None
        };
        Live {
            bar,
            plain_every,
            last_plain: None,
            last_line: String::new(),
        }
    }

    /// Shows a new status.
    pub fn update(&mut self, status: &Status) {
        let line = status_line(status);
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => {
                let due = self.last_plain.is_none_or(|t| t.elapsed() >= self.plain_every);
                if due && !self.plain_every.is_zero() {
                    eprintln!("{line}");
                    self.last_plain = Some(Instant::now());
                    self.last_line = line;
                }
            }
        }
    }

    /// Prints a line above the live line.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Leaves the last status on screen (a terminal) or prints it (otherwise).
    pub fn finish(&mut self, status: &Status) {
        let line = status_line(status);
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        } else if line == self.last_line {
            return;
        }
        eprintln!("{line}");
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_every_figure() {
        let s = Status {
            elapsed_seconds: 12.4,
            queue_visible: Some(23),
            queue_in_flight: Some(20),
            started: 1180,
            rate: 98.44,
            target: 100.0,
            dlq: None,
            phase: "producing".into(),
            rates: vec![("a".into(), 98.44)],
            ..Status::default()
        };
        assert_eq!(
            status_line(&s),
            "   12s | queue 23 (+20 in flight) | started 1180 | 98.4/s of 100/s | DLQ ? | producing"
        );
        let two = Status {
            rates: vec![("a".into(), 49.0), ("b".into(), 49.44)],
            ..s
        };
        assert_eq!(
            status_line(&two),
            "   12s | queue 23 (+20 in flight) | started 1180 | 98.4/s (a 49.0 + b 49.4) of 100/s | DLQ ? | producing"
        );
        let batch = Status {
            batch: true,
            executions: 120,
            message_rate: 978.24,
            ..two
        };
        assert_eq!(
            status_line(&batch),
            "   12s | queue 23 (+20 in flight) | started 1180 messages in 120 executions | 98.4 executions/s \
             (a 49.0 + b 49.4) of 100/s, 978.2 messages/s | DLQ ? | producing"
        );
    }
}
