//! Group commit: many concurrent appends, one transaction.
//!
//! Every `append` call sends its request to a single writer task per store. While one
//! transaction is in flight, new requests queue up; the writer then takes everything
//! queued (up to [`MAX_BATCH`]) into the next transaction. Under load this turns N fsyncs
//! into one without adding a timer to the quiet path. Each request is checked against its
//! stream's version on its own (every stream of it, when it writes several), so one
//! caller's conflict fails only that caller.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{AppendRequest, Appended, NewEvent, Position, StoreError, category_of};

/// The most requests one transaction takes.
pub(crate) const MAX_BATCH: usize = 512;

/// Upper bounds of the batch-size histogram buckets exported on `/metrics`.
const BUCKETS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// Counters describing group commit, rendered in Prometheus text format.
#[derive(Debug, Default)]
pub struct AppendStats {
    batches: AtomicU64,
    requests: AtomicU64,
    events: AtomicU64,
    failed_batches: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
}

impl AppendStats {
    fn record(&self, requests: usize, events: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            if requests as u64 <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Append these counters to a Prometheus exposition.
    pub fn render(&self, out: &mut String) {
        let batches = self.batches.load(Ordering::Relaxed);
        let requests = self.requests.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP cairn_append_batch_size Append requests per committed transaction."
        );
        let _ = writeln!(out, "# TYPE cairn_append_batch_size histogram");
        for (bucket, bound) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "cairn_append_batch_size_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "cairn_append_batch_size_bucket{{le=\"+Inf\"}} {batches}"
        );
        let _ = writeln!(out, "cairn_append_batch_size_sum {requests}");
        let _ = writeln!(out, "cairn_append_batch_size_count {batches}");
        let _ = writeln!(
            out,
            "# HELP cairn_events_appended_total Events committed by this process."
        );
        let _ = writeln!(out, "# TYPE cairn_events_appended_total counter");
        let _ = writeln!(
            out,
            "cairn_events_appended_total {}",
            self.events.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP cairn_append_failed_batches_total Append transactions that failed."
        );
        let _ = writeln!(out, "# TYPE cairn_append_failed_batches_total counter");
        let _ = writeln!(
            out,
            "cairn_append_failed_batches_total {}",
            self.failed_batches.load(Ordering::Relaxed)
        );
    }
}

/// One event placed in the log: its final position and stream version.
pub(crate) struct PlannedRow<'a> {
    pub position: Position,
    pub stream_id: &'a str,
    pub category: &'a str,
    pub version: i64,
    pub event: &'a NewEvent,
}

/// Decide a batch: given each stream's current version and the log's head (both read under
/// the write lock), accept or reject every request and number the accepted events.
pub(crate) fn plan<'a>(
    requests: &'a [AppendRequest],
    mut versions: HashMap<String, i64>,
    head: Position,
) -> (Vec<PlannedRow<'a>>, Vec<Result<Appended, StoreError>>) {
    let mut rows = Vec::new();
    let mut results = Vec::with_capacity(requests.len());
    let mut next_position = head + 1;
    for request in requests {
        let actual = |versions: &HashMap<String, i64>, stream: &str| {
            versions.get(stream).copied().unwrap_or(0)
        };
        if let Some((stream_id, expected, _)) = request
            .parts()
            .find(|(stream, expected, _)| !expected.allows(actual(&versions, stream)))
        {
            results.push(Err(StoreError::Conflict {
                stream_id: stream_id.to_owned(),
                expected,
                actual: actual(&versions, stream_id),
            }));
            continue;
        }
        let first_position = next_position;
        let mut own_version = 0;
        for (part, (stream_id, _, events)) in request.parts().enumerate() {
            let mut version = actual(&versions, stream_id);
            for event in events {
                version += 1;
                rows.push(PlannedRow {
                    position: next_position,
                    stream_id,
                    category: category_of(stream_id),
                    version,
                    event,
                });
                next_position += 1;
            }
            versions.insert(stream_id.to_owned(), version);
            if part == 0 {
                own_version = version;
            }
        }
        results.push(Ok(Appended {
            stream_id: request.stream_id.clone(),
            version: own_version,
            first_position,
            last_position: next_position - 1,
        }));
    }
    (rows, results)
}

/// A backend's way of committing one batch atomically.
#[async_trait]
pub(crate) trait BatchWriter: Send + 'static {
    /// Commit the accepted part of `requests` in one transaction, returning one result per
    /// request. An `Err` means nothing was committed.
    async fn write(
        &mut self,
        requests: &[AppendRequest],
    ) -> Result<Vec<Result<Appended, StoreError>>, StoreError>;
}

pub(crate) struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The handle `append` uses to reach the writer task.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: mpsc::Sender<Pending>,
}

impl Committer {
    pub(crate) fn spawn<W: BatchWriter>(
        mut writer: W,
        stats: Arc<AppendStats>,
        head: watch::Sender<Position>,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(MAX_BATCH * 8);
        tokio::spawn(async move {
            let mut queued = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut queued, MAX_BATCH).await > 0 {
                let (requests, replies): (Vec<_>, Vec<_>) =
                    queued.drain(..).map(|p| (p.request, p.reply)).unzip();
                match writer.write(&requests).await {
                    Ok(results) => {
                        let events = results
                            .iter()
                            .filter_map(|r| r.as_ref().ok())
                            .map(|a| (a.last_position - a.first_position + 1) as usize)
                            .sum();
                        stats.record(requests.len(), events);
                        if let Some(last) = results
                            .iter()
                            .filter_map(|r| r.as_ref().ok())
                            .map(|a| a.last_position)
                            .max()
                        {
                            head.send_if_modified(|h| {
                                let moved = last > *h;
                                *h = (*h).max(last);
                                moved
                            });
                        }
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(result);
                        }
                    }
                    Err(error) => {
                        stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "append batch failed");
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
            }
        });
        Committer { tx }
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        request.validate()?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending { request, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}
