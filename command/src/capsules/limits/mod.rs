//! Sliding-log rate limits on capsule submission, per client address and per sender:
//! at most `limit` submissions in any `window`. A refused request is told how long until
//! its oldest counted submission leaves the window (`Retry-After`).
//!
//! With Redis configured, the logs are kept there ([`RedisLimits`]), so every command
//! process counts against the same limit; without it (the embedded backend, one process)
//! they are kept in this process ([`SlidingLog`]). A limit store that cannot be reached
//! must not stop submissions: while Redis is down, each process falls back to its own
//! logs (the limit then holds per process) and says so in its log.
//!
//! An IPv6 client counts by its /56: one subscriber is usually given a /64 to a /56 (some
//! a /48), and can pick any address in it.

mod redis;

pub use self::redis::RedisLimits;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys whose submissions have all aged out are dropped once this many are held, at
/// most once a minute (a sweep walks them all).
const PRUNE_ABOVE: usize = 10_000;
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Hits {
    logs: HashMap<String, VecDeque<Instant>>,
    pruned: Option<Instant>,
}

#[derive(Debug)]
pub struct SlidingLog {
    pub limit: usize,
    pub window: Duration,
    hits: Mutex<Hits>,
}

/// The key a client address counts under: the address, or its /56 for IPv6.
pub fn client_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1_u128 << 72) - 1);
            format!("{}/56", Ipv6Addr::from(prefix))
        }
        v4 => v4.to_string(),
    }
}

impl SlidingLog {
    pub fn new(limit: usize, window: Duration) -> Self {
        SlidingLog {
            limit,
            window,
            hits: Mutex::default(),
        }
    }

    /// How long `key` must wait at `now`, or `None` if it may go ahead.
    fn wait(&self, hits: &mut Hits, key: &str, now: Instant) -> Option<Duration> {
        let log = hits.logs.get_mut(key)?;
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            log.pop_front();
        }
        if log.len() < self.limit {
            return None;
        }
        let oldest = *log.front()?;
        Some(self.window.saturating_sub(now.duration_since(oldest)))
    }

    /// How long `key` must wait at `now`, without counting a submission.
    pub fn check(&self, key: &str, now: Instant) -> Option<Duration> {
        if self.limit == 0 {
            return None;
        }
        let mut hits = self.hits.lock().unwrap_or_else(|p| p.into_inner());
        self.wait(&mut hits, key, now)
    }

    fn record(&self, hits: &mut Hits, key: &str, now: Instant) {
        let due = hits
            .pruned
            .is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY);
        if hits.logs.len() > PRUNE_ABOVE && due {
            let window = self.window;
            hits.logs
                .retain(|_, log| log.back().is_some_and(|t| now.duration_since(*t) < window));
            hits.pruned = Some(now);
        }
        hits.logs.entry(key.to_owned()).or_default().push_back(now);
    }
}

/// The submission limits: per client address and per sender, each a sliding log kept in
/// this process, and the same limits kept in Redis when there is one.
#[derive(Debug)]
pub struct Limits {
    pub per_client: SlidingLog,
    pub per_sender: SlidingLog,
    /// Where every process counts; `None`: this process only.
    pub shared: Option<RedisLimits>,
}

impl Default for Limits {
    /// 30 submissions an hour from one address, 10 from one sender.
    fn default() -> Self {
        let hour = Duration::from_secs(3600);
        Limits {
            per_client: SlidingLog::new(30, hour),
            per_sender: SlidingLog::new(10, hour),
            shared: None,
        }
    }
}

impl Limits {
    /// Count a submission from `client` (a [`client_key`]) by `sender` if both are under
    /// their limits; else the longest wait, counting nothing.
    pub async fn admit(&self, client: &str, sender: &str) -> Result<(), Duration> {
        let checks = [(&self.per_client, client), (&self.per_sender, sender)];
        if let Some(shared) = &self.shared
            && let Some(answer) = shared.admit(&checks, true).await
        {
            return answer;
        }
        admit(&checks, Instant::now())
    }

    /// Count a delivery of a recurring capsule after its first against its sender, where
    /// the sender's limit has room: a series spends the sender's allowance as capsules
    /// submitted one by one would. The delivery itself is never held back.
    pub async fn count_occurrence(&self, sender: &str) {
        // The checks are the client's, then the sender's: no client here.
        let no_client = SlidingLog::new(0, Duration::ZERO);
        let checks = [(&no_client, ""), (&self.per_sender, sender)];
        if let Some(shared) = &self.shared
            && shared.admit(&checks, true).await.is_some()
        {
            return;
        }
        // Over the limit, nothing is counted; that is all this asks.
        let _ = admit(&checks, Instant::now());
    }

    /// How long `client` must wait before submitting, without counting anything.
    pub async fn check_client(&self, client: &str) -> Option<Duration> {
        let checks = [(&self.per_client, client)];
        if let Some(shared) = &self.shared
            && let Some(answer) = shared.admit(&checks, false).await
        {
            return answer.err();
        }
        self.per_client.check(client, Instant::now())
    }
}

/// Check every (log, key) pair and, only if all allow it, count the request in each.
/// On refusal, the longest wait.
pub fn admit(checks: &[(&SlidingLog, &str)], now: Instant) -> Result<(), Duration> {
    let mut guards: Vec<_> = checks
        .iter()
        .map(|(log, _)| log.hits.lock().unwrap_or_else(|p| p.into_inner()))
        .collect();
    let mut longest: Option<Duration> = None;
    for ((log, key), hits) in checks.iter().zip(guards.iter_mut()) {
        if log.limit == 0 {
            continue;
        }
        if let Some(wait) = log.wait(hits, key, now) {
            longest = Some(longest.map_or(wait, |l| l.max(wait)));
        }
    }
    if let Some(wait) = longest {
        return Err(wait);
    }
    for ((log, key), hits) in checks.iter().zip(guards.iter_mut()) {
        if log.limit > 0 {
            log.record(hits, key, now);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_admits_its_limit_then_says_how_long_to_wait() {
        let ips = SlidingLog::new(3, Duration::from_secs(60));
        let senders = SlidingLog::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(admit(&[(&ips, "1.2.3.4"), (&senders, "a@b.co")], at(0)).is_ok());
        assert!(admit(&[(&ips, "1.2.3.4"), (&senders, "a@b.co")], at(10)).is_ok());
        // The sender is at its limit; the refusal is not counted against the address.
        assert_eq!(
            admit(&[(&ips, "1.2.3.4"), (&senders, "a@b.co")], at(20)),
            Err(Duration::from_secs(40))
        );
        assert!(admit(&[(&ips, "1.2.3.4"), (&senders, "c@d.co")], at(20)).is_ok());
        assert_eq!(
            admit(&[(&ips, "1.2.3.4"), (&senders, "e@f.co")], at(30)),
            Err(Duration::from_secs(30))
        );
        // The window slides: the first submission ages out at 60 s.
        assert!(admit(&[(&ips, "1.2.3.4"), (&senders, "a@b.co")], at(60)).is_ok());
    }

    #[test]
    fn ipv6_clients_count_by_their_56() {
        let ip = |s: &str| s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let (a, b) = (ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:ff:bbbb::9"));
        assert_eq!(client_key(a), client_key(b));
        assert_eq!(client_key(a), "2001:db8:1::/56");
        assert_ne!(client_key(a), client_key(ip("2001:db8:1:100::1")));
        assert_eq!(client_key(IpAddr::from([192, 0, 2, 7])), "192.0.2.7");
        let mapped: IpAddr = "::ffff:192.0.2.7"
            .parse()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert_eq!(client_key(mapped), "192.0.2.7");
    }

    #[test]
    fn a_zero_limit_is_no_limit() {
        let off = SlidingLog::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..100 {
            assert!(admit(&[(&off, "k")], now).is_ok());
        }
    }
}
