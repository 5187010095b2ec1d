//! What the scheduler runs for backups: a resource's retention (after each backup, when
//! its oldest backup expires, when it is deleted), the check that an expected backup
//! came, and the deletion of a file no backup refers to any more. The binary only hands these to the sleeper; the rules are the
//! backups'.

use async_trait::async_trait;
use cairn_events::domain::backup;
use cairn_events::{DueAction, DueItem, Handled};
use uuid::Uuid;

use super::{Backups, CHECK_MISSED, DELETE_FILE, Outcome, RETENTION};

/// The backups' due items, as the sleeper's action.
pub struct BackupTimers {
    pub backups: Backups,
    /// Where an item with nothing to do yet is moved to its time.
    pub due: std::sync::Arc<dyn cairn_events::DueIndex>,
}

#[async_trait]
impl DueAction for BackupTimers {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        match item.action.as_str() {
            RETENTION | CHECK_MISSED => {
                let Some(resource_id) = resource_of(item) else {
                    tracing::warn!(key = %item.key, "a due item for no resource; dropped");
                    return Ok(Handled::Nothing);
                };
                let outcome = if item.action == RETENTION {
                    self.backups.apply_retention(resource_id).await
                } else {
                    self.backups.check_missed(resource_id).await
                };
                match outcome {
                    Ok(Outcome::Written) => Ok(Handled::Done),
                    Ok(Outcome::Nothing) => Ok(Handled::Nothing),
                    // Moved, not dropped: the next expiry or deadline stays in the index.
                    Ok(Outcome::NotYet(at)) => self
                        .due
                        .reschedule_due(item, at)
                        .await
                        .map(|_| Handled::Done)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
            DELETE_FILE => {
                let Some(blob) = item
                    .key
                    .strip_prefix(DELETE_FILE)
                    .and_then(|k| k.strip_prefix(':'))
                else {
                    return Ok(Handled::Nothing);
                };
                // Already gone is no error; the item is dropped once the file is.
                self.backups
                    .blobs
                    .delete(blob)
                    .await
                    .map(|()| Handled::Nothing)
                    .map_err(|e| e.to_string())
            }
            other => {
                tracing::warn!(key = %item.key, action = other, "an unknown due action; dropped");
                Ok(Handled::Nothing)
            }
        }
    }
}

/// The resource a due item is about.
fn resource_of(item: &DueItem) -> Option<Uuid> {
    item.stream_id
        .strip_prefix(backup::RESOURCE)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|id| Uuid::parse_str(id).ok())
}
