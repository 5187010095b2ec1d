//! Serving HTTP: the accept loop, and what one connection may hold.
//!
//! Every connection holds a file handle, and a process has a fixed number of them: a client
//! that opens connections and never finishes a request on them (or keeps them idle) can
//! hold them all, and then `accept` fails for everyone. So:
//!
//! - at most `max_connections` are served at once, counted by a semaphore whose permit a
//!   connection holds until it closes; past the cap the loop holds the one client it
//!   accepted until a permit is free, and the others wait in the listen backlog;
//! - a connection must finish a request head within `header_timeout` of opening, or of
//!   the first byte of its next request, and one with no request under way and nothing
//!   sent either way for `idle_timeout` is closed. hyper's own header timeout runs from
//!   the moment it waits for a head, so it would close an idle keep-alive connection after
//!   the header timeout too; instead a watchdog per connection follows what the connection
//!   does ([`Activity`]);
//! - when a client is accepted while every slot is taken, the connections that hold a slot
//!   without using it (no request under way, and nothing of a head for a second, or a head
//!   that has taken longer than that) are closed to make room: slow clients cannot keep a
//!   prompt one waiting for a whole header timeout;
//! - an accept that fails (out of file handles, say) is retried after a short wait that
//!   grows while it keeps failing, so the loop neither spins nor ends.
//!
//! On shutdown the loop stops accepting, every connection is asked to finish its request
//! under way and close, and serving ends when all have closed (the semaphore is whole).

use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// File handles left for everything but connections (databases, logs, blobs) when the cap
/// is derived from the limit.
const RESERVED_HANDLES: u64 = 64;
/// The largest cap derived from the limit.
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// The first and longest waits after a failed accept.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));
/// How long a connection may hold a slot without a request under way before it gives the
/// slot up to a client waiting for one.
const PRESSURE_GRACE: Duration = Duration::from_secs(1);

/// What a connection may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Raise the soft limit on open files to the hard limit; the soft limit in force after.
pub fn raise_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit");
            None
        }
    }
}

/// The connection cap when none is configured: three quarters of the handles left after
/// the reserve, at least one, at most [`DEFAULT_MAX_CONNECTIONS`].
pub fn default_max_connections(file_limit: Option<u64>) -> usize {
    let limit = file_limit.unwrap_or(1024);
    let cap = (limit.saturating_sub(RESERVED_HANDLES) / 4 * 3).clamp(1, DEFAULT_MAX_CONNECTIONS);
    usize::try_from(cap).unwrap_or(1)
}

/// Serve `router` on `listener` within `limits` until `shutdown` fires and every
/// connection has closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    // Bumped when a client waits for a slot: idle connections then give theirs up.
    let (pressure, _) = tokio::sync::watch::channel(0_u64);
    let mut backoff = ACCEPT_BACKOFF.0;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF.0;
                accepted
            }
            // The client went away before it was accepted: nothing wrong here.
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, wait_ms = backoff.as_millis() as u64, "accept failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
        };
        // Every slot taken: this client waits (and the ones behind it, in the backlog)
        // until a connection closes; the idle ones are asked to make room.
        let Some(permit) = wait_for_slot(&slots, &pressure, &shutdown).await else {
            break;
        };
        // Small responses go out at once instead of waiting on Nagle's algorithm.
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let (router, shutdown, pressure) = (router.clone(), shutdown.clone(), pressure.subscribe());
        tokio::spawn(async move {
            connection(tcp, peer, router, limits, shutdown, pressure).await;
            drop(permit);
        });
    }
    // No more connections: refuse them at once instead of leaving them in the backlog.
    drop(listener);
    let _ = slots
        .acquire_many(u32::try_from(max).unwrap_or(u32::MAX))
        .await;
}

/// A slot for a client accepted; while there is none, the connections are asked again
/// and again to make room. `None` on shutdown.
async fn wait_for_slot(
    slots: &Arc<Semaphore>,
    pressure: &tokio::sync::watch::Sender<u64>,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(permit);
    }
    loop {
        pressure.send_modify(|n| *n = n.wrapping_add(1));
        tokio::select! {
            () = shutdown.cancelled() => return None,
            permit = slots.clone().acquire_owned() => return permit.ok(),
            () = tokio::time::sleep(PRESSURE_GRACE / 4) => {}
        }
    }
}

/// Errors of one connection that was being accepted, not of the listener.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serve one connection until it closes, the watchdog closes it, or shutdown drains it.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
    mut pressure: tokio::sync::watch::Receiver<u64>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: tcp,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let under_way = requests.request_started();
        let mut router = router.clone();
        async move {
            let response = tower_service::Service::call(&mut router, request.map(Body::new)).await;
            drop(under_way);
            response
        }
    });
    let mut conn = pin!(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
    let mut draining = false;
    let mut accepting = true;
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = activity.changed.notified() => {}
            changed = pressure.changed(), if accepting => {
                // An error: the accept loop is gone, no one will wait for a slot any more.
                accepting = changed.is_ok();
                if accepting && activity.holds_a_slot_unused(PRESSURE_GRACE) {
                    tracing::debug!(%peer, "closing an unused connection to make room");
                    return;
                }
            }
            () = expired => {
                // Still past it (nothing happened meanwhile)? Then close: no request is
                // under way, so nothing is lost.
                if activity.deadline(&limits).is_some_and(|at| at <= Instant::now()) {
                    tracing::debug!(%peer, "closing a connection that stalled or idled");
                    return;
                }
            }
        }
    }
}

/// What one connection is doing, for its watchdog: when it last read or wrote, since when a
/// request head has been arriving, and how many requests are under way. Times are
/// milliseconds since the connection opened.
struct Activity {
    opened: Instant,
    last_io: AtomicU64,
    /// When the first byte of a request head arrived; [`NOT_STARTED`] between requests.
    head_since: AtomicU64,
    under_way: AtomicUsize,
    /// Told when the deadline may have come closer (a head started, a request finished).
    changed: Notify,
}

const NOT_STARTED: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            last_io: AtomicU64::new(0),
            // A new connection is there to send a request: its head is due at once.
            head_since: AtomicU64::new(0),
            under_way: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.opened + Duration::from_millis(millis)
    }

    /// Bytes came in: with no request under way, they begin the next request's head.
    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Ordering::Relaxed);
        if self.under_way.load(Ordering::Acquire) == 0
            && self
                .head_since
                .compare_exchange(NOT_STARTED, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Ordering::Relaxed);
    }

    /// A request's head is complete and its handler runs until the guard is dropped.
    fn request_started(self: &Arc<Self>) -> UnderWay {
        self.under_way.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NOT_STARTED, Ordering::Release);
        UnderWay(self.clone())
    }

    /// When the connection is to be closed if nothing happens before; `None` while a
    /// request is under way (the request timeouts bound those).
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.under_way.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = self.at(self.last_io.load(Ordering::Relaxed)) + limits.idle_timeout;
        match self.head_since.load(Ordering::Acquire) {
            NOT_STARTED => Some(idle),
            since => Some((self.at(since) + limits.header_timeout).min(idle)),
        }
    }
}

impl Activity {
    /// Whether the connection has no request under way and has done nothing with its slot
    /// for `grace`: no head begun within it, or one begun longer ago.
    fn holds_a_slot_unused(&self, grace: Duration) -> bool {
        if self.under_way.load(Ordering::Acquire) > 0 {
            return false;
        }
        let grace = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let now = self.now();
        match self.head_since.load(Ordering::Acquire) {
            NOT_STARTED => now.saturating_sub(self.last_io.load(Ordering::Relaxed)) >= grace,
            since => now.saturating_sub(since) >= grace,
        }
    }
}

/// A request under way on a connection.
struct UnderWay(Arc<Activity>);

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.wrote();
        self.0.under_way.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

/// A connection's socket, telling its [`Activity`] what passes through.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_stays_under_the_file_limit() {
        assert_eq!(default_max_connections(Some(256)), 144);
        assert_eq!(default_max_connections(Some(1024)), 720);
        assert_eq!(default_max_connections(Some(1 << 20)), 10_000);
        assert_eq!(default_max_connections(Some(10)), 1);
    }
}
