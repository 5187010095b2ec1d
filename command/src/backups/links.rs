//! Signed, expiring download links for backups: `{public URL}/backups/{id}/file?expires=…
//! &signature=…`, an HMAC-SHA256 over the backup's id and the expiry with the server's link
//! key, so a link opens one backup, until it expires, without a token (the upload's answer
//! carries one, as Dome's did).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{KeyInit, Mac};
use uuid::Uuid;

use super::Backups;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl Backups {
    fn mac(&self, backup_id: Uuid, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("backup-file:{backup_id}:{expires}").as_bytes());
        mac
    }

    /// A link to a backup's file working until `now` + the link lifetime.
    pub fn link(&self, backup_id: Uuid, now: DateTime<Utc>) -> String {
        let expires = (now + self.link_ttl).timestamp();
        let signature =
            URL_SAFE_NO_PAD.encode(self.mac(backup_id, expires).finalize().into_bytes());
        format!(
            "{}{}?expires={expires}&signature={signature}",
            self.public_url.trim_end_matches('/'),
            file_path(backup_id)
        )
    }

    /// Whether `signature` signs the backup until `expires`.
    pub fn verify(&self, backup_id: Uuid, expires: i64, signature: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|sig| self.mac(backup_id, expires).verify_slice(&sig).is_ok())
    }
}

/// The path of a backup's file.
pub fn file_path(backup_id: Uuid) -> String {
    format!("/backups/{backup_id}/file")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::blobs::Blobs;

    #[tokio::test]
    async fn links_open_one_backup_until_they_expire() {
        let path = std::env::temp_dir().join(format!("cairn-links-{}.db", Uuid::now_v7()));
        let events: Arc<dyn cairn_events::EventStore> = cairn_events::open_sqlite(&path)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let blobs = Blobs::new(Arc::new(object_store::memory::InMemory::new()));
        let key = [7_u8; 32];
        let backups = Backups::new(
            events,
            blobs,
            cairn_events::Clock::system(),
            &key,
            "https://backups.example",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let b = Uuid::from_u128(2);
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let link = backups.link(b, now);
        let query = link.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        let expires: i64 = param("expires").parse().unwrap_or_default();
        assert_eq!(expires, (now + backups.link_ttl).timestamp());
        let signature = param("signature");
        assert!(link.starts_with("https://backups.example/backups/"));
        assert!(backups.verify(b, expires, &signature));
        assert!(!backups.verify(b, expires + 1, &signature));
        assert!(!backups.verify(Uuid::from_u128(3), expires, &signature));
        assert!(!backups.verify(b, expires, "not base64!"));
    }
}
