//! Failing fast while a backend is down.
//!
//! A request that reaches a database or Redis that is down waits for a timeout (a black
//! hole never answers at all); a hundred requests wait a hundred times. A [`Circuit`] turns
//! the first such failure into "known down": from then on, callers are told at once, without
//! touching the backend, until a probe in the background reaches it again. Each backend
//! client bounds its own calls by its timeout and reports outages here, in one place.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a backend that is down is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Whether a backend is known to be down, shared by every connection to it.
#[derive(Debug)]
pub struct Circuit {
    what: &'static str,
    open: AtomicBool,
}

impl Circuit {
    /// A circuit for the backend named `what` (for logs), closed: the backend is used.
    pub fn new(what: &'static str) -> Arc<Self> {
        Arc::new(Circuit {
            what,
            open: AtomicBool::new(false),
        })
    }

    /// Whether the backend is known to be down (calls should fail at once).
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// The backend failed as if down: open the circuit and, unless it was open already,
    /// probe the backend in the background every [`PROBE_EVERY`] until `probe` succeeds,
    /// then close it. The probe stops when the circuit is dropped (its store is gone).
    pub fn trip<P, F>(self: &Arc<Self>, probe: P)
    where
        P: Fn() -> F + Send + 'static,
        F: Future<Output = bool> + Send + 'static,
    {
        if self.open.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(
            backend = self.what,
            "backend unreachable; failing fast until it answers again"
        );
        let circuit: Weak<Circuit> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                if circuit.strong_count() == 0 {
                    return;
                }
                if probe().await {
                    if let Some(circuit) = circuit.upgrade() {
                        circuit.open.store(false, Ordering::Release);
                        tracing::info!(backend = circuit.what, "backend reachable again");
                    }
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn opens_on_a_failure_and_closes_when_a_probe_succeeds() {
        let circuit = Circuit::new("test");
        assert!(!circuit.is_open());
        let probes = Arc::new(AtomicUsize::new(0));
        let counted = probes.clone();
        circuit.trip(move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move { n >= 1 }
        });
        assert!(circuit.is_open());
        // A second failure while open starts no second probe.
        circuit.trip(|| async { panic!("only one probe runs") });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while circuit.is_open() {
            assert!(tokio::time::Instant::now() < deadline, "the circuit closes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(probes.load(Ordering::SeqCst), 2);
    }
}
