//! Read models in Redis.
//!
//! Layout, all under the configured prefix `P`:
//! - `P:{messages}:m:<id>`        the message as JSON
//! - `P:{messages}:ix:all`        sorted set of every message id (score 0, ordered by id)
//! - `P:{messages}:ix:tag:<tag>`  ids carrying a (case-folded) hashtag
//! - `P:{messages}:ix:user:<u>`   ids posted by a (case-folded) user name
//! - `P:{messages}:checkpoint`    hash {pos}: the last event position applied
//!
//! Trends, per scope `S` (a hashtag key, or `*` for all messages):
//! - `P:{trends:S}:m:<day>`       hash hour of the day → that hour's minutes, packed as
//!   `minute:count,…` (minute of the hour, ascending, no zeros); one per day; with a minute
//!   retention it expires (EXPIREAT) when its day falls out of it
//! - `P:{trends:S}:h:<day/32>`    hash hour → count, one per 32 days
//! - `P:{trends:S}:d:<day/1024>`  hash day → count
//! - `P:{trends:S}:u:<day>`       HyperLogLog of the hashtag's users that day
//! - `P:{trends:S}:last`          sorted set day → latest minute the hashtag was used that day
//! - `P:{trends:S}:pos`           the last event position counted in this scope
//! - `P:{trends}:rank`            sorted set hashtag → trending rank (`crate::trends`)
//! - `P:{trends}:checkpoint`      as for messages
//!
//! ULIDs sort by time as strings, so a date range or a cursor is a lexicographic range
//! (`ZREVRANGEBYLEX`) on one index and a page is two round trips whatever the data size.
//! `{messages}` is a Redis Cluster hash tag: the one multi-key command (`MGET` of a page)
//! stays within one slot. Writes and scripts touch one key each; every write
//! is idempotent, and the checkpoint moves by compare-and-set in a script that touches only
//! its own key, so a batch applied twice after a crash, or by a runner that lost its lease,
//! leaves the same state. Counters are not idempotent by themselves: each scope's keys
//! share one hash tag, and one script per scope adds a batch's counts (summed per minute,
//! hour and day first) only if the scope's `pos` is before them, and moves `pos` with them,
//! atomically and within one Cluster slot. Users (HyperLogLog) and latest minutes (`ZADD
//! GT`) are idempotent as they are and go beside the script in the same pipeline.
//!
//! Minutes are packed per hour because a month of them is the longest answer `/trend`
//! gives: 720 hash fields to read instead of 43,200, which a reply parser takes 60 times
//! less time over. The script merges a batch's minutes into each packed hour it touches.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use cairn_events::Position;
use chrono::Utc;
use redis::AsyncCommands;
use redis::RedisFuture;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use ulid::Ulid;

use super::{Applied, MessageFilter, ReadError, ReadStore, StoredMessage};
use crate::trends::{
    ALL, DayUsage, Level, MINUTES_PER_DAY, MINUTES_PER_HOUR, Minute, TrendHit, TrendRules,
    minute_of,
};

/// Moves a checkpoint from ARGV[1] to ARGV[2] only if it is still at ARGV[1].
const CHECKPOINT_CAS: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'pos') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'pos', ARGV[2])
return 1
";

/// Adds one scope's counts from one batch, once. KEYS[1] is the scope's `pos`: the last
/// position counted there. ARGV[1] is the scope's key prefix (its other keys share the
/// hash tag), ARGV[2] and ARGV[3] the first and last position of the batch's hits in this
/// scope, ARGV[4] the number N of counter increments, then N (hash, field, increment)
/// triples with the hash named after the prefix, then (hash, hour, packed minutes)
/// triples to merge into packed hours. Returns -1 when counted, 0 when counted before, or
/// `pos` when only part of the hits were counted before (another runner's batch
/// overlapped): the caller sends the rest.
const COUNT_HITS: &str = r"
local applied = tonumber(redis.call('GET', KEYS[1]) or '0')
local first, last = tonumber(ARGV[2]), tonumber(ARGV[3])
if applied >= last then return 0 end
if applied >= first then return applied end
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HINCRBY', ARGV[1] .. ARGV[i], ARGV[i + 1], ARGV[i + 2])
  i = i + 3
end
while i <= #ARGV do
  local key, hour = ARGV[1] .. ARGV[i], ARGV[i + 1]
  local counts = {}
  for m, c in string.gmatch(redis.call('HGET', key, hour) or '', '(%d+):(%d+)') do
    counts[tonumber(m)] = tonumber(c)
  end
  for m, c in string.gmatch(ARGV[i + 2], '(%d+):(%d+)') do
    m = tonumber(m)
    counts[m] = (counts[m] or 0) + tonumber(c)
  end
  local packed = {}
  for m = 0, 59 do
    if counts[m] then packed[#packed + 1] = string.format('%d:%d', m, counts[m]) end
  end
  redis.call('HSET', key, hour, table.concat(packed, ','))
  i = i + 3
end
redis.call('SET', KEYS[1], last)
return -1
";

/// Days per hash of hour counters, and per hash of day counters.
const DAYS_PER_HOUR_HASH: i64 = 32;
const DAYS_PER_DAY_HASH: i64 = 1024;

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    cas: redis::Script,
    count_hits: redis::Script,
    /// For a cluster: how to reach one node (`SCAN` is per node).
    cluster: Option<ClusterAccess>,
}

/// A connection to one Redis (or a primary), or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// The scheme and credentials of a cluster URL, to address its nodes one by one.
struct ClusterAccess {
    scheme: String,
    userinfo: String,
}

/// `redis+cluster://[user:password@]host:port,host:port,...` (or `rediss+cluster://`):
/// the scheme, the credentials part (with its `@`) and one URL per seed node.
fn cluster_seeds(url: &str) -> Option<(ClusterAccess, Vec<String>)> {
    let (scheme, rest) = url.split_once("+cluster://")?;
    let (userinfo, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.split('/').next().unwrap_or_default();
    let seeds: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{userinfo}{h}"))
        .collect();
    let access = ClusterAccess {
        scheme: scheme.to_owned(),
        userinfo,
    };
    (!seeds.is_empty()).then_some((access, seeds))
}

impl RedisStore {
    /// Connect to `url`: `redis://…` (or `rediss://`) for one Redis,
    /// `redis+cluster://host:port,host:port…` for a Redis Cluster.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, ReadError> {
        let (conn, cluster) = match cluster_seeds(url) {
            Some((access, seeds)) => {
                let mut infos = Vec::with_capacity(seeds.len());
                for seed in &seeds {
                    infos.push(redis::IntoConnectionInfo::into_connection_info(
                        seed.as_str(),
                    )?);
                }
                let tcp = infos
                    .first()
                    .map(|i| i.tcp_settings().clone())
                    .unwrap_or_default()
                    .set_nodelay(true);
                let client = ClusterClient::builder(infos).tcp_settings(tcp).build()?;
                let conn = client.get_async_connection().await?;
                (Conn::Cluster(conn), Some(access))
            }
            None => {
                // Without TCP_NODELAY a pipelined write can sit out a delayed ACK (~40 ms).
                let info = redis::IntoConnectionInfo::into_connection_info(url)?;
                let tcp = info.tcp_settings().clone().set_nodelay(true);
                let client = redis::Client::open(info.set_tcp_settings(tcp))?;
                (Conn::Single(ConnectionManager::new(client).await?), None)
            }
        };
        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            cas: redis::Script::new(CHECKPOINT_CAS),
            count_hits: redis::Script::new(COUNT_HITS),
            cluster,
        };
        store.warn_if_evicting().await;
        Ok(store)
    }

    /// Connections to every primary that holds keys: the one Redis, or each cluster
    /// primary (from `CLUSTER NODES`).
    async fn primaries(&self) -> Result<Vec<Conn>, ReadError> {
        let Some(access) = &self.cluster else {
            return Ok(vec![self.conn.clone()]);
        };
        let mut conn = self.conn.clone();
        let nodes: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            // `ip:port@cport[,hostname]`
            let host_port = address.split('@').next().unwrap_or_default();
            let url = format!("{}://{}{host_port}", access.scheme, access.userinfo);
            let client = redis::Client::open(url)?;
            out.push(Conn::Single(ConnectionManager::new(client).await?));
        }
        Ok(out)
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

    /// Move a projection's checkpoint from `from` to `to` if it is still at `from`.
    async fn move_checkpoint(
        &self,
        conn: &mut Conn,
        projection: &str,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let moved: i64 = self
            .cas
            .key(self.key(projection, "checkpoint"))
            .arg(from)
            .arg(to)
            .invoke_async(conn)
            .await?;
        Ok(if moved == 1 {
            Applied::Done
        } else {
            Applied::Moved
        })
    }

    /// The key prefix of one trend scope: `P:{trends:S}:`.
    fn scope_base(&self, scope: &str) -> String {
        self.key(&format!("trends:{scope}"), "")
    }

    /// Count `hits` in each of their scopes and record their users; for each hashtag and
    /// day touched, what its rank needs: (scope, users that day, users the day before,
    /// latest minute).
    async fn count_scopes(
        &self,
        conn: &mut Conn,
        hits: &[TrendHit],
        retention: Option<i64>,
    ) -> Result<Vec<(String, u64, u64, i64)>, ReadError> {
        let mut scopes: BTreeMap<&str, Vec<&TrendHit>> = BTreeMap::new();
        for hit in hits {
            for scope in hit.tags.iter().map(String::as_str).chain([ALL]) {
                scopes.entry(scope).or_default().push(hit);
            }
        }
        // Users and latest minutes first: idempotent, and needed for every hashtag and day
        // the batch touches even if its counts were added before.
        let mut days_of: Vec<(&str, i64)> = Vec::new();
        let groups: Vec<Vec<redis::Cmd>> = scopes
            .iter()
            .filter(|(scope, _)| **scope != ALL)
            .map(|(scope, hits)| {
                let base = self.scope_base(scope);
                let mut by_day: BTreeMap<i64, (Minute, Vec<&str>)> = BTreeMap::new();
                for hit in hits {
                    let day = by_day.entry(Level::Day.unit_of(hit.minute)).or_default();
                    day.0 = day.0.max(hit.minute);
                    day.1.push(&hit.user_id);
                }
                let mut group = Vec::new();
                for (day, (last, users)) in by_day {
                    days_of.push((scope, day));
                    group.push(
                        redis::cmd("PFADD")
                            .arg(format!("{base}u:{day}"))
                            .arg(users)
                            .clone(),
                    );
                    group.push(
                        redis::cmd("ZADD")
                            .arg(format!("{base}last"))
                            .arg("GT")
                            .arg(last)
                            .arg(day)
                            .clone(),
                    );
                    group.push(redis::cmd("PFCOUNT").arg(format!("{base}u:{day}")).clone());
                    group.push(
                        redis::cmd("PFCOUNT")
                            .arg(format!("{base}u:{}", day - 1))
                            .clone(),
                    );
                    group.push(
                        redis::cmd("ZSCORE")
                            .arg(format!("{base}last"))
                            .arg(day)
                            .clone(),
                    );
                }
                group
            })
            .collect();
        let answers: Vec<redis::Value> = self
            .pipelined(conn, groups)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut days = Vec::with_capacity(days_of.len());
        for ((scope, _), answer) in days_of.iter().zip(answers.chunks(5)) {
            let number = |i: usize| -> Result<i64, ReadError> {
                let value = answer.get(i).cloned().unwrap_or(redis::Value::Nil);
                redis::from_redis_value::<Option<f64>>(value)
                    .map(|v| v.unwrap_or(0.0) as i64)
                    .map_err(|e| ReadError::Corrupt(e.to_string()))
            };
            let count = |i: usize| number(i).map(|n| u64::try_from(n).unwrap_or(0));
            days.push(((*scope).to_owned(), count(2)?, count(3)?, number(4)?));
        }

        // Then the counters, once per scope; scopes another runner partly counted are sent
        // again with only the hits after its `pos`.
        let mut pending: Vec<(&str, Vec<&TrendHit>)> = scopes.into_iter().collect();
        for _ in 0..4 {
            if pending.is_empty() {
                return Ok(days);
            }
            let groups = pending
                .iter()
                .map(|(scope, hits)| self.count_commands(scope, hits, retention))
                .collect();
            let answers = self.run_counting(conn, groups).await?;
            let mut again = Vec::new();
            for ((scope, hits), answer) in pending.into_iter().zip(answers) {
                if answer > 0 {
                    let rest: Vec<&TrendHit> =
                        hits.into_iter().filter(|h| h.position > answer).collect();
                    if !rest.is_empty() {
                        again.push((scope, rest));
                    }
                }
            }
            pending = again;
        }
        if pending.is_empty() {
            Ok(days)
        } else {
            Err(ReadError::Corrupt(
                "trend counters kept moving under this runner".into(),
            ))
        }
    }

    /// The counting script's call for one scope's hits (counts summed per hash and field),
    /// then, when minutes are kept for `retention` days, the expiry of the minute hashes it
    /// touched. Minutes of days already past their retention are not counted at all.
    fn count_commands(
        &self,
        scope: &str,
        hits: &[&TrendHit],
        retention: Option<i64>,
    ) -> Vec<redis::Cmd> {
        let base = self.scope_base(scope);
        let today = Level::Day.unit_of(minute_of(Utc::now()));
        let mut sums: BTreeMap<(String, i64), u64> = BTreeMap::new();
        let mut minutes: BTreeMap<Minute, u64> = BTreeMap::new();
        for hit in hits {
            let day = Level::Day.unit_of(hit.minute);
            if retention.is_none_or(|keep| day + keep >= today) {
                *minutes.entry(hit.minute).or_default() += 1;
            }
            for field in [
                (
                    format!("h:{}", day.div_euclid(DAYS_PER_HOUR_HASH)),
                    Level::Hour.unit_of(hit.minute),
                ),
                (format!("d:{}", day.div_euclid(DAYS_PER_DAY_HASH)), day),
            ] {
                *sums.entry(field).or_default() += 1;
            }
        }
        let first = hits.iter().map(|h| h.position).min().unwrap_or(0);
        let last = hits.iter().map(|h| h.position).max().unwrap_or(0);
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.count_hits.get_hash())
            .arg(1)
            .arg(format!("{base}pos"))
            .arg(&base)
            .arg(first)
            .arg(last)
            .arg(sums.len());
        for ((hash, field), n) in sums {
            cmd.arg(hash).arg(field).arg(n);
        }
        // Minutes, packed per hour of their day.
        let mut minute_days = BTreeSet::new();
        let mut hours: BTreeMap<i64, String> = BTreeMap::new();
        for (minute, n) in minutes {
            let packed = hours.entry(Level::Hour.unit_of(minute)).or_default();
            if !packed.is_empty() {
                packed.push(',');
            }
            packed.push_str(&format!("{}:{n}", minute.rem_euclid(MINUTES_PER_HOUR)));
        }
        for (hour, packed) in hours {
            let day = hour.div_euclid(24);
            minute_days.insert(day);
            cmd.arg(format!("m:{day}"))
                .arg(hour.rem_euclid(24))
                .arg(packed);
        }
        let mut commands = vec![cmd];
        if let Some(keep) = retention {
            for day in minute_days {
                let gone_at = (day + keep + 1) * MINUTES_PER_DAY * 60;
                commands.push(
                    redis::cmd("EXPIREAT")
                        .arg(format!("{base}m:{day}"))
                        .arg(gone_at)
                        .clone(),
                );
            }
        }
        commands
    }

    /// Run counting calls, loading the script first if Redis does not have it.
    async fn run_counting(
        &self,
        conn: &mut Conn,
        groups: Vec<Vec<redis::Cmd>>,
    ) -> Result<Vec<i64>, ReadError> {
        let answers = match self.pipelined(conn, groups.clone()).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // Redis restarted or its scripts were flushed: load it (on every primary)
                // and run again.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(COUNT_HITS)
                    .query_async(conn)
                    .await?;
                self.pipelined(conn, groups).await?
            }
            other => other?,
        };
        answers
            .into_iter()
            .map(|group| {
                redis::from_redis_value(group.into_iter().next().unwrap_or(redis::Value::Nil))
                    .map_err(|e| ReadError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Run groups of commands, each group's keys in one hash slot: one pipeline on a single
    /// Redis; on a cluster one pipeline per group, all in flight at once (a cluster
    /// pipeline must stay within one slot). Answers come back per group, in order.
    async fn pipelined(
        &self,
        conn: &mut Conn,
        groups: Vec<Vec<redis::Cmd>>,
    ) -> Result<Vec<Vec<redis::Value>>, redis::RedisError> {
        let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
        if sizes.iter().sum::<usize>() == 0 {
            return Ok(sizes.iter().map(|_| Vec::new()).collect());
        }
        if let Conn::Single(_) = conn {
            let mut pipe = redis::pipe();
            for cmd in groups.into_iter().flatten() {
                pipe.add_command(cmd);
            }
            let mut all: std::vec::IntoIter<redis::Value> = pipe
                .query_async::<Vec<redis::Value>>(conn)
                .await?
                .into_iter();
            return Ok(sizes
                .into_iter()
                .map(|n| all.by_ref().take(n).collect())
                .collect());
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, group) in groups.into_iter().enumerate() {
            let mut conn = conn.clone();
            set.spawn(async move {
                let mut pipe = redis::pipe();
                for cmd in group {
                    pipe.add_command(cmd);
                }
                let answer = if pipe.is_empty() {
                    Ok(Vec::new())
                } else {
                    pipe.query_async::<Vec<redis::Value>>(&mut conn).await
                };
                (i, answer)
            });
        }
        let mut out: Vec<Vec<redis::Value>> = sizes.iter().map(|_| Vec::new()).collect();
        while let Some(joined) = set.join_next().await {
            let (i, answer) = joined
                .map_err(|e| redis::RedisError::from(std::io::Error::other(e.to_string())))?;
            if let Some(slot) = out.get_mut(i) {
                *slot = answer?;
            }
        }
        Ok(out)
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

    async fn apply_trends(
        &self,
        hits: &[TrendHit],
        rules: &TrendRules,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let mut conn = self.conn.clone();
        if !hits.is_empty() {
            let days = self
                .count_scopes(&mut conn, hits, rules.minute_retention_days)
                .await?;
            let mut pipe = redis::pipe();
            let mut raised = false;
            for (scope, observed, yesterday, last) in days {
                if let Some(rank) = rules.rank(observed, yesterday, last) {
                    raised = true;
                    pipe.cmd("ZADD")
                        .arg(self.key("trends", "rank"))
                        .arg("GT")
                        .arg(rank)
                        .arg(scope)
                        .ignore();
                }
            }
            if raised {
                let () = pipe.query_async(&mut conn).await?;
            }
        }
        self.move_checkpoint(&mut conn, "trends", from, to).await
    }

    async fn trend_counts(
        &self,
        scope: &str,
        level: Level,
        first: i64,
        end: i64,
    ) -> Result<Vec<(i64, u64)>, ReadError> {
        if end <= first {
            return Ok(Vec::new());
        }
        // The hashes holding units first..end.
        let (kind, units_per_hash) = match level {
            Level::Minute => ("m", MINUTES_PER_DAY),
            Level::Hour => ("h", 24 * DAYS_PER_HOUR_HASH),
            Level::Day => ("d", DAYS_PER_DAY_HASH),
        };
        let base = self.scope_base(scope);
        let blocks = first.div_euclid(units_per_hash)..=(end - 1).div_euclid(units_per_hash);
        let mut pipe = redis::pipe();
        for block in blocks.clone() {
            pipe.hgetall(format!("{base}{kind}:{block}"));
        }
        let mut conn = self.conn.clone();
        let wanted = |(unit, n): &(i64, u64)| (first..end).contains(unit) && *n > 0;
        if level != Level::Minute {
            let hashes: Vec<Vec<(i64, u64)>> = pipe.query_async(&mut conn).await?;
            return Ok(hashes.into_iter().flatten().filter(wanted).collect());
        }
        let days: Vec<Vec<(i64, String)>> = pipe.query_async(&mut conn).await?;
        let mut out = Vec::new();
        for (day, hours) in blocks.zip(days) {
            for (hour, packed) in hours {
                let start = day * MINUTES_PER_DAY + hour * MINUTES_PER_HOUR;
                for pair in packed.split(',') {
                    let parsed = pair.split_once(':').and_then(|(m, n)| {
                        Some((start + m.parse::<i64>().ok()?, n.parse::<u64>().ok()?))
                    });
                    let pair = parsed.ok_or_else(|| {
                        ReadError::Corrupt(format!("minute counters {packed:?} of day {day}"))
                    })?;
                    if wanted(&pair) {
                        out.push(pair);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn trending(&self, floor: f64, limit: usize) -> Result<Vec<(String, f64)>, ReadError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("ZRANGE")
            .arg(self.key("trends", "rank"))
            .arg("+inf")
            .arg(floor)
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?)
    }

    async fn histories(
        &self,
        tags: &[String],
        first: i64,
        end: i64,
    ) -> Result<Vec<Vec<DayUsage>>, ReadError> {
        if tags.is_empty() || end <= first {
            return Ok(vec![Vec::new(); tags.len()]);
        }
        // One round trip: per hashtag, its day-counter hashes, then a PFCOUNT per day.
        let blocks = first.div_euclid(DAYS_PER_DAY_HASH)..=(end - 1).div_euclid(DAYS_PER_DAY_HASH);
        let groups: Vec<Vec<redis::Cmd>> = tags
            .iter()
            .map(|tag| {
                let base = self.scope_base(tag);
                let mut group = Vec::new();
                for block in blocks.clone() {
                    let mut cmd = redis::cmd("HGETALL");
                    cmd.arg(format!("{base}d:{block}"));
                    group.push(cmd);
                }
                for day in first..end {
                    let mut cmd = redis::cmd("PFCOUNT");
                    cmd.arg(format!("{base}u:{day}"));
                    group.push(cmd);
                }
                group
            })
            .collect();
        let mut conn = self.conn.clone();
        let mut answers = self
            .pipelined(&mut conn, groups)
            .await?
            .into_iter()
            .flatten();
        let mut out = Vec::with_capacity(tags.len());
        for _ in tags {
            let mut uses: HashMap<i64, u64> = HashMap::new();
            for _ in blocks.clone() {
                let hash: HashMap<i64, u64> =
                    redis::from_redis_value(answers.next().unwrap_or(redis::Value::Nil))
                        .map_err(|e| ReadError::Corrupt(e.to_string()))?;
                uses.extend(hash);
            }
            let mut days = Vec::new();
            for day in first..end {
                let accounts: u64 =
                    redis::from_redis_value(answers.next().unwrap_or(redis::Value::Int(0)))
                        .map_err(|e| ReadError::Corrupt(e.to_string()))?;
                days.push(DayUsage {
                    day,
                    uses: uses.get(&day).copied().unwrap_or(0),
                    accounts,
                });
            }
            out.push(days);
        }
        Ok(out)
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        // `P:{messages}:…`; for trends also every scope's `P:{trends:S}:…`, which a
        // cluster spreads over its nodes: each primary is scanned for its own keys.
        let pattern = format!("{}:{{{projection}*", self.prefix);
        let checkpoint = self.key(projection, "checkpoint");
        for mut node in self.primaries().await? {
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut node)
                    .await?;
                for key in keys.into_iter().filter(|k| *k != checkpoint) {
                    let _: i64 = node.unlink(key).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        // The checkpoint goes last: a runner that sees it gone rebuilds onto an empty
        // model, not onto one still being deleted.
        let mut conn = self.conn.clone();
        let _: i64 = conn.unlink(checkpoint).await?;
        Ok(())
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
