//! Waiting for a condition, with a deadline.
//!
//! Background work (projections, the scheduler, outbox workers, another process) finishes
//! when it finishes: a test that sleeps a fixed time and then looks passes or fails by
//! luck. These poll the condition itself, return as soon as it holds, and fail with what
//! was awaited once the deadline has passed, so a slow machine only makes a test slower.

use std::future::Future;
use std::time::Duration;

/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(20);

/// Poll `check` until it gives a value, and return it; panic, naming `what`, if it has
/// given none within `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Poll `check` until it holds; panic, naming `what`, if it has not within `timeout`.
pub async fn until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, timeout, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
}
