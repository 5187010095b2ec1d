//! Read models in Redis.
//!
//! Layout, all under the configured prefix `P`:
//! - `P:{messages}:m:<id>`        the message as JSON
//! - `P:{messages}:ix:all`        sorted set of every message id (score 0, ordered by id)
//! - `P:{messages}:ix:tag:<tag>`  ids carrying a (case-folded) hashtag
//! - `P:{messages}:ix:user:<u>`   ids posted by a (case-folded) user name
//! - `P:{messages}:checkpoint`    hash {pos}: the last event position applied
//!
//! ULIDs sort by time as strings, so a date range or a cursor is a lexicographic range
//! (`ZREVRANGEBYLEX`) on one index and a page is two round trips whatever the data size.
//! `{messages}` is a Redis Cluster hash tag: the one multi-key command (`MGET` of a page)
//! stays within one slot. Writes and scripts touch one key each; every write
//! is idempotent, and the checkpoint moves by compare-and-set in a script that touches only
//! its own key, so a batch applied twice after a crash, or by a runner that lost its lease,
//! leaves the same state.

use async_trait::async_trait;
use cairn_events::Position;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use ulid::Ulid;

use super::{Applied, MessageFilter, ReadError, ReadStore, StoredMessage};

/// Moves a checkpoint from ARGV[1] to ARGV[2] only if it is still at ARGV[1].
const CHECKPOINT_CAS: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'pos') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'pos', ARGV[2])
return 1
";

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    cas: redis::Script,
}

impl RedisStore {
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ReadError> {
        // Without TCP_NODELAY a pipelined write can sit out a delayed ACK (~40 ms).
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(info.set_tcp_settings(tcp))?;
        let conn = ConnectionManager::new(client).await?;
        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            cas: redis::Script::new(CHECKPOINT_CAS),
        };
        store.warn_if_evicting().await;
        Ok(store)
    }

    /// Read models must not be evicted silently: a missing key would read as "no message".
    async fn warn_if_evicting(&self) {
        let mut conn = self.conn.clone();
        let policy: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        if let Ok(pair) = policy
            && let Some(policy) = pair.get(1)
            && policy != "noeviction"
        {
            tracing::warn!(
                policy = %policy,
                "Redis maxmemory-policy may evict read-model keys; set it to noeviction"
            );
        }
    }

    /// `<prefix>:{<projection>}:<rest>`: the braces are a Redis Cluster hash tag, so every
    /// key of one read model lives in one slot and multi-key commands (`MGET`) work there.
    fn key(&self, projection: &str, rest: &str) -> String {
        format!("{}:{{{projection}}}:{rest}", self.prefix)
    }

    fn index_for(&self, filter: &MessageFilter, tag_first: bool) -> String {
        match (&filter.hashtag, &filter.user_name) {
            (Some(tag), Some(_)) if tag_first => self.key("messages", &format!("ix:tag:{tag}")),
            (_, Some(user)) => self.key("messages", &format!("ix:user:{user}")),
            (Some(tag), None) => self.key("messages", &format!("ix:tag:{tag}")),
            (None, None) => self.key("messages", "ix:all"),
        }
    }

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
impl ReadStore for RedisStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        let mut conn = self.conn.clone();
        let pos: Option<i64> = conn.hget(self.key(projection, "checkpoint"), "pos").await?;
        Ok(pos.unwrap_or(0))
    }

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
        let moved: i64 = self
            .cas
            .key(self.key("messages", "checkpoint"))
            .arg(from)
            .arg(to)
            .invoke_async(&mut conn)
            .await?;
        Ok(if moved == 1 {
            Applied::Done
        } else {
            Applied::Moved
        })
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

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        let mut conn = self.conn.clone();
        let pattern = self.key(projection, "*");
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            let checkpoint = self.key(projection, "checkpoint");
            for key in keys.into_iter().filter(|k| *k != checkpoint) {
                let _: i64 = conn.unlink(key).await?;
            }
            if next == 0 {
                // The checkpoint goes last: a runner that sees it gone rebuilds onto an
                // empty model, not onto one still being deleted.
                let _: i64 = conn.unlink(checkpoint).await?;
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn ping(&self) -> Result<(), ReadError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
