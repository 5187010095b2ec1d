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
    /// The stream the email's sending is recorded in ([`EmailSent`]), if any: its cause's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_in: Option<String>,
    /// What the email is (`confirm`, `delivery`, …), for that record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// For a delivery, which occurrence of its cause it delivers (from 1), for that record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u32>,
}

/// An email was accepted by the mail server (or written to the outbox directory). Appended
/// by the email worker to the stream the email names ([`Email::record_in`]) after each
/// successful send: a resend after a crash is recorded again, with the same Message-ID.
/// No address or content: only what tells the email apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailSent {
    /// The outbox message's id.
    pub outbox_id: Uuid,
    pub message_id: String,
    /// What the email was (`confirm`, `delivery`, …), as its cause named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// Tries before the one that succeeded.
    pub retries: i32,
    /// For a delivery, which occurrence it delivered (from 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurrence: Option<u32>,
}

impl crate::DomainEvent for EmailSent {
    const TYPE: &'static str = "email.sent";
    const SCHEMA_VERSION: i32 = 1;
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
