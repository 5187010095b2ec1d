//! The messages projection: each `message.posted` event becomes a stored message, indexed
//! by hashtag and by user.

use async_trait::async_trait;
use cairn_events::domain::message::{self, MessagePosted};
use cairn_events::{DecodeError, DomainEvent, Envelope, Position};
use chrono::{DateTime, Utc};

use super::Projection;
use crate::read_store::{Applied, ReadError, ReadModels, StoredMessage};

/// Messages by id, hashtag and user.
pub struct Messages;

#[async_trait]
impl Projection for Messages {
    fn name(&self) -> &'static str {
        "messages"
    }

    fn categories(&self) -> &'static [&'static str] {
        &[message::CATEGORY]
    }

    async fn apply(
        &self,
        models: &ReadModels,
        events: &[Envelope],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let messages: Vec<StoredMessage> = posted(events).map(|(_, m)| m).collect();
        models.messages.apply_messages(&messages, from, to).await
    }
}

/// The messages posted in `events`, with their positions; unreadable events are logged
/// and skipped.
pub(crate) fn posted(events: &[Envelope]) -> impl Iterator<Item = (Position, StoredMessage)> + '_ {
    events
        .iter()
        .filter_map(|envelope| match to_stored_message(envelope)? {
            Ok(m) => Some((envelope.position, m)),
            Err(error) => {
                tracing::error!(%error, "skipping unreadable event");
                None
            }
        })
}

/// The read-model form of a `message.posted` event; `None` for other event types.
pub fn to_stored_message(envelope: &Envelope) -> Option<Result<StoredMessage, DecodeError>> {
    if envelope.event_type != MessagePosted::TYPE {
        return None;
    }
    Some(MessagePosted::decode(envelope).map(|posted| {
        let created_at =
            DateTime::<Utc>::from_timestamp_millis(posted.message_id.timestamp_ms() as i64)
                .unwrap_or(envelope.occurred_at);
        StoredMessage {
            id: posted.message_id,
            user_id: posted.user_id.to_string(),
            user_name: posted.user_name,
            text: posted.text,
            hashtags: posted.hashtags.into_iter().map(String::from).collect(),
            created_at,
        }
    }))
}
