//! The messages read model in Redis. Keys, under `P:{messages}:`:
//! - `m:<id>`         the message as JSON
//! - `ix:all`         sorted set of every message id (score 0, ordered by id)
//! - `ix:tag:<tag>`   ids carrying a (case-folded) hashtag
//! - `ix:user:<u>`    ids posted by a (case-folded) user name
//! - `checkpoint`     hash {pos}: the last event position applied
//!
//! ULIDs sort by time as strings, so a date range or a cursor is a lexicographic range
//! (`ZREVRANGEBYLEX`) on one index and a page is two round trips whatever the data size.
//! Every key shares the `{messages}` hash tag, so the `MGET` of a page stays in one slot.
//! `SET` and `ZADD` of a message are idempotent: a batch written twice stores it once.

use async_trait::async_trait;
use cairn_events::Position;
use redis::AsyncCommands;
use ulid::Ulid;

use super::RedisStore;
use crate::read_store::{Applied, MessageFilter, MessageStore, ReadError, StoredMessage};

impl RedisStore {
    /// The index to walk for `filter` (with both a tag and a user, the smaller one).
    fn index_for(&self, filter: &MessageFilter, tag_first: bool) -> String {
        match (&filter.hashtag, &filter.user_name) {
            (Some(tag), Some(_)) if tag_first => self.key("messages", &format!("ix:tag:{tag}")),
            (_, Some(user)) => self.key("messages", &format!("ix:user:{user}")),
            (Some(tag), None) => self.key("messages", &format!("ix:tag:{tag}")),
            (None, None) => self.key("messages", "ix:all"),
        }
    }

    /// The messages stored under `ids`, in that order.
    async fn fetch(&self, ids: &[String]) -> Result<Vec<StoredMessage>, ReadError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.key("messages", &format!("m:{id}")))
            .collect();
        let mut conn = self.conn.clone();
        let bodies: Vec<Option<String>> = conn.mget(&keys).await?;
        bodies
            .into_iter()
            .flatten()
            .map(|b| serde_json::from_str(&b).map_err(|e| ReadError::Corrupt(e.to_string())))
            .collect()
    }
}

#[async_trait]
impl MessageStore for RedisStore {
    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let mut pipe = redis::pipe();
        for m in messages {
            let id = m.id.to_string();
            let body = serde_json::to_string(m).map_err(|e| ReadError::Corrupt(e.to_string()))?;
            pipe.set(self.key("messages", &format!("m:{id}")), body)
                .ignore();
            pipe.zadd(self.key("messages", "ix:all"), &id, 0).ignore();
            for tag in &m.hashtags {
                pipe.zadd(
                    self.key("messages", &format!("ix:tag:{}", tag.to_lowercase())),
                    &id,
                    0,
                )
                .ignore();
            }
            pipe.zadd(
                self.key(
                    "messages",
                    &format!("ix:user:{}", m.user_name.to_ascii_lowercase()),
                ),
                &id,
                0,
            )
            .ignore();
        }
        let mut conn = self.conn.clone();
        if !messages.is_empty() {
            let () = pipe.query_async(&mut conn).await?;
        }
        self.move_checkpoint(&mut conn, "messages", from, to).await
    }

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError> {
        Ok(self.fetch(&[id.to_string()]).await?.pop())
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError> {
        let mut conn = self.conn.clone();
        // With both a tag and a user, walk the smaller of the two indexes.
        let tag_first = if let (Some(tag), Some(user)) = (&filter.hashtag, &filter.user_name) {
            let tags: usize = conn
                .zcard(self.key("messages", &format!("ix:tag:{tag}")))
                .await?;
            let users: usize = conn
                .zcard(self.key("messages", &format!("ix:user:{user}")))
                .await?;
            tags <= users
        } else {
            false
        };
        let index = self.index_for(filter, tag_first);
        let min = filter.lower.map_or("-".to_owned(), |l| format!("[{l}"));
        let mut max = filter.upper.map_or("+".to_owned(), |u| format!("({u}"));
        let both = filter.hashtag.is_some() && filter.user_name.is_some();
        let chunk = if both {
            (filter.limit * 4).clamp(64, 2000)
        } else {
            filter.limit
        };
        let mut out = Vec::with_capacity(filter.limit);
        loop {
            let ids: Vec<String> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&index)
                .arg(&max)
                .arg(&min)
                .arg("LIMIT")
                .arg(0)
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
            let exhausted = ids.len() < chunk;
            if let Some(last) = ids.last() {
                max = format!("({last}");
            }
            for m in self.fetch(&ids).await? {
                if out.len() < filter.limit && filter.matches(&m) {
                    out.push(m);
                }
            }
            if exhausted || out.len() >= filter.limit || chunk == 0 {
                return Ok(out);
            }
        }
    }
}
