//! Webhook calls, signed the Standard Webhooks way: `POST` of the JSON body with
//! `webhook-id` (the outbox message's id: the same on every retry), `webhook-timestamp`
//! (seconds, at this try) and `webhook-signature` (`v1,` and the base64 of the
//! HMAC-SHA256 of `{id}.{timestamp}.{body}` under the secret's key). A `2xx` is
//! delivered; `408`, `429`, `5xx` and network failures are tried again with backoff; any
//! other answer is a dead letter (revived with `cairn outbox retry`).

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cairn_events::QueuedMessage;
use cairn_events::domain::webhook::{OUTBOX_KIND, Webhook};
use hmac::{KeyInit, Mac};

use crate::email::SendError;
use crate::outbox::Delivery;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// How long a call may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Posts the outbox's webhook calls.
pub struct WebhookDelivery {
    client: reqwest::Client,
}

impl WebhookDelivery {
    pub fn new() -> Result<Self, String> {
        // reqwest's rustls needs a provider chosen before a client is built: ring, as
        // lettre and sqlx use. Installing it again is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            // A webhook's answer is read, not followed elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the webhook client: {e}"))?;
        Ok(WebhookDelivery { client })
    }
}

/// The `webhook-signature` of `body` sent as message `id` at `timestamp`, under `secret`
/// (`whsec_…`); `None` for a secret that is not base64.
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()?;
    let mut mac = HmacSha256::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

#[async_trait]
impl Delivery for WebhookDelivery {
    fn kind(&self) -> &'static str {
        OUTBOX_KIND
    }

    async fn deliver(&self, queued: &QueuedMessage, _last_try: bool) -> Result<(), SendError> {
        let hook = serde_json::from_value::<Webhook>(queued.message.payload.clone())
            .map_err(|e| SendError::Permanent(format!("unreadable webhook: {e}")))?;
        let id = format!("msg_{}", queued.message.id.simple());
        let timestamp = chrono::Utc::now().timestamp();
        let signed = signature(&hook.secret, &id, timestamp, &hook.body).ok_or_else(|| {
            SendError::Permanent("the service's webhook secret is not valid".into())
        })?;
        let sent = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signed)
            .body(hook.body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_builder() => {
                return Err(SendError::Permanent(format!("{}: {error}", hook.url)));
            }
            Err(error) => return Err(SendError::Transient(format!("{}: {error}", hook.url))),
        };
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
            Err(SendError::Transient(format!(
                "{} answered {status}",
                hook.url
            )))
        } else {
            Err(SendError::Permanent(format!(
                "{} answered {status}",
                hook.url
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).as_deref(),
            Some("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
        );
        assert_eq!(signature("whsec_%%%", "m", 1, body), None);
    }
}
