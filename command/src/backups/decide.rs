//! The rules of backups, pure: what a service's and a resource's settings may be, whether
//! an upload gets in (and, when not, why, in Dome's order), which stored file a new backup
//! uses, and what a file's format is when the uploader does not say.
//!
//! Nothing here reads a store or a clock: [`super::Backups`] loads the streams, asks, and
//! appends.

use std::net::IpAddr;

use cairn_events::domain::backup::{
    self, Expected, MAX_ALLOWLIST, MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, Notifications,
    ResourceSettings, Retention, ServiceSettings,
};
use cairn_events::domain::capsule::EmailAddress;
use cairn_events::ip::IpRange;
use cairn_events::schedule::Recurrence;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::state::{Backup, BlobState, ResourceState, ServiceState};

/// What notifications may be asked for.
pub const NOTIFY_ON: [&str; 5] = [
    "backup_created",
    "bad_key",
    "ip_blocked",
    "backup_missed",
    "back_to_normal",
];
/// Most addresses or webhook URLs a service notifies.
pub const MAX_RECIPIENTS: usize = 10;
/// A key's last use is recorded at most this often.
pub const KEY_USE_EVERY: Duration = Duration::minutes(1);
/// Longest format name.
pub const MAX_FORMAT_CHARS: usize = 20;

/// An input refused, naming the field and saying why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> Invalid {
    Invalid {
        field,
        message: message.into(),
    }
}

/// A name: 1 to 100 characters, no control characters, trimmed.
pub fn name(field: &'static str, raw: &str) -> Result<String, Invalid> {
    let name = raw.trim();
    let count = name.chars().count();
    if count == 0 || count > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    Ok(name.to_owned())
}

/// A description: at most 1,000 characters.
pub fn description(field: &'static str, raw: &str) -> Result<String, Invalid> {
    if raw.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(
            field,
            format!("{field} must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(raw.trim().to_owned())
}

/// The retention as given: Dome's `1w`, `1m`, `3m`, a number of days, or counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionInput {
    pub period: Option<String>,
    pub keep_last: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
}

pub fn retention(input: &RetentionInput) -> Result<Retention, Invalid> {
    let counts = [
        input.keep_last,
        input.keep_daily,
        input.keep_weekly,
        input.keep_monthly,
    ];
    let any_count = counts.iter().any(Option::is_some);
    match (&input.period, any_count) {
        (Some(_), true) => Err(invalid(
            "retention",
            "retention is either a period (1w, 1m, 3m, or days) or keep_* counts, not both",
        )),
        (Some(period), false) => Retention::parse(period).ok_or_else(|| {
            invalid(
                "retention",
                "retention must be 1w, 1m, 3m or a number of days from 1 to 36500",
            )
        }),
        (None, true) => {
            if counts.iter().flatten().any(|n| *n == 0 || *n > 100_000)
                || counts.iter().flatten().all(|n| *n == 0)
            {
                return Err(invalid(
                    "retention",
                    "keep_last, keep_daily, keep_weekly and keep_monthly must be from 1 to 100000",
                ));
            }
            Ok(Retention::Counts {
                last: input.keep_last,
                daily: input.keep_daily,
                weekly: input.keep_weekly,
                monthly: input.keep_monthly,
            })
        }
        (None, false) => Ok(Retention::default()),
    }
}

/// An IP allowlist: at most 100 addresses or CIDR ranges.
pub fn allowlist(raw: &[String]) -> Result<Vec<IpRange>, Invalid> {
    if raw.len() > MAX_ALLOWLIST {
        return Err(invalid(
            "ip_allowlist.ips",
            format!("ip_allowlist.ips takes at most {MAX_ALLOWLIST} entries"),
        ));
    }
    raw.iter()
        .map(|entry| {
            entry
                .parse()
                .map_err(|e: String| invalid("ip_allowlist.ips", e))
        })
        .collect()
}

/// The largest backup: from 1 byte to the server's `cap`.
pub fn max_backup_bytes(raw: Option<u64>, cap: u64) -> Result<u64, Invalid> {
    let bytes = raw.unwrap_or(backup::DEFAULT_MAX_BACKUP_BYTES.min(cap));
    if bytes == 0 || bytes > cap {
        return Err(invalid(
            "max_backup_bytes",
            format!("max_backup_bytes must be from 1 to {cap}"),
        ));
    }
    Ok(bytes)
}

/// Where and on what a service is notified.
pub fn notifications(input: &Notifications) -> Result<Notifications, Invalid> {
    if input.emails.len() > MAX_RECIPIENTS || input.webhooks.len() > MAX_RECIPIENTS {
        return Err(invalid(
            "notifications",
            format!(
                "notifications take at most {MAX_RECIPIENTS} emails and {MAX_RECIPIENTS} webhooks"
            ),
        ));
    }
    let emails = input
        .emails
        .iter()
        .map(|e| {
            EmailAddress::parse(e)
                .map(|e| e.as_str().to_owned())
                .map_err(|_| {
                    invalid(
                        "notifications.emails",
                        format!("{e:?} is not an email address"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let webhooks = input
        .webhooks
        .iter()
        .map(|url| {
            let url = url.trim();
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 2000
                && !url.chars().any(|c| c.is_whitespace() || c.is_control());
            ok.then(|| url.to_owned()).ok_or_else(|| {
                invalid(
                    "notifications.webhooks",
                    format!("{url:?} is not an http(s) URL"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut on = Vec::new();
    for what in &input.on {
        if !NOTIFY_ON.contains(&what.as_str()) {
            return Err(invalid(
                "notifications.on",
                format!("notifications.on takes {}", NOTIFY_ON.join(", ")),
            ));
        }
        if !on.contains(what) {
            on.push(what.clone());
        }
    }
    Ok(Notifications {
        emails,
        webhooks,
        on,
    })
}

/// Checks a whole service's settings, for a new service or an update.
pub fn service_settings(settings: ServiceSettings) -> Result<ServiceSettings, Invalid> {
    Ok(ServiceSettings {
        name: name("name", &settings.name)?,
        description: description("description", &settings.description)?,
        notifications: notifications(&settings.notifications)?,
        ..settings
    })
}

/// Checks a resource's settings.
pub fn resource_settings(settings: ResourceSettings) -> Result<ResourceSettings, Invalid> {
    Ok(ResourceSettings {
        name: name("name", &settings.name)?,
        description: description("description", &settings.description)?,
        expected: settings.expected.map(expected).transpose()?,
        ..settings
    })
}

/// The longest grace, and the longest interval between expected backups.
const MAX_GRACE_SECONDS: u64 = 30 * 86_400;
const MAX_EVERY_SECONDS: u64 = 366 * 86_400;

/// An expectation: a cron expression (in a time zone, UTC by default) or an interval of
/// 60 seconds to a year, and a grace of up to 30 days.
pub fn expected(raw: Expected) -> Result<Expected, Invalid> {
    let field = "expected";
    if raw.grace_seconds > MAX_GRACE_SECONDS {
        return Err(invalid(
            field,
            "expected.grace_seconds must be at most 2592000 (30 days)",
        ));
    }
    match (&raw.cron, raw.every_seconds) {
        (Some(cron), None) => {
            let zone = raw.time_zone.as_deref().unwrap_or("UTC");
            let recurrence = Recurrence::parse(cron, zone).map_err(|e| {
                invalid(field, format!("expected.cron and expected.time_zone: {e}"))
            })?;
            Ok(Expected {
                cron: Some(cron.trim().to_owned()),
                time_zone: Some(recurrence.zone().name().to_owned()),
                every_seconds: None,
                grace_seconds: raw.grace_seconds,
            })
        }
        (None, Some(every)) if (60..=MAX_EVERY_SECONDS).contains(&every) => Ok(Expected {
            time_zone: None,
            ..raw
        }),
        (None, Some(_)) => Err(invalid(
            field,
            "expected.every_seconds must be from 60 to 31622400 (a year)",
        )),
        _ => Err(invalid(
            field,
            "expected takes either cron (with time_zone) or every_seconds, and grace_seconds",
        )),
    }
}

/// The next backup expected after `since` (the last one, or when the expectation was
/// set): when it is due, and when, without it, it counts as missed.
pub fn next_expected(
    expected: &Expected,
    since: DateTime<Utc>,
) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let due = match (&expected.cron, expected.every_seconds) {
        (Some(cron), _) => Recurrence::parse(cron, expected.time_zone.as_deref().unwrap_or("UTC"))
            .ok()?
            .next_after(since)?,
        (None, Some(every)) => since + Duration::seconds(i64::try_from(every).ok()?),
        (None, None) => return None,
    };
    let grace = Duration::seconds(i64::try_from(expected.grace_seconds).ok()?);
    Some((due, due + grace))
}

/// Since when a resource's next backup is awaited: its last backup, or the last change
/// of its settings (an expectation set today does not count yesterday as missed).
pub fn awaited_since(resource: &ResourceState) -> DateTime<Utc> {
    resource
        .last_backup_at
        .map_or(resource.updated_at, |at| at.max(resource.updated_at))
}

/// Why an upload is turned away, in the order Dome checks: an unknown resource, then the
/// key, then an inactive resource, then the address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Turned {
    /// 404.
    Unknown,
    /// 401: no key, or not one of the service's.
    BadKey,
    /// 400.
    Inactive,
    /// 403: not from an allowed address.
    Blocked(Option<IpAddr>),
}

/// Whether an upload to `resource` of `service` gets in: with the key presented (its
/// SHA-256, [`key_hash`]) and from `client`. `Ok` names the key that opened it, if one
/// was needed.
pub fn admit(
    service: &ServiceState,
    resource: &ResourceState,
    key_hash: Option<&str>,
    client: Option<IpAddr>,
) -> Result<Option<Uuid>, Turned> {
    if service.deleted || resource.deleted || resource.service_id != service.service_id {
        return Err(Turned::Unknown);
    }
    let key = if service.settings.auth_enabled {
        let key = key_hash.and_then(|hash| service.key_with_hash(hash));
        Some(key.ok_or(Turned::BadKey)?.key_id)
    } else {
        None
    };
    if !resource.settings.active {
        return Err(Turned::Inactive);
    }
    if service.settings.allowlist_enabled {
        let allowed = client.is_some_and(|ip| {
            service
                .settings
                .allowlist
                .iter()
                .any(|range| range.contains(ip))
        });
        if !allowed {
            return Err(Turned::Blocked(client));
        }
    }
    Ok(key)
}

/// The key in an `Authorization` header: `<scheme> <key>` (any scheme), Dome's
/// `Bearer-<key>`, or the key alone.
pub fn presented_key(header: &str) -> Option<&str> {
    let header = header.trim_start();
    let key = match header.split_once(char::is_whitespace) {
        Some((_, key)) => key.trim(),
        None => match header.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("bearer-") => {
                header.get(7..).unwrap_or_default()
            }
            _ => header,
        },
    };
    (!key.is_empty()).then_some(key)
}

/// Whether a key's use at `now` is worth recording (its last use is not recent).
pub fn record_key_use(service: &ServiceState, key_id: Uuid, now: DateTime<Utc>) -> bool {
    service
        .keys
        .iter()
        .find(|k| k.key_id == key_id)
        .is_some_and(|k| k.last_used.is_none_or(|at| now - at >= KEY_USE_EVERY))
}

/// Which stored file a new backup of some content uses: the one the service keeps of it
/// already, or the upload's own (`uploaded`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// Kept already: the upload's own copy is not needed.
    Shared(String),
    /// New: the upload's copy is kept.
    Own(String),
}

pub fn content(blob: &BlobState, uploaded: &str) -> Content {
    match &blob.blob {
        Some(kept) => Content::Shared(kept.clone()),
        None => Content::Own(uploaded.to_owned()),
    }
}

/// The backups `retention` no longer keeps at `now`, oldest first. The newest backup is
/// always kept. Counts keep, like restic's and borg's, the newest `last` backups and the
/// newest backup of each of the last `daily` days, `weekly` ISO weeks and `monthly` months
/// that have one (in UTC); they do not expire with time, only as backups arrive.
pub fn expired(backups: &[Backup], retention: &Retention, now: DateTime<Utc>) -> Vec<Uuid> {
    let Some((newest, older)) = backups.split_last() else {
        return Vec::new();
    };
    match retention {
        Retention::Days { days } => {
            let cutoff = now - Duration::days(i64::from(*days));
            older
                .iter()
                .filter(|b| b.created_at < cutoff)
                .map(|b| b.stored.backup_id)
                .collect()
        }
        Retention::Counts {
            last,
            daily,
            weekly,
            monthly,
        } => {
            use chrono::Datelike;
            let mut kept = std::collections::HashSet::from([newest.stored.backup_id]);
            let newest_first: Vec<&Backup> = backups.iter().rev().collect();
            for b in newest_first.iter().take(last.unwrap_or(0) as usize) {
                kept.insert(b.stored.backup_id);
            }
            let mut keep_per = |n: Option<u32>, period: &dyn Fn(&Backup) -> (i32, u32)| {
                let mut seen = Vec::new();
                for b in &newest_first {
                    let key = period(b);
                    if seen.contains(&key) {
                        continue;
                    }
                    if seen.len() >= n.unwrap_or(0) as usize {
                        break;
                    }
                    seen.push(key);
                    kept.insert(b.stored.backup_id);
                }
            };
            keep_per(*daily, &|b| (b.created_at.year(), b.created_at.ordinal()));
            keep_per(*weekly, &|b| {
                let week = b.created_at.iso_week();
                (week.year(), week.week())
            });
            keep_per(*monthly, &|b| (b.created_at.year(), b.created_at.month()));
            older
                .iter()
                .filter(|b| !kept.contains(&b.stored.backup_id))
                .map(|b| b.stored.backup_id)
                .collect()
        }
    }
}

/// When the retention should look at these backups again: when the oldest one it keeps
/// (but the newest) passes its age; never for counts (only a new backup changes them).
pub fn next_expiry(backups: &[Backup], retention: &Retention) -> Option<DateTime<Utc>> {
    let Retention::Days { days } = retention else {
        return None;
    };
    let (_, older) = backups.split_last()?;
    older
        .iter()
        .map(|b| b.created_at + Duration::days(i64::from(*days)))
        .min()
}

/// How much before the time it stands for a due item may come: stores keep due times to
/// the millisecond (SQLite) or microsecond (Postgres), rounded down, while the times these
/// rules compare carry nanoseconds. A check within this of its time counts as due.
pub const EARLY: Duration = Duration::milliseconds(1);

/// Notices of refused uploads come at most this often per resource and reason.
pub const NOTICE_EVERY: Duration = Duration::hours(1);

/// Whether `count` more refusals for `reason` at `now` are told to the owner, and, if so,
/// how many the notice counts (those recorded since the last notice, and these).
pub fn refusal_notice(
    service: &ServiceState,
    resource: &ResourceState,
    reason: &str,
    count: u32,
    now: DateTime<Utc>,
) -> Option<u32> {
    if !service
        .settings
        .notifications
        .on
        .iter()
        .any(|on| on == reason)
    {
        return None;
    }
    let refusals = resource.refusals.get(reason).cloned().unwrap_or_default();
    let due = refusals
        .last_notice
        .is_none_or(|at| now - at >= NOTICE_EVERY);
    due.then(|| refusals.since_notice.saturating_add(count))
}

/// Whether the owner is told of `what` (`backup_created`, …), and at which addresses.
pub fn recipients<'a>(service: &'a ServiceState, what: &str) -> &'a [String] {
    if service
        .settings
        .notifications
        .on
        .iter()
        .any(|on| on == what)
    {
        &service.settings.notifications.emails
    } else {
        &[]
    }
}

/// A format as given: 1 to 20 of `a-z 0-9 . + -`, lowercased, without a leading dot.
pub fn format(raw: &str) -> Option<String> {
    let format = raw.trim().trim_start_matches('.').to_ascii_lowercase();
    let ok = !format.is_empty()
        && format.len() <= MAX_FORMAT_CHARS
        && format
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
    ok.then_some(format)
}

/// A file's format when the uploader does not say: from its name's extension, else from
/// its first bytes, else `bin`.
pub fn infer_format(file_name: &str, head: &[u8]) -> String {
    let lower = file_name.to_ascii_lowercase();
    for double in ["tar.gz", "tar.bz2", "tar.xz", "tar.zst"] {
        if lower.ends_with(&format!(".{double}")) {
            return double.to_owned();
        }
    }
    if let Some((stem, extension)) = lower.rsplit_once('.')
        && !stem.is_empty()
        && let Some(format) = format(extension)
    {
        return format;
    }
    let magic: [(&[u8], &str); 9] = [
        (b"\x1f\x8b", "gz"),
        (b"PK\x03\x04", "zip"),
        (b"%PDF", "pdf"),
        (b"SQLite format 3\0", "sqlite"),
        (b"BZh", "bz2"),
        (b"\xfd7zXZ\0", "xz"),
        (b"\x28\xb5\x2f\xfd", "zst"),
        (b"\x89PNG", "png"),
        (b"PGDMP", "dump"),
    ];
    if let Some((_, format)) = magic.iter().find(|(m, _)| head.starts_with(m)) {
        return (*format).to_owned();
    }
    if head.len() > 257 && &head[257..262] == b"ustar" {
        return "tar".to_owned();
    }
    let text = head.trim_ascii_start();
    if text.starts_with(b"{") || text.starts_with(b"[") {
        return "json".to_owned();
    }
    if !head.is_empty() && std::str::from_utf8(head).is_ok() {
        return "txt".to_owned();
    }
    "bin".to_owned()
}

#[cfg(test)]
mod tests {
    use cairn_events::domain::backup::BackupStored;

    use super::super::state::{ApiKey, Backup};
    use super::*;

    fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default() + Duration::minutes(minutes)
    }

    fn service(auth: bool, allowlist: Option<&[&str]>) -> ServiceState {
        ServiceState {
            service_id: Uuid::from_u128(1),
            owner: Uuid::from_u128(9),
            settings: ServiceSettings {
                name: "bots".into(),
                description: String::new(),
                retention: Retention::default(),
                auth_enabled: auth,
                allowlist_enabled: allowlist.is_some(),
                allowlist: allowlist
                    .unwrap_or_default()
                    .iter()
                    .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
                    .collect(),
                max_backup_bytes: 1024,
                notifications: Notifications::default(),
            },
            webhook_secret: None,
            created_at: at(0),
            updated_at: at(0),
            keys: vec![ApiKey {
                key_id: Uuid::from_u128(5),
                name: "cron".into(),
                hash: "h-good".into(),
                created_at: at(0),
                last_used: Some(at(10)),
            }],
            resources: vec![Uuid::from_u128(2)],
            deleted: false,
            version: 3,
        }
    }

    fn resource(active: bool) -> ResourceState {
        ResourceState {
            resource_id: Uuid::from_u128(2),
            service_id: Uuid::from_u128(1),
            owner: Uuid::from_u128(9),
            settings: ResourceSettings {
                name: "db".into(),
                description: String::new(),
                active,
                expected: None,
            },
            created_at: at(0),
            updated_at: at(0),
            backups: Vec::<Backup>::new(),
            last_backup_at: None,
            refusals: Default::default(),
            missed: None,
            deleted: false,
            version: 1,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        s.parse().ok()
    }

    #[test]
    fn uploads_are_checked_in_domes_order() {
        let open = service(false, None);
        assert_eq!(admit(&open, &resource(true), None, None), Ok(None));

        // The key is asked for before the resource's state and the address.
        let locked = service(true, Some(&["10.0.0.0/8"]));
        let outside = ip("192.0.2.1");
        assert_eq!(
            admit(&locked, &resource(false), None, outside),
            Err(Turned::BadKey)
        );
        assert_eq!(
            admit(&locked, &resource(false), Some("h-bad"), outside),
            Err(Turned::BadKey)
        );
        assert_eq!(
            admit(&locked, &resource(false), Some("h-good"), outside),
            Err(Turned::Inactive)
        );
        assert_eq!(
            admit(&locked, &resource(true), Some("h-good"), outside),
            Err(Turned::Blocked(outside))
        );
        assert_eq!(
            admit(&locked, &resource(true), Some("h-good"), ip("10.9.8.7")),
            Ok(Some(Uuid::from_u128(5)))
        );
        assert_eq!(
            admit(&locked, &resource(true), Some("h-good"), None),
            Err(Turned::Blocked(None)),
            "no known address is not an allowed one"
        );

        let mut gone = resource(true);
        gone.deleted = true;
        assert_eq!(admit(&open, &gone, None, None), Err(Turned::Unknown));
        let mut closed = service(false, None);
        closed.deleted = true;
        assert_eq!(
            admit(&closed, &resource(true), None, None),
            Err(Turned::Unknown)
        );
    }

    #[test]
    fn keys_are_read_from_any_scheme() {
        assert_eq!(presented_key("Bearer abc"), Some("abc"));
        assert_eq!(presented_key("Token  abc "), Some("abc"));
        assert_eq!(presented_key("Bearer-abc"), Some("abc"));
        assert_eq!(presented_key("bearer-abc"), Some("abc"));
        assert_eq!(presented_key("abc"), Some("abc"));
        assert_eq!(presented_key("Bearer "), None);
        assert_eq!(presented_key(""), None);
        assert_eq!(presented_key("Bearer-"), None);
    }

    #[test]
    fn key_use_is_recorded_at_most_once_a_minute() {
        let service = service(true, None);
        let key = Uuid::from_u128(5);
        assert!(!record_key_use(
            &service,
            key,
            at(10) + Duration::seconds(59)
        ));
        assert!(record_key_use(&service, key, at(11)));
        assert!(!record_key_use(&service, Uuid::from_u128(6), at(11)));
    }

    #[test]
    fn identical_content_is_shared_until_discarded() {
        let mut blob = BlobState::default();
        assert_eq!(content(&blob, "mine"), Content::Own("mine".into()));
        blob.blob = Some("theirs".into());
        assert_eq!(content(&blob, "mine"), Content::Shared("theirs".into()));
        blob.blob = None;
        assert_eq!(content(&blob, "mine"), Content::Own("mine".into()));
    }

    #[test]
    fn retention_inputs() {
        let period = |p: &str| RetentionInput {
            period: Some(p.into()),
            ..RetentionInput::default()
        };
        assert_eq!(retention(&period("1w")), Ok(Retention::Days { days: 7 }));
        assert!(retention(&period("1y")).is_err());
        assert_eq!(
            retention(&RetentionInput::default()),
            Ok(Retention::Days { days: 30 })
        );
        let counts = RetentionInput {
            keep_daily: Some(7),
            keep_monthly: Some(12),
            ..RetentionInput::default()
        };
        assert_eq!(
            retention(&counts),
            Ok(Retention::Counts {
                last: None,
                daily: Some(7),
                weekly: None,
                monthly: Some(12)
            })
        );
        let both = RetentionInput {
            keep_last: Some(3),
            ..period("1w")
        };
        assert!(retention(&both).is_err());
        let zero = RetentionInput {
            keep_last: Some(0),
            ..RetentionInput::default()
        };
        assert!(retention(&zero).is_err());
    }

    #[test]
    fn settings_are_checked() {
        assert!(name("name", "  ").is_err());
        assert!(name("name", &"x".repeat(101)).is_err());
        assert_eq!(name("name", " bots "), Ok("bots".into()));
        assert!(allowlist(&["10.0.0.0/8".into(), "2001:db8::/32".into()]).is_ok());
        let refused = allowlist(&["10.0.0.0/40".into()]);
        assert_eq!(refused.map_err(|e| e.field), Err("ip_allowlist.ips"));
        assert_eq!(max_backup_bytes(None, 1 << 40), Ok(1 << 30));
        assert_eq!(max_backup_bytes(None, 1000), Ok(1000));
        assert!(max_backup_bytes(Some(0), 1000).is_err());
        assert!(max_backup_bytes(Some(1001), 1000).is_err());
        let bad = Notifications {
            on: vec!["everything".into()],
            ..Notifications::default()
        };
        assert!(notifications(&bad).is_err());
        let bad = Notifications {
            webhooks: vec!["ftp://x".into()],
            ..Notifications::default()
        };
        assert!(notifications(&bad).is_err());
    }

    #[test]
    fn formats_are_read_or_inferred() {
        assert_eq!(format(" JSON "), Some("json".into()));
        assert_eq!(format(".tar.gz"), Some("tar.gz".into()));
        assert_eq!(format(""), None);
        assert_eq!(format("a/b"), None);
        assert_eq!(format(&"x".repeat(21)), None);
        assert_eq!(infer_format("dump.TAR.GZ", b""), "tar.gz");
        assert_eq!(infer_format("facts.json", b"{}"), "json");
        assert_eq!(infer_format("blob", b"\x1f\x8b\x08"), "gz");
        assert_eq!(infer_format("blob", b"SQLite format 3\0..."), "sqlite");
        assert_eq!(infer_format("blob", b"  [1, 2]"), "json");
        assert_eq!(infer_format("notes", b"hello"), "txt");
        assert_eq!(infer_format("", b"\xff\xfe\x00"), "bin");
        assert_eq!(infer_format(".hidden", b"hello"), "txt");
    }

    fn backups_at(days_ago: &[i64], now: DateTime<Utc>) -> Vec<Backup> {
        days_ago
            .iter()
            .enumerate()
            .map(|(i, ago)| Backup {
                stored: BackupStored {
                    backup_id: Uuid::from_u128(i as u128 + 1),
                    resource_id: Uuid::from_u128(2),
                    service_id: Uuid::from_u128(1),
                    format: "json".into(),
                    file_name: "a.json".into(),
                    bytes: 1,
                    sha256: "00".into(),
                    blob: "b".into(),
                    key_id: None,
                },
                created_at: now - Duration::days(*ago),
            })
            .collect()
    }

    fn ids(ns: &[u128]) -> Vec<Uuid> {
        ns.iter().map(|n| Uuid::from_u128(*n)).collect()
    }

    #[test]
    fn retention_by_age_keeps_the_newest_whatever_its_age() {
        let now = at(0);
        let week = Retention::Days { days: 7 };
        // Oldest first: 30, 10, 6 and 1 days old.
        let backups = backups_at(&[30, 10, 6, 1], now);
        assert_eq!(expired(&backups, &week, now), ids(&[1, 2]));
        assert_eq!(
            next_expiry(&backups, &week),
            Some(now - Duration::days(30) + Duration::days(7))
        );
        let old = backups_at(&[40, 20], now);
        assert_eq!(expired(&old, &week, now), ids(&[1]), "the newest stays");
        assert!(expired(&[], &week, now).is_empty());
    }

    #[test]
    fn retention_by_counts_keeps_one_per_period() {
        let now = at(0);
        // Two a day for the last 10 days, oldest first.
        let days: Vec<i64> = (0..10).rev().flat_map(|d| [d, d]).collect();
        let backups = backups_at(&days, now);
        let last_two = Retention::Counts {
            last: Some(2),
            daily: None,
            weekly: None,
            monthly: None,
        };
        assert_eq!(expired(&backups, &last_two, now).len(), 18);
        let three_days = Retention::Counts {
            last: None,
            daily: Some(3),
            weekly: None,
            monthly: None,
        };
        let gone = expired(&backups, &three_days, now);
        assert_eq!(
            gone.len(),
            17,
            "the newest of each of the last 3 days stays"
        );
        assert!(!gone.contains(&Uuid::from_u128(20)) && !gone.contains(&Uuid::from_u128(18)));
        assert!(
            gone.contains(&Uuid::from_u128(19)),
            "the older one of today goes"
        );
        assert_eq!(next_expiry(&backups, &three_days), None);
    }

    #[test]
    fn expected_backups() {
        let daily = expected(Expected {
            cron: Some("0 3 * * *".into()),
            time_zone: Some("europe/berlin".into()),
            every_seconds: None,
            grace_seconds: 3600,
        })
        .unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(daily.time_zone.as_deref(), Some("Europe/Berlin"));
        // 2027-01-15 08:00 UTC: the next 03:00 Berlin is 2027-01-16 02:00 UTC.
        let (due, missed) = next_expected(&daily, at(0)).unwrap_or_default();
        assert_eq!(due.to_rfc3339(), "2027-01-16T02:00:00+00:00");
        assert_eq!(missed - due, Duration::hours(1));
        let hourly = Expected {
            cron: None,
            time_zone: None,
            every_seconds: Some(3600),
            grace_seconds: 600,
        };
        assert_eq!(
            next_expected(
                &expected(hourly.clone()).unwrap_or_else(|e| panic!("{}", e.message)),
                at(0)
            ),
            Some((at(60), at(70)))
        );
        for bad in [
            Expected {
                every_seconds: Some(59),
                ..hourly.clone()
            },
            Expected {
                grace_seconds: 31 * 86_400,
                ..hourly.clone()
            },
            Expected {
                cron: Some("0 3 * * *".into()),
                ..hourly.clone()
            },
            Expected {
                every_seconds: None,
                ..hourly.clone()
            },
            Expected {
                cron: Some("nope".into()),
                every_seconds: None,
                ..hourly.clone()
            },
        ] {
            assert!(expected(bad).is_err());
        }
    }

    #[test]
    fn a_backup_is_what_it_says() {
        // The fold keeps stored backups in order; see state.rs.
        let stored = BackupStored {
            backup_id: Uuid::from_u128(7),
            resource_id: Uuid::from_u128(2),
            service_id: Uuid::from_u128(1),
            format: "json".into(),
            file_name: "a.json".into(),
            bytes: 2,
            sha256: "00".into(),
            blob: "b".into(),
            key_id: None,
        };
        let mut r = resource(true);
        r.backups.push(Backup {
            stored: stored.clone(),
            created_at: at(1),
        });
        assert_eq!(
            r.backup(Uuid::from_u128(7)).map(|b| &b.stored),
            Some(&stored)
        );
        assert!(r.backup(Uuid::from_u128(8)).is_none());
    }
}
