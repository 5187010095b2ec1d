//! Bearer tokens.
//!
//! Tokens are 256 random bits, shown once, and stored only as SHA-256 (a fast hash is
//! enough for secrets that cannot be guessed). Every process keeps all token hashes in
//! memory, fed by the `user` event streams, so checking a token costs no database round
//! trip; the registry follows the log (woken by appends, and at least once a second), so a
//! revocation made anywhere takes effect everywhere within a second.
//!
//! A token is unique across users (its claim stream sees to it, see `users`), and a
//! revocation retires the token itself, not only one user's grant of it: a revoked hash
//! never authenticates again, whoever it was issued to. Tokens issued twice before claims
//! existed belong to the first user they were issued to.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use cairn_events::domain::user::{self, TokenIssued, TokenRevoked, UserCreated};
use cairn_events::{DomainEvent, Envelope, EventStore, Position};
use chrono::{DateTime, Utc};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use cairn_http::ApiError;

use crate::CommandState;

/// The prefix of tokens Cairn mints, so they are recognisable in logs and secret scanners.
pub const TOKEN_PREFIX: &str = "cairn_";

/// A fresh token: `cairn_` and 32 random bytes, base64url.
pub fn mint_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

pub use cairn_events::domain::user::hash_token;

#[derive(Clone, Debug)]
struct TokenEntry {
    user_id: Uuid,
    expires_at: Option<DateTime<Utc>>,
}

#[derive(Default)]
struct Tokens {
    by_hash: HashMap<String, TokenEntry>,
    hash_of: HashMap<Uuid, String>,
    names: HashMap<Uuid, String>,
    /// Hashes of revoked tokens: refused for good.
    revoked: HashSet<String>,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub id: Uuid,
    pub name: String,
}

/// All live tokens, by hash.
pub struct TokenRegistry {
    tokens: RwLock<Tokens>,
    position: watch::Sender<Position>,
}

impl Default for TokenRegistry {
    fn default() -> Self {
        TokenRegistry {
            tokens: RwLock::default(),
            position: watch::channel(0).0,
        }
    }
}

impl TokenRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The user a token belongs to, if it is live.
    pub fn authenticate(&self, token: &str, now: DateTime<Utc>) -> Option<AuthUser> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let entry = tokens.by_hash.get(&hash_token(token))?;
        if entry.expires_at.is_some_and(|at| at <= now) {
            return None;
        }
        let name = tokens.names.get(&entry.user_id)?.clone();
        Some(AuthUser {
            id: entry.user_id,
            name,
        })
    }

    fn apply(&self, envelope: &Envelope) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        match envelope.event_type.as_str() {
            UserCreated::TYPE => {
                if let Ok(e) = UserCreated::decode(envelope) {
                    tokens.names.insert(e.user_id, e.name.to_string());
                }
            }
            TokenIssued::TYPE => {
                if let Ok(e) = TokenIssued::decode(envelope) {
                    tokens.hash_of.insert(e.token_id, e.token_hash.clone());
                    if !tokens.revoked.contains(&e.token_hash) {
                        tokens.by_hash.entry(e.token_hash).or_insert(TokenEntry {
                            user_id: e.user_id,
                            expires_at: e.expires_at,
                        });
                    }
                }
            }
            TokenRevoked::TYPE => {
                if let Ok(e) = TokenRevoked::decode(envelope)
                    && let Some(hash) = tokens.hash_of.remove(&e.token_id)
                {
                    tokens.by_hash.remove(&hash);
                    tokens.revoked.insert(hash);
                }
            }
            _ => {}
        }
    }

    /// Wait until the registry has applied the log up to `position` (at most `timeout`).
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> bool {
        let mut rx = self.position.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Read every `user` event once, then return.
    pub async fn catch_up(&self, events: &dyn EventStore) -> Result<(), cairn_events::StoreError> {
        let head = events.head().await?;
        self.catch_up_to(events, head).await
    }

    /// Read the `user` events after the registry's position; `head` is a committed
    /// position the log is known to have reached, which the registry then counts as seen.
    async fn catch_up_to(
        &self,
        events: &dyn EventStore,
        head: Position,
    ) -> Result<(), cairn_events::StoreError> {
        loop {
            let at = *self.position.borrow();
            let batch = events.read_all(at, 1000, &[user::CATEGORY]).await?;
            for envelope in &batch {
                self.apply(envelope);
            }
            let last = batch.last().map_or(at, |e| e.position);
            if batch.len() < 1000 {
                self.position.send_replace(last.max(head));
                return Ok(());
            }
            self.position.send_replace(last);
        }
    }

    /// Follow the log until `shutdown` fires. The head comes from the store's wake-ups (its
    /// own commits, notifications, a periodic re-read), so following costs one read per
    /// wake-up and no separate head query.
    pub async fn follow(self: Arc<Self>, events: Arc<dyn EventStore>, shutdown: CancellationToken) {
        let mut wake = events.subscribe();
        loop {
            let head = *wake.borrow_and_update();
            if let Err(error) = self.catch_up_to(&*events, head).await {
                tracing::warn!(%error, "token registry could not read the log");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = wake.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
}

impl<S> FromRequestParts<S> for AuthUser
where
    CommandState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = CommandState::from_ref(state);
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::unauthorized())?;
        let (scheme, token) = header
            .trim()
            .split_once(' ')
            .ok_or(ApiError::unauthorized())?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::unauthorized());
        }
        state
            .tokens
            .authenticate(token.trim(), Utc::now())
            .ok_or(ApiError::unauthorized())
    }
}
