//! What the scheduler reports on `/metrics`: how late due items run (per action), and what
//! the outbox workers did (sent, retried, dead). Kept in this process's memory; the depths
//! of the due index and the outbox are read from the store when `/metrics` is scraped,
//! since they are shared by every process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_events::{DueStatus, OutboxStatus};
use chrono::{DateTime, Utc};

/// Upper bounds of the lateness buckets, in seconds: the sleeper aims at milliseconds, a
/// takeover after a crash at a second or two, a backlog at more.
const LATENESS_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENESS_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The scheduler's counters.
#[derive(Default)]
pub struct SchedulerMetrics {
    /// Lateness of due items done, by action.
    lateness: Mutex<BTreeMap<String, Histogram>>,
    /// Tries of due items whose action failed (each is tried again later).
    due_failures: AtomicU64,
    emails_sent: AtomicU64,
    emails_retried: AtomicU64,
    emails_dead: AtomicU64,
    webhooks_sent: AtomicU64,
    webhooks_retried: AtomicU64,
    webhooks_dead: AtomicU64,
}

impl SchedulerMetrics {
    /// A due item for `action`, due at `due_at`, was done at `done_at`.
    pub fn done(&self, action: &str, due_at: DateTime<Utc>, done_at: DateTime<Utc>) {
        let late = (done_at - due_at)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64();
        let mut lateness = self.lateness.lock().unwrap_or_else(|p| p.into_inner());
        let histogram = lateness.entry(action.to_owned()).or_default();
        for (bucket, bound) in histogram.buckets.iter_mut().zip(LATENESS_BUCKETS) {
            if late <= bound {
                *bucket += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += late;
    }

    pub fn due_failed(&self) {
        self.due_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// An outbox message of `kind` was settled as `outcome`.
    pub fn settled(&self, kind: &str, outcome: &cairn_events::Outcome) {
        let counters = match kind {
            "email" => [&self.emails_sent, &self.emails_retried, &self.emails_dead],
            _ => [
                &self.webhooks_sent,
                &self.webhooks_retried,
                &self.webhooks_dead,
            ],
        };
        let counter = match outcome {
            cairn_events::Outcome::Sent => counters[0],
            cairn_events::Outcome::Retry { .. } => counters[1],
            cairn_events::Outcome::Dead { .. } => counters[2],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Append the counters to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP cairn_due_lateness_seconds How long after its due time a due item was done, by action."
        );
        let _ = writeln!(out, "# TYPE cairn_due_lateness_seconds histogram");
        for (action, histogram) in self
            .lateness
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let action = label(action);
            for (bucket, bound) in histogram.buckets.iter().zip(LATENESS_BUCKETS) {
                let _ = writeln!(
                    out,
                    "cairn_due_lateness_seconds_bucket{{action=\"{action}\",le=\"{bound}\"}} {bucket}"
                );
            }
            let _ = writeln!(
                out,
                "cairn_due_lateness_seconds_bucket{{action=\"{action}\",le=\"+Inf\"}} {}",
                histogram.count
            );
            let _ = writeln!(
                out,
                "cairn_due_lateness_seconds_sum{{action=\"{action}\"}} {}",
                histogram.sum
            );
            let _ = writeln!(
                out,
                "cairn_due_lateness_seconds_count{{action=\"{action}\"}} {}",
                histogram.count
            );
        }
        counter(
            out,
            "cairn_due_failures_total",
            "Tries of due items whose action failed; each is tried again later.",
            self.due_failures.load(Ordering::Relaxed),
        );
        for (name, what, counters) in [
            (
                "cairn_emails_total",
                "Emails",
                [&self.emails_sent, &self.emails_retried, &self.emails_dead],
            ),
            (
                "cairn_webhooks_total",
                "Webhook calls",
                [
                    &self.webhooks_sent,
                    &self.webhooks_retried,
                    &self.webhooks_dead,
                ],
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {what} tried by this process, by outcome (sent, retry, dead)."
            );
            let _ = writeln!(out, "# TYPE {name} counter");
            for (outcome, n) in ["sent", "retry", "dead"].into_iter().zip(counters) {
                let _ = writeln!(
                    out,
                    "{name}{{outcome=\"{outcome}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Render the due index's and the outbox's depths (shared by every process) at `now`.
pub fn render_depths(out: &mut String, due: &DueStatus, outbox: &OutboxStatus, now: DateTime<Utc>) {
    gauge(
        out,
        "cairn_due_items",
        "Items in the due index.",
        due.depth as f64,
    );
    gauge(
        out,
        "cairn_due_items_overdue",
        "Items in the due index whose time has passed.",
        due.overdue as f64,
    );
    let oldest = due.oldest_overdue.map_or(0.0, |at| {
        (now - at).to_std().unwrap_or(Duration::ZERO).as_secs_f64()
    });
    gauge(
        out,
        "cairn_due_oldest_overdue_seconds",
        "How long the oldest overdue item has been due (0 when none is).",
        oldest,
    );
    gauge(
        out,
        "cairn_outbox_queued",
        "Outbox messages waiting to be sent.",
        outbox.queued as f64,
    );
    gauge(
        out,
        "cairn_outbox_retrying",
        "Outbox messages waiting for a retry after a failed try.",
        outbox.retrying as f64,
    );
    gauge(
        out,
        "cairn_outbox_dead_letters",
        "Outbox messages given up on (list them with `cairn outbox dead`).",
        outbox.dead as f64,
    );
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: f64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the exposition format wants it.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
