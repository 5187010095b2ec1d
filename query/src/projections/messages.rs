//! The messages projection: each `message.posted` event becomes a stored message, indexed
//! by hashtag and by user.

use cairn_events::domain::message::MessagePosted;
use cairn_events::{DecodeError, DomainEvent, Envelope};
use chrono::{DateTime, Utc};

use crate::read_store::StoredMessage;

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
