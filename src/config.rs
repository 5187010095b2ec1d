//! Configuration: built-in defaults, then an optional TOML file (`--config`, `CAIRN_CONFIG`,
//! or `./cairn.toml` if present), then `CAIRN_*` environment variables.
//!
//! Each setting is declared once, in `settings!` below: its doc, type and default. The
//! layers above the defaults are generic over the fields, so a new setting needs no loading
//! code: the file's key `body_limit` and the variable `CAIRN_BODY_LIMIT` both set the field
//! `body_limit`. Variables are strings, so they go through a small serde deserializer that
//! parses what the field asks for (a number, a list split on commas) and names the variable
//! when it cannot; an empty variable counts as unset. Checks of ranges and of fields against
//! each other stay in [`Config::check`]. `cairn.example.toml` shows every setting; a test
//! keeps it equal to the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::client_ip::IpRange;

mod layers;

/// Declares the settings: the struct with each field's doc and type, its `Default` from each
/// field's `= default`, and the list of field names the layers are read by.
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident: $ty:ty = $default:expr, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        /// The settings' names: the file's keys, and the variables' after `CAIRN_`.
        const SETTINGS: &[&str] = &[$(stringify!($field)),*];
    };
}

settings! {
    /// Cairn's settings. Each is the file's key of the same name and the variable
    /// `CAIRN_<NAME>` (the name in upper case), which wins over the file.
    pub struct Config {
        /// Address the HTTP server binds; port 0 picks a free port.
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)),
        /// Directory for the embedded event store and its lock.
        data_dir: PathBuf = PathBuf::from("./data"),
        /// `postgres://...` selects Postgres; unset selects SQLite in the data dir.
        database_url: Option<String> = None,
        /// `redis://...` keeps read models in Redis, `redis+cluster://host:port,host:port,...`
        /// in a Redis Cluster; unset keeps them in a SQLite file in the data dir.
        redis_url: Option<String> = None,
        /// Prefix of every Redis key, so several deployments can share a server.
        redis_prefix: String = "cairn".into(),
        /// The URL people reach Cairn at: file download links, and anything else Cairn
        /// serves itself.
        public_url: String = "http://127.0.0.1:8080".into(),
        /// Where the links in emails lead (`/confirm/{id}`, `/cancel/{id}`,
        /// `/download/{id}`): the Chronoria client's address when it serves those pages.
        /// Unset: `public_url`.
        pages_url: Option<String> = None,
        /// `text` or `json`; the level comes from `RUST_LOG`.
        log_format: String = "text".into(),
        /// Largest request body accepted, in bytes.
        body_limit: usize = 1024 * 1024,
        /// Longest a request may take, in seconds.
        request_timeout: u64 = 30,
        /// Longest a client may take to send a request's head (its line and headers) once
        /// it started, in seconds; the connection is closed then.
        header_timeout: u64 = 10,
        /// Longest a connection may sit idle (no request under way, nothing sent either
        /// way) before it is closed, in seconds.
        idle_timeout: u64 = 60,
        /// Most connections served at once; more wait to be accepted until one closes (those
        /// with no request under way are closed to make room for them).
        /// Unset: three quarters of the open-file limit left after 64 for everything else
        /// (the limit is raised to its hard limit at start), at most 10,000.
        max_connections: Option<usize> = None,
        /// Longest a write waits for its read model to catch up before answering, in
        /// milliseconds.
        read_your_writes_ms: u64 = 2000,
        /// Longest one call to Postgres may take (a connection included), in milliseconds.
        /// A call that fails because Postgres is unreachable makes the next ones fail at once,
        /// until Postgres answers again.
        database_timeout_ms: u64 = 1000,
        /// Longest one call to Redis may take (a connection included), in milliseconds; the
        /// same fail-fast rule applies to Redis.
        redis_timeout_ms: u64 = 1000,
        /// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR ranges. Empty: the
        /// peer address is the client.
        trusted_proxies: Vec<IpRange> = Vec::new(),
        /// The projections this process runs when it runs projections; empty: all of them.
        /// Lets a projector process specialise.
        projections: Vec<String> = Vec::new(),
        /// Fewest distinct users of a hashtag in a day for it to trend.
        trending_threshold: u64 = 5,
        /// Minutes for a trending score to halve. Scores are stored as ranks that depend on
        /// it: after a change, rebuild `trends`.
        trending_half_life_minutes: i64 = 240,
        /// Days before today (UTC) whose per-minute trend counters are kept; older days keep
        /// hour and day counters only. Unset: every minute is kept.
        trend_minute_retention_days: Option<i64> = None,
        /// The SMTP server emails are sent through: `smtp://host:25`,
        /// `smtp://host:587?tls=required` (STARTTLS), `smtps://host:465`, credentials as
        /// `user:password@`. Unset: emails are written as `.eml` files to `outbox/` in the
        /// data directory and their links logged.
        smtp_url: Option<String> = None,
        /// The sender of Cairn's emails.
        smtp_from: String = "Cairn <cairn@localhost>".into(),
        /// Seconds a capsule's send time must be ahead of its submission; 0 allows any
        /// future time.
        capsule_min_lead: u64 = 0,
        /// Seconds that must separate two deliveries of a recurring capsule: a capsule is
        /// a letter, not a pager.
        capsule_min_interval: u64 = 3600,
        /// Sender addresses whose capsules are refused.
        blocked_senders: Vec<String> = Vec::new(),
        /// Web origins allowed to call Cairn from a browser (e.g. the Chronoria client's
        /// `https://app.example`; `*` for any).
        cors_origins: Vec<String> = Vec::new(),
        /// Capsule submissions allowed per client address in a window; 0: no limit.
        capsule_limit_per_client: usize = 30,
        /// Capsule submissions allowed per sender address in a window; 0: no limit.
        capsule_limit_per_sender: usize = 10,
        /// The window of those limits, in seconds. With Redis, the limits are counted
        /// there, shared by every process; else in the process.
        capsule_limit_window: u64 = 3600,
        /// How long an email worker's claim on a message lasts unless renewed, in seconds
        /// (it is renewed while the message is being sent). On Postgres a worker that dies
        /// loses its claims at once; elsewhere its resends wait this long at most.
        outbox_claim_seconds: u64 = 5,
        /// The same for a scheduler's claim on a due item (a capsule's release).
        due_claim_seconds: u64 = 5,
        /// When the sweep of stored files no capsule keeps runs: a cron expression (5
        /// fields, or 6 with seconds first; UTC), or `off`. Once across all processes.
        maintenance_files: String = "0 */6 * * *".into(),
        /// When sent emails past their retention (7 days) are deleted from the outbox: a
        /// cron expression (UTC), or `off`. Once across all processes.
        maintenance_outbox: String = "30 * * * *".into(),
        /// Where capsule files are kept: a directory path or `file:///…`. Unset: `blobs/` in
        /// the data directory. Kept out of logs: its query may hold credentials.
        blob_url: Option<Secret> = None,
        /// The key download links are signed with, at least 32 characters; processes serving
        /// the same links need the same key. Unset: a random key, made once and kept in the
        /// event store.
        link_key: Option<Secret> = None,
        /// How long a capsule file's download link works, in hours.
        capsule_link_hours: u64 = 12,
        /// How long a delivered capsule's file is kept, in days.
        capsule_file_retention_days: u64 = 30,
        /// Longest an upload may send nothing, in seconds. Uploads are not under
        /// `request_timeout`: a large file takes its time.
        upload_idle_timeout: u64 = 30,
        /// Backup uploads at once, in all.
        backup_uploads: usize = 128,
        /// Backup uploads at once from one client address.
        backup_uploads_per_client: usize = 16,
        /// How long a finished export's bundle is kept, in days.
        export_retention_days: u64 = 7,
    }
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

/// A maintenance job's schedule: `None` for `off`.
pub fn maintenance_schedule(
    setting: &str,
) -> Result<Option<cairn_events::schedule::Recurrence>, cairn_events::schedule::ScheduleError> {
    if setting.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    cairn_events::schedule::Recurrence::parse(setting, "UTC").map(Some)
}

/// The variable that overrides a setting.
fn variable(setting: &str) -> String {
    format!("CAIRN_{}", setting.to_ascii_uppercase())
}

/// The `CAIRN_*` variables among `names` that set nothing: a misspelt setting, most likely.
/// `CAIRN_CONFIG` (the file) and `CAIRN_TEST_*` (the test suite's services) are Cairn's own.
fn unknown_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| name.starts_with("CAIRN_"))
        .filter(|name| name != "CAIRN_CONFIG" && !name.starts_with("CAIRN_TEST_"))
        .filter(|name| !SETTINGS.iter().any(|s| variable(s) == *name))
        .collect()
}

impl Config {
    /// Load the layers in order and check the result.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CAIRN_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("cairn.toml")).filter(|p| p.exists()));
        let text = match &file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?,
            ),
            None => None,
        };
        // Not an error: other software may set CAIRN_* variables too (Kubernetes does, for
        // a service named cairn). Logging is not set up yet, as it is configured here.
        let names = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
        for name in unknown_variables(names) {
            eprintln!("warning: {name} is not a Cairn setting and is ignored");
        }
        let config = Config::layered(file.as_deref().zip(text.as_deref()), |name| {
            std::env::var(name).ok()
        })?;
        config.check()?;
        Ok(config)
    }

    /// The defaults, under the file (its path and text), under the variables read through
    /// `env` (the process environment, or the tests' own). Not checked: see [`Config::check`].
    pub fn layered(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let (origin, table) = match file {
            Some((path, text)) => {
                // Parsed on its own first, the file's errors come with line and column.
                toml::from_str::<Config>(text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                let table = toml::from_str::<toml::Table>(text)
                    .with_context(|| format!("parsing {}", path.display()))?;
                (path.display().to_string(), table)
            }
            None => (String::new(), toml::Table::new()),
        };
        let variables = SETTINGS.iter().filter_map(|setting| {
            let name = variable(setting);
            let value = env(&name).filter(|v| !v.is_empty())?;
            Some(((*setting).to_owned(), name, value))
        });
        layers::deserialize(&origin, table, variables).map_err(anyhow::Error::msg)
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

    /// Where the links in emails lead: `pages_url`, or else `public_url`.
    pub fn pages_url(&self) -> &str {
        self.pages_url.as_deref().unwrap_or(&self.public_url)
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
        if let Some(url) = &self.pages_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("CAIRN_PAGES_URL must be an http:// or https:// URL");
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
        if !(1..=3600).contains(&self.outbox_claim_seconds) {
            bail!("CAIRN_OUTBOX_CLAIM_SECONDS must be 1 to 3600 seconds");
        }
        if !(1..=3600).contains(&self.due_claim_seconds) {
            bail!("CAIRN_DUE_CLAIM_SECONDS must be 1 to 3600 seconds");
        }
        for (name, setting) in [
            ("files", &self.maintenance_files),
            ("outbox", &self.maintenance_outbox),
        ] {
            if let Err(error) = maintenance_schedule(setting) {
                bail!("CAIRN_MAINTENANCE_{}: {error}", name.to_ascii_uppercase());
            }
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
        if !(1..=36_500).contains(&self.export_retention_days) {
            bail!("CAIRN_EXPORT_RETENTION_DAYS must be 1 to 36500 days");
        }
        if self.backup_uploads == 0 || self.backup_uploads_per_client == 0 {
            bail!("CAIRN_BACKUP_UPLOADS and CAIRN_BACKUP_UPLOADS_PER_CLIENT must be at least 1");
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
        if !(1..=366 * 24 * 3600).contains(&self.capsule_min_interval) {
            bail!("CAIRN_CAPSULE_MIN_INTERVAL must be 1 second to 366 days");
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
        if !(10..=60_000).contains(&self.database_timeout_ms) {
            bail!("CAIRN_DATABASE_TIMEOUT_MS must be 10 to 60000 milliseconds");
        }
        if !(10..=60_000).contains(&self.redis_timeout_ms) {
            bail!("CAIRN_REDIS_TIMEOUT_MS must be 10 to 60000 milliseconds");
        }
        if self.request_timeout == 0 {
            bail!("CAIRN_REQUEST_TIMEOUT must be at least 1 second");
        }
        if !(1..=3600).contains(&self.header_timeout) {
            bail!("CAIRN_HEADER_TIMEOUT must be 1 to 3600 seconds");
        }
        if !(1..=86_400).contains(&self.idle_timeout) {
            bail!("CAIRN_IDLE_TIMEOUT must be 1 to 86400 seconds");
        }
        if self.max_connections == Some(0) {
            bail!("CAIRN_MAX_CONNECTIONS must be at least 1 (unset: from the open-file limit)");
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
    use std::collections::HashMap;

    use super::*;

    /// The layers over `file` (TOML text) and the given variables.
    fn layered(file: &str, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::layered(Some((Path::new("cairn.toml"), file)), |name| {
            vars.get(name).cloned()
        })
    }

    fn debug(config: &Config) -> String {
        format!("{config:?}")
    }

    #[test]
    fn the_example_file_parses_to_the_defaults() {
        let example = layered(include_str!("../cairn.example.toml"), &[])
            .unwrap_or_else(|e| panic!("cairn.example.toml: {e:#}"));
        assert_eq!(debug(&example), debug(&Config::default()));
        let with_proxies = layered(r#"trusted_proxies = ["127.0.0.1", "10.0.0.0/8"]"#, &[])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(with_proxies.trusted_proxies.len(), 2);
        assert!(layered(r#"trusted_proxies = ["nope"]"#, &[]).is_err());
    }

    /// A value other than the default for every setting: as a variable, and as TOML.
    const SAMPLES: &[(&str, &str, &str)] = &[
        ("listen", "0.0.0.0:9000", r#""0.0.0.0:9000""#),
        ("data_dir", "/var/lib/cairn", r#""/var/lib/cairn""#),
        (
            "database_url",
            "postgres://db/cairn",
            r#""postgres://db/cairn""#,
        ),
        ("redis_url", "redis://cache:6379", r#""redis://cache:6379""#),
        ("redis_prefix", "staging", r#""staging""#),
        (
            "public_url",
            "https://cairn.example",
            r#""https://cairn.example""#,
        ),
        (
            "pages_url",
            "https://app.example",
            r#""https://app.example""#,
        ),
        ("log_format", "json", r#""json""#),
        ("body_limit", "4096", "4096"),
        ("request_timeout", "5", "5"),
        ("header_timeout", "2", "2"),
        ("idle_timeout", "20", "20"),
        ("max_connections", "500", "500"),
        ("read_your_writes_ms", "0", "0"),
        ("database_timeout_ms", "250", "250"),
        ("redis_timeout_ms", "250", "250"),
        (
            "trusted_proxies",
            "10.0.0.1, fd00::/8",
            r#"["10.0.0.1", "fd00::/8"]"#,
        ),
        (
            "projections",
            "trends,messages",
            r#"["trends", "messages"]"#,
        ),
        ("trending_threshold", "2", "2"),
        ("trending_half_life_minutes", "60", "60"),
        ("trend_minute_retention_days", "7", "7"),
        ("smtp_url", "smtp://mail:25", r#""smtp://mail:25""#),
        (
            "smtp_from",
            "Ops <ops@example.com>",
            r#""Ops <ops@example.com>""#,
        ),
        ("capsule_min_lead", "60", "60"),
        ("capsule_min_interval", "60", "60"),
        (
            "blocked_senders",
            "a@x.test,b@x.test",
            r#"["a@x.test", "b@x.test"]"#,
        ),
        ("cors_origins", "*", r#"["*"]"#),
        ("capsule_limit_per_client", "0", "0"),
        ("capsule_limit_per_sender", "1", "1"),
        ("capsule_limit_window", "60", "60"),
        ("outbox_claim_seconds", "30", "30"),
        ("due_claim_seconds", "3", "3"),
        ("maintenance_files", "0 3 * * *", r#""0 3 * * *""#),
        ("maintenance_outbox", "off", r#""off""#),
        ("blob_url", "/srv/blobs", r#""/srv/blobs""#),
        ("link_key", "k", r#""k""#),
        ("capsule_link_hours", "1", "1"),
        ("capsule_file_retention_days", "2", "2"),
        ("upload_idle_timeout", "3", "3"),
        ("backup_uploads", "9", "9"),
        ("backup_uploads_per_client", "2", "2"),
        ("export_retention_days", "3", "3"),
    ];

    #[test]
    fn every_setting_has_its_variable_which_wins_over_the_file() {
        let defaults = debug(&Config::default());
        for setting in SETTINGS {
            let Some((_, env, toml)) = SAMPLES.iter().find(|(s, _, _)| s == setting) else {
                panic!("no sample value for {setting}");
            };
            let name = variable(setting);
            let from_env = layered("", &[(&name, env)]).unwrap_or_else(|e| panic!("{e:#}"));
            let from_file =
                layered(&format!("{setting} = {toml}"), &[]).unwrap_or_else(|e| panic!("{e:#}"));
            assert_ne!(debug(&from_env), defaults, "{name} changes nothing");
            assert_eq!(
                debug(&from_env),
                debug(&from_file),
                "{name} is not {setting}"
            );
            // The variable wins over the file, which wins over the default.
            let both = layered(&format!("{setting} = {toml}"), &[(&name, env)])
                .unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(debug(&both), debug(&from_file));
        }
        let over = layered("request_timeout = 5", &[("CAIRN_REQUEST_TIMEOUT", "7")])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(over.request_timeout, 7);
        assert_eq!(
            SAMPLES.len(),
            SETTINGS.len(),
            "a sample for a setting that is gone"
        );
    }

    #[test]
    fn config_variables_are_all_documented() {
        let readme = include_str!("../README.md");
        let example = include_str!("../cairn.example.toml");
        for setting in SETTINGS {
            let name = variable(setting);
            assert!(readme.contains(&format!("`{name}`")), "README lacks {name}");
            assert!(example.contains(&name), "cairn.example.toml lacks {name}");
        }
    }

    #[test]
    fn config_lists_split_on_commas_and_an_empty_variable_is_unset() {
        let config = layered(
            r#"listen = "0.0.0.0:1"
            cors_origins = ["https://a.example"]"#,
            &[
                ("CAIRN_BLOCKED_SENDERS", " a@x.test , b@x.test,,"),
                ("CAIRN_PROJECTIONS", "trends"),
                ("CAIRN_LISTEN", ""),
                ("CAIRN_CORS_ORIGINS", ""),
                ("CAIRN_LINK_KEY", ""),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(config.blocked_senders, ["a@x.test", "b@x.test"]);
        assert_eq!(config.projections, ["trends"]);
        assert_eq!(config.listen.port(), 1);
        assert_eq!(config.cors_origins, ["https://a.example"]);
        assert_eq!(config.link_key, None);
    }

    #[test]
    fn config_errors_name_the_variable_or_the_key_and_the_value() {
        let error = |file: &str, vars: &[(&str, &str)]| match layered(file, vars) {
            Ok(_) => panic!("{file} {vars:?} accepted"),
            Err(e) => format!("{e:#}"),
        };
        let e = error("", &[("CAIRN_LISTEN", "nope")]);
        assert!(e.starts_with(r#"CAIRN_LISTEN="nope" is not valid"#), "{e}");
        let e = error("", &[("CAIRN_BODY_LIMIT", "12k")]);
        assert!(e.starts_with(r#"CAIRN_BODY_LIMIT="12k" is not valid: expected a whole number"#));
        let e = error("", &[("CAIRN_TRENDING_HALF_LIFE_MINUTES", "-")]);
        assert!(e.contains("CAIRN_TRENDING_HALF_LIFE_MINUTES=\"-\""), "{e}");
        let e = error("", &[("CAIRN_TRUSTED_PROXIES", "10.0.0.1,nope")]);
        assert!(e.contains("CAIRN_TRUSTED_PROXIES=") && e.contains("\"nope\" is not an IP"));
        let e = error("listen = \"nope\"", &[]);
        assert!(
            e.contains("cairn.toml") && e.contains("listen = \"nope\""),
            "{e}"
        );
        let e = error("lisen = \"0.0.0.0:1\"", &[]);
        assert!(
            e.contains("cairn.toml") && e.contains("unknown field `lisen`"),
            "{e}"
        );
    }

    #[test]
    fn config_reports_variables_that_set_nothing() {
        let names = [
            "CAIRN_LISTN",
            "CAIRN_LISTEN",
            "CAIRN_CONFIG",
            "CAIRN_TEST_REDIS_URL",
        ];
        let names = names.into_iter().chain(["PATH"]).map(str::to_owned);
        assert_eq!(unknown_variables(names), ["CAIRN_LISTN"]);
    }

    #[test]
    fn config_secrets_stay_out_of_debug() {
        let key = "a-link-key-of-more-than-thirty-two-characters";
        let config = layered(
            "",
            &[
                ("CAIRN_LINK_KEY", key),
                ("CAIRN_BLOB_URL", "s3://b/p?secret_access_key=hush"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(config.check().is_ok());
        let shown = debug(&config);
        assert!(!shown.contains(key) && !shown.contains("hush"), "{shown}");
        assert_eq!(config.link_key, Some(Secret(key.to_owned())));
    }

    #[test]
    fn env_overrides_defaults_and_is_checked() {
        let config = layered(
            "",
            &[
                ("CAIRN_LISTEN", "0.0.0.0:9000"),
                ("CAIRN_DATABASE_URL", "postgres://u:secret@db/cairn"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(config.listen.port(), 9000);
        assert!(config.check().is_ok());
        assert_eq!(config.database_for_log(), "postgres://u:***@db/cairn");
        let bad = Config {
            database_url: Some("mysql://x".into()),
            ..Config::default()
        };
        assert!(bad.check().is_err());
    }
}
