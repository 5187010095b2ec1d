//! Users and tokens, managed from the CLI (`cairn user add`, `cairn token revoke`, ...).
//!
//! A user is the stream `user-<name>`; its tokens are events in it. Issuing a token also
//! opens the stream `token-<hash>` in the same append, expecting it not to exist, so a
//! token string is held by one user only, however many `cairn user add` run at once, and a
//! revoked token (its stream stays) is never issued again. These functions are the use
//! cases; the CLI only parses arguments and prints.

use std::collections::BTreeMap;

use cairn_events::domain::user::{
    self, TokenClaimed, TokenIssued, TokenRevoked, UserCreated, UserName, token_stream_id,
};
use cairn_events::{
    AppendRequest, DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent,
    Position, StoreError, category_of,
};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::{hash_token, mint_token};

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("{0}")]
    Invalid(String),
    #[error("a user named {0} already exists")]
    Exists(String),
    #[error("no user named {0}")]
    NoSuchUser(String),
    #[error("no live token matches {0:?}")]
    NoSuchToken(String),
    #[error(
        "that token is already taken (a token belongs to one user, and a revoked one is never issued again)"
    )]
    TokenTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token as `user list` shows it (never the secret itself).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenInfo {
    pub id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub weak: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked: bool,
    hash: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: Uuid,
    pub name: String,
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub tokens: Vec<TokenInfo>,
    version: i64,
}

/// The outcome of a write: what the caller prints, and where in the log it landed.
pub struct Written<T> {
    pub value: T,
    pub position: Position,
}

fn fold(events: &[Envelope]) -> Option<User> {
    let mut user: Option<User> = None;
    for e in events {
        match e.event_type.as_str() {
            UserCreated::TYPE => {
                if let Ok(c) = UserCreated::decode(e) {
                    user = Some(User {
                        id: c.user_id,
                        name: c.name.to_string(),
                        email: c.email,
                        created_at: e.occurred_at,
                        tokens: Vec::new(),
                        version: e.version,
                    });
                }
            }
            TokenIssued::TYPE => {
                if let (Some(u), Ok(t)) = (user.as_mut(), TokenIssued::decode(e)) {
                    u.tokens.push(TokenInfo {
                        id: t.token_id,
                        issued_at: e.occurred_at,
                        weak: t.weak,
                        expires_at: t.expires_at,
                        revoked: false,
                        hash: t.token_hash,
                    });
                }
            }
            TokenRevoked::TYPE => {
                if let (Some(u), Ok(r)) = (user.as_mut(), TokenRevoked::decode(e))
                    && let Some(t) = u.tokens.iter_mut().find(|t| t.id == r.token_id)
                {
                    t.revoked = true;
                }
            }
            _ => {}
        }
        if let Some(u) = user.as_mut() {
            u.version = e.version;
        }
    }
    user
}

fn cli() -> Metadata {
    Metadata {
        actor: Some("cli".into()),
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
    }
}

/// Every user, by name.
pub async fn list_users(events: &dyn EventStore) -> Result<Vec<User>, UserError> {
    let mut streams: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
    let mut at = 0;
    loop {
        let batch = events.read_all(at, 1000, &[user::CATEGORY]).await?;
        let Some(last) = batch.last().map(|e| e.position) else {
            break;
        };
        at = last;
        for e in batch {
            streams.entry(e.stream_id.clone()).or_default().push(e);
        }
    }
    Ok(streams.values().filter_map(|s| fold(s)).collect())
}

/// Tokens issued before each token had a claim stream are found among the users' events:
/// such a token, revoked or not, is taken too.
async fn ensure_token_unused(events: &dyn EventStore, hash: &str) -> Result<(), UserError> {
    let users = list_users(events).await?;
    if users.iter().flat_map(|u| &u.tokens).any(|t| t.hash == hash) {
        return Err(UserError::TokenTaken);
    }
    Ok(())
}

/// `request`, also claiming the token of `issued` (its stream must not exist yet).
fn claiming(request: AppendRequest, issued: &TokenIssued, metadata: Metadata) -> AppendRequest {
    let claim = TokenClaimed {
        token_id: issued.token_id,
        user_id: issued.user_id,
    };
    request.and_stream(
        token_stream_id(&issued.token_hash),
        ExpectedVersion::NoStream,
        vec![NewEvent::new(&claim, metadata)],
    )
}

/// A conflict on a token's claim stream: the token is taken.
fn token_conflict(error: &StoreError) -> bool {
    matches!(error, StoreError::Conflict { stream_id, .. }
        if category_of(stream_id) == user::TOKEN_CATEGORY)
}

/// The token to issue: a new one, or an imported string (flagged weak).
async fn token_event(
    events: &dyn EventStore,
    user_id: Uuid,
    import: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(String, TokenIssued), UserError> {
    let (token, weak) = match import {
        Some(t) => {
            let t = t.trim();
            if t.is_empty()
                || t.len() > 512
                || t.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(UserError::Invalid(
                    "an imported token must be 1-512 visible characters".into(),
                ));
            }
            (t.to_owned(), true)
        }
        None => (mint_token(), false),
    };
    let token_hash = hash_token(&token);
    ensure_token_unused(events, &token_hash).await?;
    Ok((
        token,
        TokenIssued {
            token_id: Uuid::now_v7(),
            user_id,
            token_hash,
            weak,
            expires_at,
        },
    ))
}

/// Create a user with a first token; returns the token string (shown once).
pub async fn add_user(
    events: &dyn EventStore,
    name: &str,
    email: Option<&str>,
    import_token: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Written<String>, UserError> {
    let name = UserName::parse(name).map_err(UserError::Invalid)?;
    if let Some(e) = email
        && (e.len() > 255 || !e.contains('@') || e.chars().any(char::is_whitespace))
    {
        return Err(UserError::Invalid(format!("{e:?} is not an email address")));
    }
    let user_id = Uuid::now_v7();
    let (token, issued) = token_event(events, user_id, import_token, expires_at).await?;
    let metadata = cli();
    let created = UserCreated {
        user_id,
        name: name.clone(),
        email: email.map(str::to_owned),
    };
    let request = AppendRequest::new(
        name.stream_id(),
        ExpectedVersion::NoStream,
        vec![
            NewEvent::new(&created, metadata.clone()),
            NewEvent::new(&issued, metadata.clone()),
        ],
    );
    match events.append(claiming(request, &issued, metadata)).await {
        Ok(appended) => Ok(Written {
            value: token,
            position: appended.last_position,
        }),
        Err(e) if token_conflict(&e) => Err(UserError::TokenTaken),
        Err(StoreError::Conflict { .. }) => Err(UserError::Exists(name.to_string())),
        Err(e) => Err(e.into()),
    }
}

/// The user named `name`.
pub async fn user_by_name(events: &dyn EventStore, name: &str) -> Result<User, UserError> {
    let name = UserName::parse(name).map_err(UserError::Invalid)?;
    let stream = events.read_stream(&name.stream_id()).await?;
    fold(&stream).ok_or_else(|| UserError::NoSuchUser(name.to_string()))
}

/// Issue another token for an existing user.
pub async fn add_token(
    events: &dyn EventStore,
    name: &str,
    import_token: Option<&str>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<Written<String>, UserError> {
    let name = UserName::parse(name).map_err(UserError::Invalid)?;
    let stream = events.read_stream(&name.stream_id()).await?;
    let user = fold(&stream).ok_or_else(|| UserError::NoSuchUser(name.to_string()))?;
    let (token, issued) = token_event(events, user.id, import_token, expires_at).await?;
    let metadata = cli();
    let request = AppendRequest::new(
        name.stream_id(),
        ExpectedVersion::Exact(user.version),
        vec![NewEvent::new(&issued, metadata.clone())],
    );
    let appended = match events.append(claiming(request, &issued, metadata)).await {
        Ok(appended) => appended,
        Err(e) if token_conflict(&e) => return Err(UserError::TokenTaken),
        Err(e) => return Err(e.into()),
    };
    Ok(Written {
        value: token,
        position: appended.last_position,
    })
}

/// Revoke a token, named by its id (as `user list` shows it) or by the token itself.
/// Returns the owner's name and the token id.
pub async fn revoke_token(
    events: &dyn EventStore,
    id_or_token: &str,
) -> Result<Written<(String, Uuid)>, UserError> {
    let by_id = Uuid::parse_str(id_or_token).ok();
    let hash = hash_token(id_or_token);
    let users = list_users(events).await?;
    let (user, token) = users
        .iter()
        .find_map(|u| {
            u.tokens
                .iter()
                .find(|t| !t.revoked && (Some(t.id) == by_id || t.hash == hash))
                .map(|t| (u, t))
        })
        .ok_or_else(|| UserError::NoSuchToken(id_or_token.chars().take(12).collect()))?;
    let stream = UserName::parse(&user.name)
        .map_err(UserError::Invalid)?
        .stream_id();
    let revoked = TokenRevoked {
        token_id: token.id,
        user_id: user.id,
    };
    let appended = events
        .append(AppendRequest::new(
            stream,
            ExpectedVersion::Exact(user.version),
            vec![NewEvent::new(&revoked, cli())],
        ))
        .await?;
    Ok(Written {
        value: (user.name.clone(), token.id),
        position: appended.last_position,
    })
}
