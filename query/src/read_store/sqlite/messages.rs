//! The messages read model in SQLite (tables of each generation, `{g}` in the SQL):
//! - `messages`      one row per message; `id` is the ULID's 16 big-endian bytes, so
//!   comparing blobs compares ids, and a date range or cursor is a range on its index
//! - `message_tags`  (case-folded tag, id): the hashtag index
//!
//! Rows are inserted `OR IGNORE` by id, so a message written twice is stored once.

use async_trait::async_trait;
use cairn_events::Position;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use ulid::Ulid;

use super::{BoxFuture, SqliteStore, checkpoint_is, finish, set_checkpoint};
use crate::read_store::{Applied, MessageFilter, MessageStore, ReadError, StoredMessage};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS {g}messages (
    seq INTEGER PRIMARY KEY,
    id BLOB NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_key TEXT NOT NULL,
    text TEXT NOT NULL,
    hashtags TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {g}messages_by_user ON {g}messages (user_key, id);
CREATE TABLE IF NOT EXISTS {g}message_tags (
    tag TEXT NOT NULL,
    id BLOB NOT NULL,
    PRIMARY KEY (tag, id)
) WITHOUT ROWID;
";

pub(super) const TABLES: [&str; 2] = ["messages", "message_tags"];

const COLUMNS: &str = "m.id, m.user_id, m.user_name, m.text, m.hashtags, m.created_at";

/// A message as the batch insert reads it from a JSON array.
#[derive(Serialize)]
struct BatchRow<'a> {
    /// The id's 32 hex digits (`unhex` turns them into the stored blob).
    id: String,
    user_id: &'a str,
    user_name: &'a str,
    user_key: String,
    text: &'a str,
    hashtags: &'a [String],
    tag_keys: Vec<String>,
    created_at: i64,
}

impl<'a> From<&'a StoredMessage> for BatchRow<'a> {
    fn from(m: &'a StoredMessage) -> Self {
        BatchRow {
            id: format!("{:032x}", u128::from(m.id)),
            user_id: &m.user_id,
            user_name: &m.user_name,
            user_key: m.user_name.to_ascii_lowercase(),
            text: &m.text,
            hashtags: &m.hashtags,
            tag_keys: m.hashtags.iter().map(|t| t.to_lowercase()).collect(),
            created_at: m.created_at.timestamp_millis(),
        }
    }
}

/// Insert a batch and move the checkpoint, inside the writer's `BEGIN IMMEDIATE`.
fn insert_messages<'a>(
    conn: &'a mut SqliteConnection,
    store: &'a SqliteStore,
    rows: String,
    from: Position,
    to: Position,
) -> BoxFuture<'a, Result<Applied, sqlx::Error>> {
    Box::pin(async move {
        if !checkpoint_is(conn, store, "messages", from).await? {
            return Ok(Applied::Moved);
        }
        sqlx::query(&store.sql(
            "INSERT OR IGNORE INTO {g}messages
                 (id, user_id, user_name, user_key, text, hashtags, created_at)
             SELECT unhex(value ->> 'id'), value ->> 'user_id', value ->> 'user_name',
                    value ->> 'user_key', value ->> 'text', value -> 'hashtags',
                    value ->> 'created_at'
             FROM json_each(?1)",
        ))
        .bind(&rows)
        .execute(&mut *conn)
        .await?;
        sqlx::query(&store.sql(
            "INSERT OR IGNORE INTO {g}message_tags (tag, id)
             SELECT t.value, unhex(m.value ->> 'id')
             FROM json_each(?1) AS m, json_each(m.value -> 'tag_keys') AS t",
        ))
        .bind(&rows)
        .execute(&mut *conn)
        .await?;
        set_checkpoint(conn, store, "messages", to).await?;
        Ok(Applied::Done)
    })
}

fn decode(row: &SqliteRow) -> Result<StoredMessage, ReadError> {
    let corrupt = |what: &str| ReadError::Corrupt(format!("message row: {what}"));
    let id: Vec<u8> = row.try_get("id")?;
    let id = <[u8; 16]>::try_from(id.as_slice()).map_err(|_| corrupt("id"))?;
    let hashtags: String = row.try_get("hashtags")?;
    let created_at: i64 = row.try_get("created_at")?;
    Ok(StoredMessage {
        id: Ulid::from_bytes(id),
        user_id: row.try_get("user_id")?,
        user_name: row.try_get("user_name")?,
        text: row.try_get("text")?,
        hashtags: serde_json::from_str(&hashtags).map_err(|_| corrupt("hashtags"))?,
        created_at: DateTime::<Utc>::from_timestamp_millis(created_at)
            .ok_or_else(|| corrupt("created_at"))?,
    })
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let rows: Vec<BatchRow<'_>> = messages.iter().map(BatchRow::from).collect();
        let rows = serde_json::to_string(&rows).map_err(|e| ReadError::Corrupt(e.to_string()))?;
        let mut conn = self.begin().await?;
        let result = insert_messages(&mut conn, self, rows, from, to).await;
        finish(&mut conn, result).await
    }

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError> {
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM {{g}}messages m WHERE m.id = ?1"
        ));
        let row = sqlx::query(&sql)
            .bind(id.to_bytes().to_vec())
            .fetch_optional(self.pool())
            .await?;
        row.as_ref().map(decode).transpose()
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError> {
        let lower = filter.lower.unwrap_or(Ulid::nil());
        let upper = filter
            .upper
            .unwrap_or(Ulid::from_parts(u64::MAX >> 16, u128::MAX));
        if lower >= upper {
            return Ok(Vec::new());
        }
        // Walk the hashtag index when there is a tag, else the user index, else every id;
        // the id range (and the user, beside a tag) narrows the walk, newest first.
        let (from, walk) = match (&filter.hashtag, &filter.user_name) {
            (Some(_), _) => (
                "{g}message_tags t JOIN {g}messages m ON m.id = t.id WHERE t.tag = ? AND",
                "t.id",
            ),
            (None, Some(_)) => ("{g}messages m WHERE m.user_key = ? AND", "m.id"),
            (None, None) => ("{g}messages m WHERE", "m.id"),
        };
        let beside_tag = filter.hashtag.is_some() && filter.user_name.is_some();
        let sql = self.sql(&format!(
            "SELECT {COLUMNS} FROM {from} {walk} >= ? AND {walk} < ?{} ORDER BY {walk} DESC LIMIT ?",
            if beside_tag {
                " AND m.user_key = ?"
            } else {
                ""
            },
        ));
        let mut query = sqlx::query(&sql);
        if let Some(key) = filter.hashtag.as_ref().or(filter.user_name.as_ref()) {
            query = query.bind(key);
        }
        query = query
            .bind(lower.to_bytes().to_vec())
            .bind(upper.to_bytes().to_vec());
        if beside_tag {
            query = query.bind(&filter.user_name);
        }
        let rows = query
            .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(decode).collect()
    }
}
