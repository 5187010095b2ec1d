//! Read models in Redis, on one server or a Redis Cluster.
//!
//! Every key of a generation `G` of a model is `P:gG:{<model>}:<rest>` under the configured
//! prefix `P` (see [`crate::read_store`] for generations). The braces are a
//! Redis Cluster hash tag: keys with the same tag share a slot, so a model's multi-key
//! commands and scripts (an `MGET` of a page, a scope's counting script) stay within one
//! node. The messages model has one tag, `{messages}`; the trends model one per scope,
//! `{trends:S}`, so that a busy hashtag's counters do not all land on one node. Each model's
//! file (`messages.rs`, `trends.rs`) lists its keys.
//!
//! Each model's generations are named in `P:{<model>}:generations` (hash {live, building,
//! retired, next}); the key is also the model's marker: a Redis flushed or restarted empty
//! has none, so its model reads as lost (rebuilding), never as empty. It shares the
//! model's hash tag with each generation's checkpoint, so the switch (one script) checks
//! both checkpoints and moves `live` atomically on a cluster too.
//!
//! Each generation keeps its checkpoint in `P:gG:{<model>}:checkpoint` (hash {pos}), moved
//! by a compare-and-set script that touches only that key. Redis cannot write a batch and its
//! checkpoint atomically across slots, so every write is idempotent instead: a batch
//! applied twice (after a crash between the data and the checkpoint, or by a runner that
//! lost its lease and whose compare-and-set fails) leaves the state one application leaves.
//!
//! This file holds what the models share: the connection (one Redis or a cluster), key
//! naming, generations and the checkpoint, pipelining by slot, and resets.
//!
//! Every call is bounded by the configured timeout (connecting included), and a call that
//! finds Redis unreachable opens the store's [`Circuit`]: later calls fail at once, without
//! waiting on a reconnection, until a `PING` in the background is answered again. So a Redis
//! that is down costs a request one timeout at most, and then nothing.

mod messages;
mod trends;

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use cairn_events::Position;
use cairn_events::circuit::Circuit;
use redis::AsyncCommands;
use redis::RedisFuture;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use super::{
    Applied, Generation, GenerationStore, Generations, ReadBackend, ReadError, ReadModels,
};

/// The longest one call may take unless configured otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Moves a checkpoint from ARGV[1] to ARGV[2] only if it is still at ARGV[1].
const CHECKPOINT_CAS_SOURCE: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'pos') or '0')
if current ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'pos', ARGV[2])
return 1
";

static CHECKPOINT_CAS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(CHECKPOINT_CAS_SOURCE));

/// Starts a generation to build in the generations hash KEYS[1], or answers the one being
/// built. Numbers count up from `next`; a hash that is gone (a flush) starts again from
/// ARGV[1], the time in seconds, so no number of a generation whose keys may remain is
/// reused.
const BEGIN_SOURCE: &str = r"
local building = redis.call('HGET', KEYS[1], 'building')
if building then return tonumber(building) end
local g = tonumber(redis.call('HGET', KEYS[1], 'next') or ARGV[1])
redis.call('HSET', KEYS[1], 'building', g, 'next', g + 1)
return g
";

/// Makes generation ARGV[1] live in the generations hash KEYS[1] if it is still the one
/// being built, the live one is still ARGV[2] ('' for none), nothing retired awaits
/// deletion, and its checkpoint KEYS[2] is not behind the live one's, KEYS[3]. The old live
/// generation is retired. 1 if switched.
const SWITCH_SOURCE: &str = r"
if redis.call('HGET', KEYS[1], 'building') ~= ARGV[1] then return 0 end
if (redis.call('HGET', KEYS[1], 'live') or '') ~= ARGV[2] then return 0 end
if redis.call('HEXISTS', KEYS[1], 'retired') == 1 then return 0 end
local built = tonumber(redis.call('HGET', KEYS[2], 'pos') or '0')
local live = tonumber(redis.call('HGET', KEYS[3], 'pos') or '0')
if built < live then return 0 end
redis.call('HSET', KEYS[1], 'live', ARGV[1])
redis.call('HDEL', KEYS[1], 'building')
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'retired', ARGV[2]) end
return 1
";

/// Forgets the retired generation ARGV[1] of the generations hash KEYS[1].
const FORGET_RETIRED_SOURCE: &str = r"
if redis.call('HGET', KEYS[1], 'retired') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'retired')
end
return 1
";

static BEGIN: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(BEGIN_SOURCE));
static SWITCH: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SWITCH_SOURCE));
static FORGET_RETIRED: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(FORGET_RETIRED_SOURCE));

/// A connection to the read models: the store itself (generations and the live checkpoint)
/// or, through [`GenerationStore::models_at`], one generation's models.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    /// For a cluster: how to reach one node (`SCAN` is per node).
    cluster: Option<ClusterAccess>,
    /// The generation whose keys this view names; none for the store itself.
    generation: Option<Generation>,
}

/// A connection to one Redis (or a primary), or to a Redis Cluster, whose calls are bounded
/// by a timeout and fail at once while the circuit is open.
#[derive(Clone)]
struct Conn {
    link: Link,
    timeout: Duration,
    circuit: Arc<Circuit>,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// A connection to one Redis at `url`, sharing `circuit`.
    async fn single(
        url: redis::ConnectionInfo,
        timeout: Duration,
        circuit: Arc<Circuit>,
    ) -> Result<Self, redis::RedisError> {
        // Without TCP_NODELAY a pipelined write can sit out a delayed ACK (~40 ms).
        let tcp = url.tcp_settings().clone().set_nodelay(true);
        let client = redis::Client::open(url.set_tcp_settings(tcp))?;
        // Few, short reconnection attempts: while they fail, callers are answered by the
        // circuit, and the probe starts the next attempt.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(timeout);
        let manager = tokio::time::timeout(
            timeout * 4,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| timed_out())??;
        Ok(Conn {
            link: Link::Single(manager),
            timeout,
            circuit,
        })
    }

    fn is_single(&self) -> bool {
        matches!(self.link, Link::Single(_))
    }

    /// Whether `error` means Redis could not be reached (rather than a refused command).
    fn is_outage(error: &redis::RedisError) -> bool {
        error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_unrecoverable_error()
            || matches!(
                error.kind(),
                redis::ErrorKind::ClusterConnectionNotFound
                    | redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown)
            )
    }

    /// Run one call through the circuit and the timeout.
    async fn guard<T>(
        &self,
        call: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, redis::RedisError> {
        if self.circuit.is_open() {
            return Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "Redis is unreachable; waiting for it to answer again",
            )));
        }
        let result = tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if let Err(error) = &result
            && Self::is_outage(error)
        {
            let (link, timeout) = (self.link.clone(), self.timeout);
            self.circuit.trip(move || {
                let mut link = link.clone();
                async move {
                    let ping = redis::cmd("PING");
                    let answer = match &mut link {
                        Link::Single(c) => c.req_packed_command(&ping),
                        Link::Cluster(c) => c.req_packed_command(&ping),
                    };
                    tokio::time::timeout(timeout, answer)
                        .await
                        .is_ok_and(|r| r.is_ok())
                }
            });
        }
        result
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let mut link = self.link.clone();
            self.guard(async move {
                match &mut link {
                    Link::Single(c) => c.req_packed_command(cmd).await,
                    Link::Cluster(c) => c.req_packed_command(cmd).await,
                }
            })
            .await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let mut link = self.link.clone();
            self.guard(async move {
                match &mut link {
                    Link::Single(c) => c.req_packed_commands(pipeline, offset, count).await,
                    Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
                }
            })
            .await
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// The scheme and credentials of a cluster URL, to address its nodes one by one.
#[derive(Clone)]
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
        Self::connect_with_timeout(url, prefix, DEFAULT_TIMEOUT).await
    }

    /// As [`RedisStore::connect`], each call (a connection included) bounded by `timeout`.
    pub async fn connect_with_timeout(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, ReadError> {
        let circuit = Circuit::new("redis");
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
                let client = ClusterClient::builder(infos)
                    .tcp_settings(tcp)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .build()?;
                let conn = tokio::time::timeout(timeout * 4, client.get_async_connection())
                    .await
                    .map_err(|_| timed_out())??;
                let conn = Conn {
                    link: Link::Cluster(conn),
                    timeout,
                    circuit,
                };
                (conn, Some(access))
            }
            None => {
                let info = redis::IntoConnectionInfo::into_connection_info(url)?;
                (Conn::single(info, timeout, circuit).await?, None)
            }
        };
        let store = RedisStore {
            conn,
            prefix: prefix.to_owned(),
            cluster,
            generation: None,
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
            let info = redis::IntoConnectionInfo::into_connection_info(url)?;
            out.push(Conn::single(info, self.conn.timeout, self.conn.circuit.clone()).await?);
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

    /// `<prefix>:g<generation>:{<tag>}:<rest>`: the braces are a Redis Cluster hash tag, so
    /// every key with the same tag lives in one slot and multi-key commands (`MGET`) work
    /// there. The one place keys are named: each model's keys of each generation apart.
    fn key(&self, tag: &str, rest: &str) -> String {
        match self.generation {
            Some(g) => format!("{}:g{g}:{{{tag}}}:{rest}", self.prefix),
            None => format!("{}:{{{tag}}}:{rest}", self.prefix),
        }
    }

    /// The hash naming `model`'s generations (outside every generation, in its slot).
    fn generations_key(&self, model: &str) -> String {
        format!("{}:{{{model}}}:generations", self.prefix)
    }

    /// This store, naming the keys of `generation`.
    fn at(&self, generation: Generation) -> RedisStore {
        RedisStore {
            generation: Some(generation),
            ..self.clone()
        }
    }

    /// Delete every key of this generation's `projection` (in batches of `SCAN`), its
    /// checkpoint last.
    async fn delete_generation(&self, projection: &str) -> Result<(), ReadError> {
        let Some(generation) = self.generation else {
            return Ok(());
        };
        // `P:gG:{messages}:…`; for trends also every scope's `P:gG:{trends:S}:…`, which a
        // cluster spreads over its nodes: each primary is scanned for its own keys.
        let pattern = format!("{}:g{generation}:{{{projection}*", self.prefix);
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
                let keys: Vec<String> = keys.into_iter().filter(|k| *k != checkpoint).collect();
                for key in keys {
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

    /// Move a projection's checkpoint from `from` to `to` if it is still at `from`.
    async fn move_checkpoint(
        &self,
        conn: &mut Conn,
        projection: &str,
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let moved: i64 = CHECKPOINT_CAS
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
        if conn.is_single() {
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
}

#[async_trait]
impl ReadBackend for RedisStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        let view = match self.generation {
            Some(_) => self.clone(),
            None => match self.generations(projection).await?.live {
                Some(live) => self.at(live),
                None => return Ok(0),
            },
        };
        let mut conn = self.conn.clone();
        let pos: Option<i64> = conn.hget(view.key(projection, "checkpoint"), "pos").await?;
        Ok(pos.unwrap_or(0))
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        if self.generation.is_none() {
            self.begin_generation(projection).await?;
            return Ok(());
        }
        self.delete_generation(projection).await
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

#[async_trait]
impl GenerationStore for RedisStore {
    async fn generations(&self, model: &str) -> Result<Generations, ReadError> {
        let mut conn = self.conn.clone();
        let (live, building, retired): (Option<u64>, Option<u64>, Option<u64>) =
            redis::cmd("HMGET")
                .arg(self.generations_key(model))
                .arg("live")
                .arg("building")
                .arg("retired")
                .query_async(&mut conn)
                .await?;
        Ok(Generations {
            live,
            building,
            retired,
        })
    }

    async fn begin_generation(&self, model: &str) -> Result<Generation, ReadError> {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        let mut conn = self.conn.clone();
        Ok(BEGIN
            .key(self.generations_key(model))
            .arg(seed)
            .invoke_async(&mut conn)
            .await?)
    }

    async fn switch_generation(
        &self,
        model: &str,
        live: Option<Generation>,
        building: Generation,
    ) -> Result<bool, ReadError> {
        let built = self.at(building).key(model, "checkpoint");
        let current = live.map_or_else(|| built.clone(), |l| self.at(l).key(model, "checkpoint"));
        let mut conn = self.conn.clone();
        let switched: i64 = SWITCH
            .key(self.generations_key(model))
            .key(built)
            .key(current)
            .arg(building)
            .arg(live.map(|l| l.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await?;
        Ok(switched == 1)
    }

    async fn drop_generation(&self, model: &str, generation: Generation) -> Result<(), ReadError> {
        self.at(generation).delete_generation(model).await?;
        let mut conn = self.conn.clone();
        let _: i64 = FORGET_RETIRED
            .key(self.generations_key(model))
            .arg(generation)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    fn models_at(&self, generation: Generation) -> ReadModels {
        ReadModels::new(std::sync::Arc::new(self.at(generation)))
    }
}
