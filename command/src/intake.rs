//! Taking in large `multipart/form-data` bodies as streams (capsule files, backups): what
//! a body may cost ([`Budget`]: its size, a least average rate, the bytes a part's headers
//! may take), how long a read may wait ([`idle`]), how many uploads run at once
//! ([`Uploads`]), and how a refusal is answered before or after the body ([`early`],
//! [`drain`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use futures_util::{Stream, StreamExt};
use multer::{Field, Multipart};

/// Most bytes the parser may pull while it looks for the next part's headers: a header
/// that never ends would otherwise be buffered (and rescanned) to the body limit. The
/// parser also pulls whatever body is already there, up to an HTTP/2 window (1 MiB by
/// default): hence the margin.
const HEADER_BYTES: u64 = 4 * 1024 * 1024;

/// A read of the body waited longer than the idle timeout: the client stopped sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idle;

/// The uploads in progress, by client address, and how many may be.
#[derive(Debug)]
pub struct Uploads {
    at_once: usize,
    per_client: usize,
    running: Mutex<HashMap<String, usize>>,
}

/// Why an upload could not start now.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// This client has as many going as it may.
    Client,
    /// The server has.
    Server,
}

impl Uploads {
    pub fn new(at_once: usize, per_client: usize) -> Self {
        Uploads {
            at_once,
            per_client,
            running: Mutex::default(),
        }
    }

    /// A place for an upload from `client`, if there is one.
    pub fn slot(self: &Arc<Self>, client: &str) -> Result<Slot, Busy> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.get(client).copied().unwrap_or(0) >= self.per_client {
            return Err(Busy::Client);
        }
        if running.values().sum::<usize>() >= self.at_once {
            return Err(Busy::Server);
        }
        *running.entry(client.to_owned()).or_default() += 1;
        Ok(Slot {
            uploads: self.clone(),
            client: client.to_owned(),
        })
    }
}

/// An upload in progress, counted until dropped.
pub struct Slot {
    uploads: Arc<Uploads>,
    client: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut running = self
            .uploads
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.client);
            }
        }
    }
}

/// After this long, an upload must have averaged [`MIN_BYTES_PER_SECOND`]: a client
/// trickling bytes just inside the idle timeout would otherwise hold its place forever.
const RATE_GRACE: Duration = Duration::from_secs(60);
const MIN_BYTES_PER_SECOND: u64 = 16 * 1024;

/// What the body stream lets through: the whole body up to the limit, at a least
/// average rate, and, while the parser looks for a part's headers, at most
/// [`HEADER_BYTES`].
pub struct Budget {
    started: std::time::Instant,
    /// The most the whole body may hold.
    limit: u64,
    total: AtomicU64,
    in_headers: AtomicBool,
    since_headers: AtomicU64,
    /// Whether the body was cut off for coming too slowly.
    pub too_slow: AtomicBool,
}

impl Budget {
    /// A budget for a body of at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Budget {
            started: std::time::Instant::now(),
            limit,
            total: AtomicU64::new(0),
            in_headers: AtomicBool::new(false),
            since_headers: AtomicU64::new(0),
            too_slow: AtomicBool::new(false),
        }
    }

    pub fn take(&self, bytes: u64) -> Result<(), std::io::Error> {
        let total = self.total.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let elapsed = self.started.elapsed();
        if elapsed > RATE_GRACE && total < MIN_BYTES_PER_SECOND * elapsed.as_secs() {
            self.too_slow.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the body comes too slowly"));
        }
        let in_headers = self.in_headers.load(Ordering::Relaxed);
        let since = self.since_headers.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if total > self.limit || (in_headers && since > HEADER_BYTES) {
            Err(std::io::Error::other("the body is too large"))
        } else {
            Ok(())
        }
    }

    /// The parser is about to look for the next part.
    pub fn headers(&self, looking: bool) {
        self.since_headers.store(0, Ordering::Relaxed);
        self.in_headers.store(looking, Ordering::Relaxed);
    }
}

/// The next part, within the idle timeout and the header budget.
pub async fn next_field(
    multipart: &mut Multipart<'static>,
    budget: &Budget,
    idle_timeout: Duration,
) -> Result<Result<Option<Field<'static>>, multer::Error>, Idle> {
    budget.headers(true);
    let field = idle(idle_timeout, multipart.next_field()).await?;
    budget.headers(false);
    Ok(field)
}

/// `body` as a stream of chunks, each counted against `budget`, which ends the stream
/// with an error at the first chunk past it.
pub fn metered(
    body: Body,
    budget: Arc<Budget>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        budget.take(chunk.len() as u64)?;
        Ok::<Bytes, std::io::Error>(chunk)
    })
}

/// Read a little of what is left of a refused body, so that a client that sent slightly
/// too much reads the refusal instead of a reset connection. Bounded in bytes and time.
pub async fn drain(multipart: &mut Multipart<'static>, budget: &Budget) {
    const DRAIN_BYTES: usize = 1024 * 1024;
    let mut drained = 0;
    let read = async {
        loop {
            budget.headers(true);
            let Ok(Some(mut field)) = multipart.next_field().await else {
                return;
            };
            budget.headers(false);
            while let Ok(Some(chunk)) = field.chunk().await {
                drained += chunk.len();
                if drained > DRAIN_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
}

/// Wait for a read of the body, at most `timeout`.
pub async fn idle<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, multer::Error>>,
) -> Result<Result<T, multer::Error>, Idle> {
    tokio::time::timeout(timeout, read).await.map_err(|_| Idle)
}

/// An answer given before the body is read, with the connection closed after it: the
/// client stops sending rather than the server dropping what it sends.
pub fn early(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_FILE_BYTES: u64 = 200_000_000;

    #[test]
    fn uploads_at_once_are_capped_per_client_and_in_all() {
        let uploads = Arc::new(Uploads::new(3, 2));
        let a1 = uploads.slot("a");
        let a2 = uploads.slot("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(uploads.slot("a").err(), Some(Busy::Client));
        let b1 = uploads.slot("b");
        assert!(b1.is_ok());
        assert_eq!(uploads.slot("c").err(), Some(Busy::Server));
        drop(a1);
        assert!(
            uploads.slot("c").is_ok(),
            "a finished upload frees its place"
        );
        drop((a2, b1));
        assert!(
            uploads
                .running
                .lock()
                .map(|r| r.is_empty())
                .unwrap_or(false),
            "nothing is left counted"
        );
    }

    #[test]
    fn the_header_budget_applies_while_looking_for_a_part() {
        let budget = Budget::new(MAX_FILE_BYTES);
        budget.headers(true);
        assert!(budget.take(HEADER_BYTES).is_ok());
        assert!(budget.take(1).is_err(), "a header that never ends");
        budget.headers(false);
        assert!(
            budget.take(50 * 1024 * 1024).is_ok(),
            "a part's body may be large"
        );
        assert!(
            budget.take(MAX_FILE_BYTES).is_err(),
            "but not past the body limit"
        );
    }
}
