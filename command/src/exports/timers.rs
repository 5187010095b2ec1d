//! What the scheduler runs for exports: an export's steps (its `run` item, due when it is
//! asked for, when the export before it ends, and after a failed step's wait), and the
//! deletion of a bundle at the end of its retention. The binary only hands these to the
//! sleeper; the rules are the exports'.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_events::domain::export;
use cairn_events::{DueAction, DueIndex, DueItem, Handled};
use uuid::Uuid;

use super::{EXPIRE, Exports, RUN, Ran, SYNC};

/// The exports' due items, as the sleeper's action.
pub struct ExportTimers {
    pub exports: Exports,
    /// Where an item with nothing to do yet is moved to its time.
    pub due: Arc<dyn DueIndex>,
}

#[async_trait]
impl DueAction for ExportTimers {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        let Some(export_id) = item
            .stream_id
            .strip_prefix(export::CATEGORY)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            tracing::warn!(key = %item.key, "a due item for no export; dropped");
            return Ok(Handled::Nothing);
        };
        let ran = match item.action.as_str() {
            RUN => self.exports.run(export_id).await,
            EXPIRE => self.exports.expire(export_id).await,
            SYNC => self.exports.sync(export_id).await,
            other => {
                tracing::warn!(key = %item.key, action = other, "an unknown due action; dropped");
                return Ok(Handled::Nothing);
            }
        };
        match ran {
            // The ending append dropped the item; if it did not (the run found the export
            // over already), dropping it again is harmless.
            Ok(Ran::Done) => Ok(Handled::Nothing),
            Ok(Ran::NotYet(at)) => self
                .due
                .reschedule_due(item, at)
                .await
                .map(|_| Handled::Done)
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }
}
