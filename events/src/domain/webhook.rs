//! A webhook call as the outbox carries it: rendered when its cause is committed, posted
//! later by the webhook worker exactly as written (a retry is the same call, with the same
//! `webhook-id`), signed at each try the Standard Webhooks way with the secret it names.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::OutboxMessage;

/// The outbox kind the webhook worker sends.
pub const OUTBOX_KIND: &str = "webhook";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    /// `whsec_` and the base64 of the signing key.
    pub secret: String,
    /// The JSON body, exactly as signed.
    pub body: String,
}

impl Webhook {
    pub fn into_outbox(self, id: Uuid) -> OutboxMessage {
        OutboxMessage {
            id,
            kind: OUTBOX_KIND.to_owned(),
            // Serializing plain strings cannot fail.
            payload: serde_json::to_value(&self).unwrap_or(serde_json::Value::Null),
        }
    }
}
