//! Claims renewed while their work runs.
//!
//! Claims are short (seconds), so that the work of a process that dies is taken over
//! soon; work that takes longer (a big batch, a slow SMTP server) must not be handed to
//! another process meanwhile. So while a batch runs, its claims are extended every third
//! of the hold; the renewal stops when the batch is done (the guard is dropped). A renewal
//! that fails leaves the claims to run out: the work may then be done twice, which every
//! action tolerates.

use std::future::Future;
use std::time::Duration;

use cairn_events::{Clock, StoreError};
use chrono::{DateTime, Utc};

/// Stops the renewal when dropped.
pub struct Renewal(tokio::task::JoinHandle<()>);

impl Drop for Renewal {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Every third of `hold`, call `renew` with the claims' new end (`hold` after the clock's
/// now), until the returned guard is dropped.
pub fn renew_while<F, Fut>(clock: Clock, hold: Duration, what: &'static str, renew: F) -> Renewal
where
    F: Fn(DateTime<Utc>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<u64, StoreError>> + Send,
{
    let every = (hold / 3).max(Duration::from_millis(100));
    Renewal(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let until = clock.now() + chrono::Duration::from_std(hold).unwrap_or_default();
            if let Err(error) = renew(until).await {
                tracing::warn!(%error, what, "could not renew claims; they may be taken over");
            }
        }
    }))
}
