//! An email as the outbox carries it: rendered when its cause is committed, sent later by
//! the email worker exactly as written, so a resend is the same message.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::OutboxMessage;

/// The outbox kind the email worker sends.
pub const OUTBOX_KIND: &str = "email";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    /// The recipient's address and, if known, name.
    pub to: String,
    pub to_name: Option<String>,
    pub subject: String,
    pub text: String,
    pub html: String,
    /// Stable: derived from the cause (`<capsule-id.kind@host>`), so a resend after a
    /// crash is recognisable as the same message.
    pub message_id: String,
}

impl Email {
    /// The outbox message that sends this email; `id` is derived from its cause.
    pub fn into_outbox(self, id: Uuid) -> OutboxMessage {
        OutboxMessage {
            id,
            kind: OUTBOX_KIND.to_owned(),
            // Serializing plain strings cannot fail.
            payload: serde_json::to_value(&self).unwrap_or(serde_json::Value::Null),
        }
    }
}
