//! The messages read model: each posted message by id, and indexes by hashtag, by user and
//! by time (ids are ULIDs, so id order is time order and a date range is an id range).

use async_trait::async_trait;
use cairn_events::Position;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::{Applied, ReadBackend, ReadError};

/// A message as the read model keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: Ulid,
    pub user_id: String,
    pub user_name: String,
    pub text: String,
    /// As spelled by the author.
    pub hashtags: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl StoredMessage {
    pub(crate) fn has_tag(&self, key: &str) -> bool {
        self.hashtags.iter().any(|t| t.to_lowercase() == key)
    }
}

/// Which messages to list: newest first, all bounds optional.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageFilter {
    /// Case-folded hashtag.
    pub hashtag: Option<String>,
    /// Case-folded user name.
    pub user_name: Option<String>,
    /// Inclusive lower bound on the id (from the `from_date`).
    pub lower: Option<Ulid>,
    /// Exclusive upper bound on the id (the tighter of `to_date` and the cursor).
    pub upper: Option<Ulid>,
    pub limit: usize,
}

impl MessageFilter {
    pub(crate) fn matches(&self, m: &StoredMessage) -> bool {
        self.hashtag.as_deref().is_none_or(|t| m.has_tag(t))
            && self
                .user_name
                .as_deref()
                .is_none_or(|u| m.user_name.to_ascii_lowercase() == u)
            && self.lower.is_none_or(|l| m.id >= l)
            && self.upper.is_none_or(|u| m.id < u)
    }
}

/// Storage for the messages read model. Storing a message is idempotent by its id.
#[async_trait]
pub trait MessageStore: ReadBackend {
    /// Store messages, then move the `messages` checkpoint from `from` to `to`.
    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError>;

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError>;

    /// Up to `filter.limit` matching messages, newest first.
    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError>;
}
