//! What the scheduler runs for capsules: their due items (release at the send time, expiry
//! of an unconfirmed capsule, deletion of a file whose capsule is over) and, now and then,
//! the sweep of stored files no capsule keeps. The binary only hands these to the sleeper
//! and the task list; the rules are the capsules'.

use std::time::Duration;

use async_trait::async_trait;
use cairn_events::domain::capsule;
use cairn_events::{DueAction, DueItem, Handled};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Capsules, EXPIRE, Outcome, PURGE, RELEASE};

/// The capsules' due items, as the sleeper's action.
pub struct CapsuleTimers {
    pub capsules: Capsules,
}

#[async_trait]
impl DueAction for CapsuleTimers {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        let Some(id) = capsule_of(item) else {
            tracing::warn!(key = %item.key, "a due item for no capsule; dropped");
            return Ok(Handled::Nothing);
        };
        let acted = match item.action.as_str() {
            RELEASE => self.capsules.release(id).await,
            EXPIRE => self.capsules.expire(id).await,
            PURGE => self.capsules.purge_file(id).await,
            other => {
                tracing::warn!(key = %item.key, action = other, "an unknown due action; dropped");
                return Ok(Handled::Nothing);
            }
        };
        match acted {
            Ok(Outcome::Written) => Ok(Handled::Done),
            Ok(Outcome::Nothing) => Ok(Handled::Nothing),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The capsule a due item is about.
pub fn capsule_of(item: &DueItem) -> Option<Uuid> {
    item.stream_id
        .strip_prefix(capsule::CATEGORY)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|id| Uuid::parse_str(id).ok())
}

/// How old a stored file no capsule keeps must be before the sweep deletes it: uploads in
/// progress, and capsules being written, are far younger.
pub const SWEEP_AFTER: chrono::Duration = chrono::Duration::days(1);

/// Until `shutdown`: a minute after start, then every six hours, delete stored files no
/// capsule keeps (an upload cut off by a crash, or stored but never submitted) once they
/// are [`SWEEP_AFTER`] old.
pub async fn sweep_files(capsules: Capsules, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        // The blob store's clock is the wall clock, whatever the capsules' clock says.
        let cutoff = chrono::Utc::now() - SWEEP_AFTER;
        match capsules.sweep_files(cutoff).await {
            Ok(0) => {}
            Ok(swept) => tracing::info!(swept, "deleted files no capsule keeps"),
            Err(error) => tracing::warn!(%error, "sweeping capsule files failed; trying later"),
        }
        wait = Duration::from_secs(6 * 3600);
    }
}
