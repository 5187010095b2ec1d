//! The submission limits kept in Redis, shared by every command process.
//!
//! Each (limit, key) is a sorted set of submission times (ms, by Redis's clock, so the
//! processes' clocks need not agree), pruned to the window and expiring with it. One
//! script checks every log of a submission and counts it in all of them only if each
//! allows it, atomically: two processes cannot both take the last place. The logs of one
//! deployment share a hash tag (`{<prefix>:capsule-limits}`), so the script's keys are in
//! one hash slot on a Redis Cluster; submissions are few, so one slot carries them easily.
//!
//! Redis down, slow or refusing is not a reason to refuse capsules: the caller is told
//! there is no answer and counts in its own process instead; Redis is then left alone for
//! a moment, so a submission does not wait out a timeout each time.

use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::OnceCell;

use super::SlidingLog;

/// The longest a check may wait for Redis before the process counts on its own.
const TIMEOUT: Duration = Duration::from_millis(500);
/// How long Redis is left alone after it failed to answer.
const BACK_OFF: Duration = Duration::from_secs(2);

/// KEYS: the logs. ARGV[1]: `1` to count this submission if every log allows it, `0` to
/// check only; ARGV[2]: the submission's member (unique); then, per key, its limit and its
/// window in ms. Returns 0 if allowed, else the longest wait in ms.
const ADMIT_SOURCE: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    wait = math.max(wait, tonumber(oldest[2]) + window - now, 1)
  end
end
if wait == 0 and ARGV[1] == '1' then
  for i, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[2])
    redis.call('PEXPIRE', key, ARGV[2 + 2 * i])
  end
end
return wait
";

static ADMIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ADMIT_SOURCE));

/// A connection to one Redis, or to a Redis Cluster.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Connect to `url`: `redis://…` (or `rediss://`), or
/// `redis+cluster://[user:password@]host:port,host:port,…` for a Redis Cluster.
async fn connect(url: &str) -> redis::RedisResult<Conn> {
    match url.split_once("+cluster://") {
        Some((scheme, rest)) => {
            let (userinfo, hosts) = rest
                .rsplit_once('@')
                .map_or(("", rest), |(auth, hosts)| (auth, hosts));
            let at = if userinfo.is_empty() { "" } else { "@" };
            let seeds: Vec<String> = hosts
                .split('/')
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| format!("{scheme}://{userinfo}{at}{h}"))
                .collect();
            let client = ClusterClient::new(seeds)?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
        None => Ok(Conn::Single(
            ConnectionManager::new(redis::Client::open(url)?).await?,
        )),
    }
}

/// The limits' logs in Redis; connected on first use.
pub struct RedisLimits {
    url: String,
    /// `{<prefix>:capsule-limits}`: every log's key starts with it.
    tag: String,
    conn: OnceCell<Conn>,
    /// Until when Redis is left alone, after a failure.
    resting: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisLimits")
            .field("tag", &self.tag)
            .finish()
    }
}

impl RedisLimits {
    /// The logs at `url`, under keys starting with `prefix`.
    pub fn new(url: &str, prefix: &str) -> Self {
        RedisLimits {
            url: url.to_owned(),
            tag: format!("{{{prefix}:capsule-limits}}"),
            conn: OnceCell::new(),
            resting: Mutex::new(None),
        }
    }

    /// The key of the log of the `which` limit (`client`, `sender`) for `key`.
    pub fn key(&self, which: &str, key: &str) -> String {
        format!("{}:{which}:{key}", self.tag)
    }

    /// Check every (log, key), the client's first and the sender's second (of each log
    /// only its limit and window are used), and, with `record`, count a submission in
    /// each if all allow it: `Ok(())`, or the longest wait. `None` when Redis gave no
    /// answer in time: the caller counts in its own process.
    pub(super) async fn admit(
        &self,
        checks: &[(&SlidingLog, &str)],
        record: bool,
    ) -> Option<Result<(), Duration>> {
        let limited: Vec<(&str, &SlidingLog, &str)> = ["client", "sender"]
            .into_iter()
            .zip(checks)
            .filter(|(_, (log, _))| log.limit > 0)
            .map(|(which, (log, key))| (which, *log, *key))
            .collect();
        if limited.is_empty() {
            return Some(Ok(()));
        }
        let resting = *self.resting.lock().unwrap_or_else(|p| p.into_inner());
        if resting.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let mut invocation = ADMIT.prepare_invoke();
        invocation
            .arg(if record { "1" } else { "0" })
            .arg(uuid::Uuid::now_v7().simple().to_string());
        for (which, log, key) in &limited {
            let window_ms = u64::try_from(log.window.as_millis()).unwrap_or(u64::MAX);
            invocation
                .key(self.key(which, key))
                .arg(log.limit)
                .arg(window_ms.max(1));
        }
        let answer = tokio::time::timeout(TIMEOUT, async {
            let conn = self.conn.get_or_try_init(|| connect(&self.url)).await?;
            match conn.clone() {
                Conn::Single(mut c) => invocation.invoke_async::<u64>(&mut c).await,
                Conn::Cluster(mut c) => invocation.invoke_async::<u64>(&mut c).await,
            }
        })
        .await;
        match answer {
            Ok(Ok(0)) => Some(Ok(())),
            Ok(Ok(wait_ms)) => Some(Err(Duration::from_millis(wait_ms))),
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", TIMEOUT.as_millis()),
                };
                tracing::warn!(
                    %error,
                    "capsule limits could not be counted in Redis; counting in this process meanwhile"
                );
                *self.resting.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + BACK_OFF);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Limits;
    use super::*;

    /// Redis unreachable (nothing listens on the port): submissions are not refused for
    /// it, and the limit still holds in this process.
    #[tokio::test]
    async fn with_redis_down_the_limits_are_counted_in_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        drop(listener);
        let limits = Limits {
            per_client: SlidingLog::new(1, Duration::from_secs(60)),
            per_sender: SlidingLog::new(5, Duration::from_secs(60)),
            shared: Some(RedisLimits::new(&format!("redis://127.0.0.1:{port}"), "t")),
        };
        assert_eq!(limits.admit("192.0.2.1", "a@b.co").await, Ok(()));
        assert!(limits.admit("192.0.2.1", "a@b.co").await.is_err());
        assert!(limits.check_client("192.0.2.1").await.is_some());
        assert_eq!(limits.admit("192.0.2.2", "a@b.co").await, Ok(()));
    }
}
