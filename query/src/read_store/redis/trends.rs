//! The trends read model in Redis. Per scope `S` (a hashtag key, or `*` for all messages),
//! keys under `P:{trends:S}:`:
//! - `m:<day>`        hash hour of the day → that hour's minutes, packed as
//!   `minute:count,…` (minute of the hour, ascending, no zeros); one per day; with a minute
//!   retention it expires (EXPIREAT) when its day falls out of it
//! - `h:<day/32>`     hash hour → count, one per 32 days
//! - `d:<day/1024>`   hash day → count
//! - `u:<day>`        HyperLogLog of the hashtag's users that day
//! - `last`           sorted set day → latest minute the hashtag was used that day
//! - `pos`            the last event position counted in this scope
//!
//! and `P:{trends}:rank` (sorted set hashtag → trending rank, see `crate::trends`) and
//! `P:{trends}:checkpoint`.
//!
//! Counters are not idempotent by themselves: each scope's keys share one hash tag, and one
//! script per scope adds a batch's counts (summed per minute, hour and day in
//! [`TrendBatch`]) only if the scope's `pos` is before them, and moves `pos` with them,
//! atomically and within one Cluster slot. Users (HyperLogLog), latest minutes (`ZADD GT`)
//! and ranks (`ZADD GT`) are idempotent as they are and go beside the script.
//!
//! Minutes are packed per hour because a month of them is the longest answer `/trend`
//! gives: 720 hash fields to read instead of 43,200, which a reply parser takes 60 times
//! less time over. The script merges a batch's minutes into each packed hour it touches.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::LazyLock;

use async_trait::async_trait;
use cairn_events::Position;

use super::{Conn, RedisStore};
use crate::read_store::{Applied, ReadError, TrendStore};
use crate::trends::{
    DayUsage, Level, MINUTES_PER_DAY, MINUTES_PER_HOUR, ScopeCounts, TagDay, TrendBatch, in_ranges,
    merge_ranges,
};

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

static COUNT_HITS_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(COUNT_HITS));

impl RedisStore {
    /// The key prefix of one trend scope: `P:{trends:S}:`.
    fn scope_base(&self, scope: &str) -> String {
        self.key(&format!("trends:{scope}"), "")
    }

    /// Record the batch's users and latest minutes, and read back for each hashtag and day
    /// it touches what its rank needs: (users that day, users the day before, latest
    /// minute). One group of commands per hashtag, each within its scope's slot.
    async fn record_days(
        &self,
        conn: &mut Conn,
        batch: &TrendBatch,
    ) -> Result<Vec<(u64, u64, i64)>, ReadError> {
        let mut groups: Vec<Vec<redis::Cmd>> = Vec::new();
        let mut tag: Option<&str> = None;
        for day in batch.days() {
            if tag != Some(day.tag.as_str()) {
                tag = Some(&day.tag);
                groups.push(Vec::new());
            }
            if let Some(group) = groups.last_mut() {
                group.extend(self.day_commands(day));
            }
        }
        let answers: Vec<redis::Value> = self
            .pipelined(conn, groups)
            .await?
            .into_iter()
            .flatten()
            .collect();
        let mut days = Vec::with_capacity(batch.days().len());
        for answer in answers.chunks(5) {
            let number = |i: usize| -> Result<i64, ReadError> {
                let value = answer.get(i).cloned().unwrap_or(redis::Value::Nil);
                redis::from_redis_value::<Option<f64>>(value)
                    .map(|v| v.unwrap_or(0.0) as i64)
                    .map_err(|e| ReadError::Corrupt(e.to_string()))
            };
            let count = |i: usize| number(i).map(|n| u64::try_from(n).unwrap_or(0));
            days.push((count(2)?, count(3)?, number(4)?));
        }
        Ok(days)
    }

    /// One hashtag day's five commands: add its users and latest minute (both idempotent),
    /// then read its distinct users, the day before's, and its latest minute.
    fn day_commands(&self, day: &TagDay) -> [redis::Cmd; 5] {
        let base = self.scope_base(&day.tag);
        let users = format!("{base}u:{}", day.day);
        [
            redis::cmd("PFADD").arg(&users).arg(&day.users).clone(),
            redis::cmd("ZADD")
                .arg(format!("{base}last"))
                .arg("GT")
                .arg(day.latest)
                .arg(day.day)
                .clone(),
            redis::cmd("PFCOUNT").arg(&users).clone(),
            redis::cmd("PFCOUNT")
                .arg(format!("{base}u:{}", day.day - 1))
                .clone(),
            redis::cmd("ZSCORE")
                .arg(format!("{base}last"))
                .arg(day.day)
                .clone(),
        ]
    }

    /// Add the batch's counts, once per scope; scopes another runner partly counted are
    /// sent again with only the hits after its `pos`.
    async fn add_counts(&self, conn: &mut Conn, batch: &TrendBatch) -> Result<(), ReadError> {
        let retention = batch.rules().minute_retention_days;
        let mut pending: Vec<ScopeCounts> = batch.scopes().to_vec();
        for _ in 0..4 {
            if pending.is_empty() {
                return Ok(());
            }
            let groups = pending
                .iter()
                .map(|scope| self.count_commands(scope, retention))
                .collect();
            let answers = self.run_counting(conn, groups).await?;
            pending = pending
                .into_iter()
                .zip(answers)
                .filter(|(_, answer)| *answer > 0)
                .filter_map(|(scope, answer)| batch.recount(&scope.scope, answer))
                .collect();
        }
        if pending.is_empty() {
            Ok(())
        } else {
            Err(ReadError::Corrupt(
                "trend counters kept moving under this runner".into(),
            ))
        }
    }

    /// The counting script's call for one scope's counts, then, when minutes are kept for
    /// `retention` days, the expiry of the minute hashes it touched.
    fn count_commands(&self, scope: &ScopeCounts, retention: Option<i64>) -> Vec<redis::Cmd> {
        let base = self.scope_base(&scope.scope);
        let mut sums: BTreeMap<(String, i64), u64> = BTreeMap::new();
        for (hour, n) in scope.at(Level::Hour) {
            let day = hour.div_euclid(24);
            sums.insert(
                (format!("h:{}", day.div_euclid(DAYS_PER_HOUR_HASH)), hour),
                n,
            );
        }
        for (day, n) in scope.at(Level::Day) {
            sums.insert((format!("d:{}", day.div_euclid(DAYS_PER_DAY_HASH)), day), n);
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(COUNT_HITS_SCRIPT.get_hash())
            .arg(1)
            .arg(format!("{base}pos"))
            .arg(&base)
            .arg(scope.first)
            .arg(scope.last)
            .arg(sums.len());
        for ((hash, field), n) in sums {
            cmd.arg(hash).arg(field).arg(n);
        }
        // Minutes, packed per hour of their day.
        let mut minute_days = BTreeSet::new();
        let mut hours: BTreeMap<i64, String> = BTreeMap::new();
        for (minute, n) in scope.at(Level::Minute) {
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
}

/// Commands one pipeline of counter reads holds.
const READS_PER_PIPELINE: usize = 256;
/// Fields of one hash read by name; more are read with the whole hash.
const FIELDS_BY_NAME: usize = 32;

/// How one level's counters sit in hashes.
struct Layout {
    level: Level,
    /// The key's kind: `m`, `h` or `d`.
    kind: &'static str,
    /// Units per hash, and per field (a field of `m` packs an hour's minutes).
    per_hash: i64,
    per_field: i64,
}

impl Layout {
    fn of(level: Level) -> Self {
        let (kind, per_hash, per_field) = match level {
            Level::Minute => ("m", MINUTES_PER_DAY, MINUTES_PER_HOUR),
            Level::Hour => ("h", 24 * DAYS_PER_HOUR_HASH, 1),
            Level::Day => ("d", DAYS_PER_DAY_HASH, 1),
        };
        Layout {
            level,
            kind,
            per_hash,
            per_field,
        }
    }

    /// The field holding `unit` in its hash: the hour of the day for minutes, the unit
    /// itself for hours and days.
    fn field(&self, unit: i64) -> i64 {
        match self.level {
            Level::Minute => unit.div_euclid(MINUTES_PER_HOUR).rem_euclid(24),
            Level::Hour | Level::Day => unit,
        }
    }

    /// The hashes to read for `ranges` (sorted, merged): per hash number, the fields to
    /// read by name, or `None` for the whole hash.
    fn reads(&self, ranges: &[(i64, i64)]) -> Vec<(i64, Option<Vec<i64>>)> {
        let mut reads: Vec<(i64, Option<Vec<i64>>)> = Vec::new();
        for &(first, end) in ranges {
            let mut unit = first;
            while unit < end {
                let block = unit.div_euclid(self.per_hash);
                let block_end = ((block + 1) * self.per_hash).min(end);
                let (from, to) = (self.field(unit), self.field(block_end - 1));
                if reads.last().is_none_or(|(b, _)| *b != block) {
                    reads.push((block, Some(Vec::new())));
                }
                if let Some((_, read)) = reads.last_mut() {
                    let whole = (block_end - unit) == self.per_hash;
                    match read {
                        Some(fields)
                            if !whole
                                && fields.len() + ((to - from + 1) as usize) <= FIELDS_BY_NAME =>
                        {
                            let after = fields.last().copied().unwrap_or(i64::MIN);
                            fields.extend((from..=to).filter(|f| *f > after));
                        }
                        _ => *read = None,
                    }
                }
                unit = block_end;
            }
        }
        reads
    }

    /// Call `each` with every (unit, count) one field holds.
    fn counts(
        &self,
        block: i64,
        field: i64,
        value: &str,
        mut each: impl FnMut(i64, u64),
    ) -> Result<(), ReadError> {
        let corrupt =
            || ReadError::Corrupt(format!("trend counters {value:?} of {}:{block}", self.kind));
        if self.level != Level::Minute {
            each(field, value.parse().map_err(|_| corrupt())?);
            return Ok(());
        }
        if value.is_empty() {
            return Ok(());
        }
        let start = block * MINUTES_PER_DAY + field * self.per_field;
        for pair in value.split(',') {
            let (m, n) = pair.split_once(':').ok_or_else(corrupt)?;
            let m: i64 = m.parse().map_err(|_| corrupt())?;
            each(start + m, n.parse().map_err(|_| corrupt())?);
        }
        Ok(())
    }
}

fn from_value<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, ReadError> {
    redis::from_redis_value(value).map_err(|e| ReadError::Corrupt(e.to_string()))
}

#[async_trait]
impl TrendStore for RedisStore {
    async fn apply_trends(
        &self,
        batch: &TrendBatch,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let mut conn = self.conn.clone();
        if !batch.is_empty() {
            // Users and latest minutes first: needed for every hashtag and day the batch
            // touches even if its counts were added before.
            let days = self.record_days(&mut conn, batch).await?;
            self.add_counts(&mut conn, batch).await?;
            let mut pipe = redis::pipe();
            let mut raised = false;
            for (day, (observed, yesterday, latest)) in batch.days().iter().zip(days) {
                if let Some(rank) = batch.rank(day, observed, yesterday, Some(latest)) {
                    raised = true;
                    pipe.cmd("ZADD")
                        .arg(self.key("trends", "rank"))
                        .arg("GT")
                        .arg(rank)
                        .arg(&day.tag)
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
        ranges: &[(i64, i64)],
    ) -> Result<Vec<(i64, u64)>, ReadError> {
        let mut ranges = ranges.to_vec();
        merge_ranges(&mut ranges);
        let layout = Layout::of(level);
        let base = self.scope_base(scope);
        let reads = layout.reads(&ranges);
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        // A bounded pipeline at a time, each reply parsed and dropped before the next.
        for piece in reads.chunks(READS_PER_PIPELINE) {
            let mut pipe = redis::pipe();
            for (block, fields) in piece {
                let key = format!("{base}{}:{block}", layout.kind);
                match fields {
                    None => pipe.hgetall(key),
                    Some(fields) => pipe.cmd("HMGET").arg(key).arg(fields),
                };
            }
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            for ((block, fields), reply) in piece.iter().zip(replies) {
                let pairs: Vec<(i64, String)> = match fields {
                    None => from_value(reply)?,
                    Some(fields) => {
                        let values: Vec<Option<String>> = from_value(reply)?;
                        fields
                            .iter()
                            .zip(values)
                            .filter_map(|(field, value)| Some((*field, value?)))
                            .collect()
                    }
                };
                for (field, value) in pairs {
                    layout.counts(*block, field, &value, |unit, n| {
                        if n > 0 && in_ranges(&ranges, unit) {
                            out.push((unit, n));
                        }
                    })?;
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
}
