//! What the scheduler runs for capsules: their due items (release at the send time, expiry
//! of an unconfirmed capsule, deletion of a file whose capsule is over) and how old a file
//! no capsule keeps must be for the sweep (a maintenance job the binary schedules) to
//! delete it. The binary only hands these to the sleeper; the rules are the capsules'.

use async_trait::async_trait;
use cairn_events::domain::capsule;
use cairn_events::{DueAction, DueItem, Handled};
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
