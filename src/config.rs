//! Configuration: built-in defaults, then an optional TOML file (`--config`, `CAIRN_CONFIG`,
//! or `./cairn.toml` if present), then `CAIRN_*` environment variables. Every field is
//! documented here once; `cairn.example.toml` shows them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::client_ip::IpRange;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds (`CAIRN_LISTEN`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Directory for the embedded event store and its lock (`CAIRN_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `postgres://...` selects Postgres; unset selects SQLite in the data dir
    /// (`CAIRN_DATABASE_URL`).
    pub database_url: Option<String>,
    /// `redis://...` keeps read models in Redis, `redis+cluster://host:port,host:port,...`
    /// in a Redis Cluster; unset keeps them in a SQLite file in the data dir
    /// (`CAIRN_REDIS_URL`).
    pub redis_url: Option<String>,
    /// Prefix of every Redis key, so several deployments can share a server
    /// (`CAIRN_REDIS_PREFIX`).
    pub redis_prefix: String,
    /// The URL people reach Cairn at, for the links in emails
    /// (`CAIRN_PUBLIC_URL`).
    pub public_url: String,
    /// `text` or `json` (`CAIRN_LOG_FORMAT`); the level comes from `RUST_LOG`.
    pub log_format: String,
    /// Largest request body accepted, in bytes (`CAIRN_BODY_LIMIT`).
    pub body_limit: usize,
    /// Longest a request may take, in seconds (`CAIRN_REQUEST_TIMEOUT`).
    pub request_timeout: u64,
    /// Longest a write waits for its read model to catch up before answering, in
    /// milliseconds (`CAIRN_READ_YOUR_WRITES_MS`).
    pub read_your_writes_ms: u64,
    /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges
    /// (`CAIRN_TRUSTED_PROXIES`, comma-separated). Empty: the peer address is the client.
    pub trusted_proxies: Vec<IpRange>,
    /// The projections this process runs when it runs projections (`CAIRN_PROJECTIONS`,
    /// comma-separated); empty: all of them. Lets a projector process specialise.
    pub projections: Vec<String>,
    /// Fewest distinct users of a hashtag in a day for it to trend
    /// (`CAIRN_TRENDING_THRESHOLD`).
    pub trending_threshold: u64,
    /// Minutes for a trending score to halve (`CAIRN_TRENDING_HALF_LIFE_MINUTES`). Scores
    /// are stored as ranks that depend on it: after a change, rebuild `trends`.
    pub trending_half_life_minutes: i64,
    /// Days before today (UTC) whose per-minute trend counters are kept
    /// (`CAIRN_TREND_MINUTE_RETENTION_DAYS`); older days keep hour and day counters only.
    /// Unset: every minute is kept.
    pub trend_minute_retention_days: Option<i64>,
    /// The SMTP server emails are sent through (`CAIRN_SMTP_URL`): `smtp://host:25`,
    /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465`, credentials as
    /// `user:password@`. Unset: emails are written as `.eml` files to `outbox/` in the data
    /// directory and their links logged.
    pub smtp_url: Option<String>,
    /// The sender of Cairn's emails (`CAIRN_SMTP_FROM`).
    pub smtp_from: String,
    /// Seconds a capsule's send time must be ahead of its submission
    /// (`CAIRN_CAPSULE_MIN_LEAD`); 0 allows any future time.
    pub capsule_min_lead: u64,
    /// Sender addresses whose capsules are refused (`CAIRN_BLOCKED_SENDERS`, comma-separated).
    pub blocked_senders: Vec<String>,
    /// Web origins allowed to call Cairn from a browser (`CAIRN_CORS_ORIGINS`,
    /// comma-separated, e.g. the Chronoria client's `https://app.example`; `*` for any).
    pub cors_origins: Vec<String>,
    /// Capsule submissions allowed per client address in a window
    /// (`CAIRN_CAPSULE_LIMIT_PER_CLIENT`); 0: no limit.
    pub capsule_limit_per_client: usize,
    /// Capsule submissions allowed per sender address in a window
    /// (`CAIRN_CAPSULE_LIMIT_PER_SENDER`); 0: no limit.
    pub capsule_limit_per_sender: usize,
    /// The window of those limits, in seconds (`CAIRN_CAPSULE_LIMIT_WINDOW`).
    pub capsule_limit_window: u64,
    /// How long an email worker's claim on a message lasts, in seconds
    /// (`CAIRN_OUTBOX_CLAIM_SECONDS`): a worker that dies mid-send delays the resend by
    /// at most this.
    pub outbox_claim_seconds: u64,
    /// Where capsule files are kept (`CAIRN_BLOB_URL`): a directory path or `file:///…`.
    /// Unset: `blobs/` in the data directory. Kept out of logs: its query may hold
    /// credentials.
    pub blob_url: Option<Secret>,
    /// The key download links are signed with (`CAIRN_LINK_KEY`), at least 32 characters;
    /// processes serving the same links need the same key. Unset: a random key, made once
    /// and kept in the event store.
    pub link_key: Option<Secret>,
    /// How long a capsule file's download link works, in hours
    /// (`CAIRN_CAPSULE_LINK_HOURS`).
    pub capsule_link_hours: u64,
    /// How long a delivered capsule's file is kept, in days
    /// (`CAIRN_CAPSULE_FILE_RETENTION_DAYS`).
    pub capsule_file_retention_days: u64,
    /// Longest an upload may send nothing, in seconds (`CAIRN_UPLOAD_IDLE_TIMEOUT`).
    /// Uploads are not under `request_timeout`: a large file takes its time.
    pub upload_idle_timeout: u64,
}

/// A configured secret: never shown in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            redis_url: None,
            redis_prefix: "cairn".into(),
            public_url: "http://127.0.0.1:8080".into(),
            log_format: "text".into(),
            body_limit: 1024 * 1024,
            request_timeout: 30,
            read_your_writes_ms: 2000,
            trusted_proxies: Vec::new(),
            projections: Vec::new(),
            trending_threshold: 5,
            trending_half_life_minutes: 240,
            trend_minute_retention_days: None,
            smtp_url: None,
            smtp_from: "Cairn <cairn@localhost>".into(),
            capsule_min_lead: 0,
            blocked_senders: Vec::new(),
            cors_origins: Vec::new(),
            capsule_limit_per_client: 30,
            capsule_limit_per_sender: 10,
            capsule_limit_window: 3600,
            outbox_claim_seconds: 120,
            blob_url: None,
            link_key: None,
            capsule_link_hours: 12,
            capsule_file_retention_days: 30,
            upload_idle_timeout: 30,
        }
    }
}

impl Config {
    /// Load the layers in order and check the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("cairn.toml")).filter(|p| p.exists()));
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.check()?;
        Ok(config)
    }

    /// Override fields from `CAIRN_*` variables (read through `get`, for tests).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let var = |name: &str| get(name).filter(|v| !v.is_empty());
        if let Some(v) = var("CAIRN_LISTEN") {
            self.listen = v.parse().with_context(|| {
                format!("CAIRN_LISTEN={v:?} is not an address like 127.0.0.1:8080")
            })?;
        }
        if let Some(v) = var("CAIRN_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = var("CAIRN_DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = var("CAIRN_REDIS_URL") {
            self.redis_url = Some(v);
        }
        if let Some(v) = var("CAIRN_REDIS_PREFIX") {
            self.redis_prefix = v;
        }
        if let Some(v) = var("CAIRN_PUBLIC_URL") {
            self.public_url = v;
        }
        if let Some(v) = var("CAIRN_LOG_FORMAT") {
            self.log_format = v;
        }
        if let Some(v) = var("CAIRN_BODY_LIMIT") {
            self.body_limit = v
                .parse()
                .with_context(|| format!("CAIRN_BODY_LIMIT={v:?} is not a number of bytes"))?;
        }
        if let Some(v) = var("CAIRN_REQUEST_TIMEOUT") {
            self.request_timeout = v.parse().with_context(|| {
                format!("CAIRN_REQUEST_TIMEOUT={v:?} is not a number of seconds")
            })?;
        }
        if let Some(v) = var("CAIRN_READ_YOUR_WRITES_MS") {
            self.read_your_writes_ms = v
                .parse()
                .with_context(|| format!("CAIRN_READ_YOUR_WRITES_MS={v:?} is not a number"))?;
        }
        if let Some(v) = var("CAIRN_PROJECTIONS") {
            self.projections = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = var("CAIRN_TRENDING_THRESHOLD") {
            self.trending_threshold = v.parse().with_context(|| {
                format!("CAIRN_TRENDING_THRESHOLD={v:?} is not a number of users")
            })?;
        }
        if let Some(v) = var("CAIRN_TRENDING_HALF_LIFE_MINUTES") {
            self.trending_half_life_minutes = v.parse().with_context(|| {
                format!("CAIRN_TRENDING_HALF_LIFE_MINUTES={v:?} is not a number of minutes")
            })?;
        }
        if let Some(v) = var("CAIRN_TREND_MINUTE_RETENTION_DAYS") {
            self.trend_minute_retention_days = Some(v.parse().with_context(|| {
                format!("CAIRN_TREND_MINUTE_RETENTION_DAYS={v:?} is not a number of days")
            })?);
        }
        if let Some(v) = var("CAIRN_SMTP_URL") {
            self.smtp_url = Some(v);
        }
        if let Some(v) = var("CAIRN_SMTP_FROM") {
            self.smtp_from = v;
        }
        if let Some(v) = var("CAIRN_CAPSULE_MIN_LEAD") {
            self.capsule_min_lead = v.parse().with_context(|| {
                format!("CAIRN_CAPSULE_MIN_LEAD={v:?} is not a number of seconds")
            })?;
        }
        if let Some(v) = var("CAIRN_BLOCKED_SENDERS") {
            self.blocked_senders = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        for (name, field) in [
            (
                "CAIRN_CAPSULE_LIMIT_PER_CLIENT",
                &mut self.capsule_limit_per_client,
            ),
            (
                "CAIRN_CAPSULE_LIMIT_PER_SENDER",
                &mut self.capsule_limit_per_sender,
            ),
        ] {
            if let Some(v) = var(name) {
                *field = v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number of submissions"))?;
            }
        }
        if let Some(v) = var("CAIRN_BLOB_URL") {
            self.blob_url = Some(Secret(v));
        }
        if let Some(v) = var("CAIRN_LINK_KEY") {
            self.link_key = Some(Secret(v));
        }
        for (name, field, unit) in [
            (
                "CAIRN_CAPSULE_LINK_HOURS",
                &mut self.capsule_link_hours,
                "hours",
            ),
            (
                "CAIRN_CAPSULE_FILE_RETENTION_DAYS",
                &mut self.capsule_file_retention_days,
                "days",
            ),
            (
                "CAIRN_UPLOAD_IDLE_TIMEOUT",
                &mut self.upload_idle_timeout,
                "seconds",
            ),
        ] {
            if let Some(v) = var(name) {
                *field = v
                    .parse()
                    .with_context(|| format!("{name}={v:?} is not a number of {unit}"))?;
            }
        }
        if let Some(v) = var("CAIRN_CAPSULE_LIMIT_WINDOW") {
            self.capsule_limit_window = v.parse().with_context(|| {
                format!("CAIRN_CAPSULE_LIMIT_WINDOW={v:?} is not a number of seconds")
            })?;
        }
        if let Some(v) = var("CAIRN_OUTBOX_CLAIM_SECONDS") {
            self.outbox_claim_seconds = v.parse().with_context(|| {
                format!("CAIRN_OUTBOX_CLAIM_SECONDS={v:?} is not a number of seconds")
            })?;
        }
        if let Some(v) = var("CAIRN_CORS_ORIGINS") {
            self.cors_origins = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = var("CAIRN_TRUSTED_PROXIES") {
            self.trusted_proxies = v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|p| {
                    p.parse()
                        .map_err(|e| anyhow::anyhow!("CAIRN_TRUSTED_PROXIES: {e}"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        Ok(())
    }

    /// Whether this process runs the named projection (when it runs projections at all).
    pub fn runs_projection(&self, name: &str) -> bool {
        self.projections.is_empty() || self.projections.iter().any(|p| p == name)
    }

    /// How the trends read model is built.
    pub fn trend_rules(&self) -> cairn_query::trends::TrendRules {
        cairn_query::trends::TrendRules {
            threshold: self.trending_threshold,
            half_life_minutes: self.trending_half_life_minutes,
            minute_retention_days: self.trend_minute_retention_days,
        }
    }

    /// Cross-field checks, made once at start-up.
    pub fn check(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.database_url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!(
                "CAIRN_DATABASE_URL must be a postgres:// URL (leave it unset for the embedded store)"
            );
        }
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+cluster://")
                || url.starts_with("rediss+cluster://")
                || url.starts_with("unix://"))
        {
            bail!(
                "CAIRN_REDIS_URL must be a redis:// or rediss:// URL, or redis+cluster://host:port,host:port,... for a Redis Cluster"
            );
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            bail!("CAIRN_REDIS_PREFIX must be non-empty, without braces or spaces");
        }
        if let Some(unknown) = self
            .projections
            .iter()
            .find(|p| !cairn_query::projections::NAMES.contains(&p.as_str()))
        {
            bail!(
                "CAIRN_PROJECTIONS: no projection named {unknown}; known: {}",
                cairn_query::projections::NAMES.join(", ")
            );
        }
        if self.trending_half_life_minutes < 1 {
            bail!("CAIRN_TRENDING_HALF_LIFE_MINUTES must be at least 1");
        }
        if self.outbox_claim_seconds == 0 {
            bail!("CAIRN_OUTBOX_CLAIM_SECONDS must be at least 1");
        }
        if self
            .link_key
            .as_ref()
            .is_some_and(|k| k.0.chars().count() < 32)
        {
            bail!("CAIRN_LINK_KEY must be at least 32 characters");
        }
        if !(1..=24 * 365).contains(&self.capsule_link_hours) {
            bail!("CAIRN_CAPSULE_LINK_HOURS must be 1 to 8760 hours");
        }
        if !(1..=36_500).contains(&self.capsule_file_retention_days) {
            bail!("CAIRN_CAPSULE_FILE_RETENTION_DAYS must be 1 to 36500 days");
        }
        if !(1..=3600).contains(&self.upload_idle_timeout) {
            bail!("CAIRN_UPLOAD_IDLE_TIMEOUT must be 1 to 3600 seconds");
        }
        if self.capsule_limit_window == 0 {
            bail!("CAIRN_CAPSULE_LIMIT_WINDOW must be at least 1 second");
        }
        if self
            .trend_minute_retention_days
            .is_some_and(|d| !(1..=36_500).contains(&d))
        {
            bail!(
                "CAIRN_TREND_MINUTE_RETENTION_DAYS must be 1 to 36500 days (unset keeps every minute)"
            );
        }
        if self.capsule_min_lead > 100 * 365 * 24 * 3600 {
            bail!("CAIRN_CAPSULE_MIN_LEAD must be at most 100 years");
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            bail!("CAIRN_LOG_FORMAT must be text or json");
        }
        if self.body_limit < 1024 {
            bail!("CAIRN_BODY_LIMIT must be at least 1024 bytes");
        }
        if self.request_timeout == 0 {
            bail!("CAIRN_REQUEST_TIMEOUT must be at least 1 second");
        }
        Ok(())
    }

    /// The database URL with any password hidden, for logs.
    pub fn database_for_log(&self) -> String {
        match &self.database_url {
            None => format!("sqlite:{}", self.data_dir.join("events.db").display()),
            Some(url) => redact(url),
        }
    }
}

/// Hide the password of a URL (`scheme://user:secret@host` → `scheme://user:***@host`).
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example: Config = toml::from_str(include_str!("../cairn.example.toml"))
            .unwrap_or_else(|e| panic!("cairn.example.toml: {e}"));
        assert_eq!(format!("{example:?}"), format!("{:?}", Config::default()));
        let with_proxies: Config =
            toml::from_str(r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(with_proxies.trusted_proxies.len(), 2);
        assert!(toml::from_str::<Config>(r#"trusted_proxies = ["nope"]"#).is_err());
    }

    #[test]
    fn env_overrides_defaults_and_is_checked() {
        let mut config = Config::default();
        let env = |name: &str| match name {
            "CAIRN_LISTEN" => Some("0.0.0.0:9000".to_owned()),
            "CAIRN_DATABASE_URL" => Some("postgres://u:secret@db/cairn".to_owned()),
            _ => None,
        };
        config.apply_env(env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen.port(), 9000);
        assert!(config.check().is_ok());
        assert_eq!(config.database_for_log(), "postgres://u:***@db/cairn");
        let mut bad = Config::default();
        assert!(
            bad.apply_env(|n| (n == "CAIRN_LISTEN").then(|| "nope".to_owned()))
                .is_err()
        );
        bad.database_url = Some("mysql://x".into());
        assert!(bad.check().is_err());
    }
}
