//! Signed, expiring download links.
//!
//! A link is `{public URL}/capsules/{id}/file/{name}?expires=…&signature=…`: the
//! signature is an HMAC-SHA256 over the capsule id and the expiry, so a link cannot be
//! made for another capsule or stretched; the name in the path is only for the tools that
//! save a download under the last path segment. The same key derives the capsule ids of
//! submissions sent with an `Idempotency-Key`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cairn_events::domain::capsule::{self, Attachment, LinkKeyCreated};
use cairn_events::{AppendRequest, DomainEvent, EventStore, ExpectedVersion, NewEvent, StoreError};
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use uuid::Uuid;

use super::Files;
use crate::capsules::{CapsuleState, Capsules};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Files {
    /// The capsule id a submission with Idempotency-Key `key` gets: the same for every
    /// retry, and as unguessable as a random one to anyone without the server's key.
    pub fn keyed_id(&self, key: &str) -> Uuid {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("capsule-idempotency:{key}").as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut bytes = [0_u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    fn mac(&self, capsule_id: Uuid, expires: i64) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("capsule-file:{capsule_id}:{expires}").as_bytes());
        mac
    }

    /// A download link for the file of `state`, working until `now` + the link lifetime.
    pub fn link(
        &self,
        public_url: &str,
        state: &CapsuleState,
        attachment: &Attachment,
        now: DateTime<Utc>,
    ) -> Link {
        let capsule_id = state.submitted.capsule_id;
        let until = now + self.link_ttl;
        let expires = until.timestamp();
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(capsule_id, expires).finalize().into_bytes());
        let url = format!(
            "{}/capsules/{capsule_id}/file/{}?expires={expires}&signature={signature}",
            public_url.trim_end_matches('/'),
            utf8_percent_encode(&attachment.file_name, PATH_SEGMENT),
        );
        Link { url, until }
    }

    /// Whether `signature` signs `capsule_id` until `expires`.
    pub(super) fn verify(&self, capsule_id: Uuid, expires: i64, signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.mac(capsule_id, expires).verify_slice(&sig).is_ok())
    }
}

/// A signed download link and when it stops working.
#[derive(Clone, Debug)]
pub struct Link {
    pub url: String,
    pub until: DateTime<Utc>,
}

/// Characters escaped in a path segment.
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The key download links are signed with: `configured` (`CAIRN_LINK_KEY`) if given,
/// else one kept in the event store, made by the first process that needs it.
pub async fn link_key(
    events: &dyn EventStore,
    configured: Option<&str>,
) -> Result<Vec<u8>, StoreError> {
    if let Some(key) = configured {
        return Ok(key.as_bytes().to_vec());
    }
    for _ in 0..2 {
        let stream = events.read_stream(capsule::LINK_KEY_STREAM).await?;
        if let Some(first) = stream.first() {
            let created =
                LinkKeyCreated::decode(first).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            return URL_SAFE_NO_PAD
                .decode(created.key)
                .map_err(|e| StoreError::Corrupt(format!("the download-link key: {e}")));
        }
        let key: [u8; 32] = rand::random();
        let created = LinkKeyCreated {
            key: URL_SAFE_NO_PAD.encode(key),
        };
        let append = events
            .append(AppendRequest::new(
                capsule::LINK_KEY_STREAM,
                ExpectedVersion::NoStream,
                vec![NewEvent::new(&created, Capsules::metadata("cairn"))],
            ))
            .await;
        match append {
            Ok(_) => return Ok(key.to_vec()),
            // Another process made one first: use that.
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Corrupt(
        "the download-link key could be neither read nor made".to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn links_are_signed() {
        let files = Files::new(
            crate::blobs::Blobs::new(Arc::new(object_store::memory::InMemory::new())),
            b"0123456789abcdef0123456789abcdef",
        );
        let id = Uuid::from_u128(1);
        let mac = URL_SAFE_NO_PAD.encode(files.mac(id, 1_000).finalize().into_bytes());
        assert!(files.verify(id, 1_000, &mac));
        assert!(!files.verify(id, 1_001, &mac), "the expiry is signed");
        assert!(
            !files.verify(Uuid::from_u128(2), 1_000, &mac),
            "so is the capsule"
        );
        assert!(!files.verify(id, 1_000, "not-base64!"));
    }
}
