//! What the scheduler runs for capsules: their due items (release at the send time, expiry
//! of an unconfirmed capsule, deletion of a file whose capsule is over) and how old a file
//! no capsule keeps must be for the sweep (a maintenance job the binary schedules) to
//! delete it. The binary only hands these to the sleeper; the rules are the capsules'.

use std::collections::HashMap;

use async_trait::async_trait;
use cairn_events::domain::capsule;
use cairn_events::{DueAction, DueItem, Envelope, Handled};
use uuid::Uuid;

use super::decide::Command;
use super::{Capsules, EXPIRE, Outcome, PURGE, RELEASE};

/// The capsules' due items, as the sleeper's action.
pub struct CapsuleTimers {
    pub capsules: Capsules,
}

#[async_trait]
impl DueAction for CapsuleTimers {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        self.act(item, None).await
    }

    async fn prefetch(&self, items: &[DueItem]) -> HashMap<String, Vec<Envelope>> {
        let streams: Vec<String> = items
            .iter()
            .filter(|item| capsule_of(item).is_some())
            .map(|item| item.stream_id.clone())
            .collect();
        if streams.is_empty() {
            return HashMap::new();
        }
        match self.capsules.events.read_streams(&streams).await {
            Ok(read) => read,
            Err(error) => {
                tracing::warn!(%error, "could not read a round's capsules at once; each reads its own");
                HashMap::new()
            }
        }
    }

    async fn run_read(&self, item: &DueItem, stream: Vec<Envelope>) -> Result<Handled, String> {
        self.act(item, Some(stream)).await
    }
}

impl CapsuleTimers {
    /// Issue the command an item stands for, deciding on `read` if given.
    async fn act(&self, item: &DueItem, read: Option<Vec<Envelope>>) -> Result<Handled, String> {
        let Some(id) = capsule_of(item) else {
            tracing::warn!(key = %item.key, "a due item for no capsule; dropped");
            return Ok(Handled::Nothing);
        };
        let command = match item.action.as_str() {
            RELEASE => Command::Release,
            EXPIRE => Command::Expire,
            PURGE => Command::PurgeFile,
            other => {
                tracing::warn!(key = %item.key, action = other, "an unknown due action; dropped");
                return Ok(Handled::Nothing);
            }
        };
        match self.capsules.execute_read(id, &command, read).await {
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
