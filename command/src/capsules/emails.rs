//! The emails a capsule causes, rendered from the template files in `templates/email/`
//! (a subject, a plain-text and an HTML part each; user content is escaped in the HTML).
//!
//! Each email's outbox id and Message-ID are derived from the capsule and the kind of
//! email (a hash: the capsule id itself is the secret in the links), so the same cause
//! never queues twice and a resend after a crash carries the same Message-ID.

use cairn_events::OutboxMessage;
use cairn_events::domain::capsule::{self, CapsuleReleased, Schedule};
use cairn_events::domain::email::Email;
use chrono::{DateTime, Datelike, Utc};
use minijinja::{Environment, context};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{CapsuleError, CapsuleState};

/// The emails of a capsule's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailKind {
    /// To the sender: confirm the capsule.
    Confirm,
    /// To the sender: confirmed, with a cancel link.
    Active,
    /// To the sender: cancelled.
    Cancelled,
    /// To the sender: not confirmed in time.
    Expired,
    /// To the recipient: the capsule itself.
    Delivery,
}

impl EmailKind {
    pub fn name(self) -> &'static str {
        match self {
            EmailKind::Confirm => "confirm",
            EmailKind::Active => "active",
            EmailKind::Cancelled => "cancelled",
            EmailKind::Expired => "expired",
            EmailKind::Delivery => "delivery",
        }
    }

    const ALL: [EmailKind; 5] = [
        EmailKind::Confirm,
        EmailKind::Active,
        EmailKind::Cancelled,
        EmailKind::Expired,
        EmailKind::Delivery,
    ];
}

/// Where links point: the pages behind the links in emails (`CAIRN_PAGES_URL`, which may
/// be the Chronoria client's host) and Cairn's own address (`CAIRN_PUBLIC_URL`: file
/// downloads, Message-IDs).
#[derive(Clone, Debug)]
pub struct Links {
    /// Cairn's own address.
    pub public_url: String,
    /// Where `/confirm/{id}`, `/cancel/{id}` and `/download/{id}` are served.
    pub pages_url: String,
}

impl Links {
    /// Both on Cairn's own address.
    pub fn new(public_url: impl Into<String>) -> Self {
        let public_url = public_url.into();
        Links {
            pages_url: public_url.clone(),
            public_url,
        }
    }

    /// The link to a capsule's `page` (`confirm`, `cancel`, `download`).
    pub fn page(&self, page: &str, capsule_id: Uuid) -> String {
        format!(
            "{}/{page}/{capsule_id}",
            self.pages_url.trim_end_matches('/')
        )
    }

    /// The right-hand side of Message-IDs (see [`message_id_domain`]).
    pub fn message_id_domain(&self) -> &str {
        message_id_domain(&self.public_url)
    }
}

/// The right-hand side of Message-IDs: the host of the public URL, if it is a valid RFC
/// 5322 id-right (a dot-atom, or an address literal such as `[::1]`), else
/// `cairn.localhost`.
pub fn message_id_domain(public_url: &str) -> &str {
    let rest = public_url.split_once("://").map_or(public_url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match authority.strip_prefix('[') {
        // An IPv6 literal keeps its brackets: `[::1]` is an RFC 5322 no-fold-literal.
        Some(literal) => literal
            .split_once(']')
            .map_or("", |(inside, _)| &authority[..inside.len() + 2]),
        None => authority.split(':').next().unwrap_or_default(),
    };
    if is_id_right(host) {
        host
    } else {
        "cairn.localhost"
    }
}

/// Whether `s` is an RFC 5322 id-right: a dot-atom-text, or a no-fold-literal (`[` dtext
/// `]`).
fn is_id_right(s: &str) -> bool {
    const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    if let Some(inside) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inside
            .bytes()
            .all(|b| (33..=126).contains(&b) && !matches!(b, b'[' | b']' | b'\\'));
    }
    !s.is_empty()
        && s.split('.').all(|atom| {
            !atom.is_empty()
                && atom
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(c))
        })
}

/// The templates, parsed once.
pub(super) struct Emails {
    env: Environment<'static>,
    links: Links,
}

impl Emails {
    pub(super) fn new(links: Links) -> Result<Self, CapsuleError> {
        let mut env = Environment::new();
        // `.html` templates escape what they are given; the others do not.
        let add = |env: &mut Environment<'static>| -> Result<(), minijinja::Error> {
            email_templates!(env, "confirm", "active", "cancelled", "expired", "delivery");
            Ok(())
        };
        add(&mut env).map_err(|e| CapsuleError::Template(e.to_string()))?;
        debug_assert_eq!(EmailKind::ALL.len() * 3, env.templates().count());
        Ok(Emails { env, links })
    }

    pub(super) fn links(&self) -> &Links {
        &self.links
    }

    /// The outbox message sending `kind` for the capsule in `state`, as of `now`.
    pub(super) fn render(
        &self,
        state: &CapsuleState,
        kind: EmailKind,
        released: Option<&CapsuleReleased>,
        now: DateTime<Utc>,
    ) -> Result<OutboxMessage, CapsuleError> {
        let capsule = &state.submitted;
        let schedule = capsule.schedule.as_ref();
        // Each delivery of a recurring capsule is an email of its own.
        let occurrence = released
            .filter(|_| schedule.is_some())
            .and_then(|r| r.occurrence);
        let to_self = capsule.sender.email.key() == capsule.recipient.email.key();
        let attachment = capsule.attachment.as_ref();
        let values = context! {
            sender_name => capsule.sender.name.as_str(),
            sender_email => capsule.sender.email.as_str(),
            recipient_name => capsule.recipient.name.as_str(),
            recipient_email => capsule.recipient.email.as_str(),
            to_self,
            send_at => long_date(capsule.send_at),
            created_at => long_date(state.submitted_at),
            sent_at => long_date(now),
            waited => waited(state.submitted_at, now),
            text => capsule.text.as_str(),
            confirm_url => self.links.page("confirm", capsule.capsule_id),
            cancel_url => self.links.page("cancel", capsule.capsule_id),
            download_url => attachment.map(|_| self.links.page("download", capsule.capsule_id)),
            file_name => attachment.map(|a| a.file_name.as_str()),
            text_first => attachment.is_some_and(|a| a.text_location == cairn_events::domain::capsule::TextLocation::Before),
            recurring => schedule.is_some(),
            schedule => schedule.map(|s| format!("{} ({})", s.cron, s.time_zone)),
            series_end => schedule.and_then(series_end),
            occurrence,
            next_at => released.and_then(|r| r.next_at).map(long_date),
        };
        let render = |part: &str| {
            self.env
                .get_template(&format!("{}.{part}", kind.name()))
                .and_then(|t| t.render(&values))
                .map_err(|e| CapsuleError::Template(e.to_string()))
        };
        let id = match occurrence {
            Some(n) => outbox_id_of(&format!("{}:{}:{n}", capsule.capsule_id, kind.name())),
            None => outbox_id(capsule.capsule_id, kind),
        };
        let (to, to_name) = match kind {
            EmailKind::Delivery => (&capsule.recipient.email, &capsule.recipient.name),
            _ => (&capsule.sender.email, &capsule.sender.name),
        };
        let email = Email {
            to: to.as_str().to_owned(),
            to_name: Some(to_name.as_str().to_owned()),
            subject: render("subject.txt")?.trim().to_owned(),
            text: render("txt")?,
            html: render("html")?,
            // From the outbox id, not the capsule id: Message-IDs end up in mail logs and
            // replies, and the capsule id is what confirms.
            message_id: format!("<{}@{}>", id.simple(), self.links.message_id_domain()),
            record_in: Some(capsule::stream_id(capsule.capsule_id)),
            purpose: Some(kind.name().to_owned()),
            occurrence: released.map(|r| r.occurrence.unwrap_or(1)),
        };
        Ok(email.into_outbox(id))
    }
}

/// The outbox id of a capsule's email of one kind: the same every time it is asked for.
fn outbox_id(capsule_id: Uuid, kind: EmailKind) -> Uuid {
    outbox_id_of(&format!("{capsule_id}:{}", kind.name()))
}

/// An outbox id from its cause: the same cause, the same id.
pub(crate) fn outbox_id_of(cause: &str) -> Uuid {
    let digest = Sha256::digest(cause.as_bytes());
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// How a series ends, in words, if it does: `after 10 deliveries`, `on 31 March 2027 at
/// 23:59 UTC`.
fn series_end(schedule: &Schedule) -> Option<String> {
    match (schedule.count, schedule.until) {
        (Some(1), _) => Some("after 1 delivery".to_owned()),
        (Some(n), _) => Some(format!("after {n} deliveries")),
        (None, Some(until)) => Some(format!("on {}", long_date(until))),
        (None, None) => None,
    }
}

/// `2 December 2026 at 14:05 UTC`: how emails and pages write a time.
pub(super) fn long_date(t: DateTime<Utc>) -> String {
    t.format("%-d %B %Y at %H:%M UTC").to_string()
}

/// How long a capsule waited, in words: `2 years and 17 days`, `3 days`, `5 hours and 2
/// minutes`, `less than a minute`.
pub fn waited(from: DateTime<Utc>, to: DateTime<Utc>) -> String {
    let plural = |n: i64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let join = |parts: Vec<String>| match parts.as_slice() {
        [] => "less than a minute".to_owned(),
        [one] => one.clone(),
        [first, second] => format!("{first} and {second}"),
        _ => parts.join(", "),
    };
    if to <= from {
        return "less than a minute".to_owned();
    }
    // Whole years by the calendar (a year from 29 February ends on 28 February).
    let mut years = i64::from(to.year() - from.year());
    let anniversary = |years: i64| {
        let year = from.year() + i32::try_from(years).unwrap_or(0);
        from.with_year(year)
            .or_else(|| from.with_day(28).and_then(|d| d.with_year(year)))
    };
    while years > 0 && anniversary(years).is_none_or(|a| a > to) {
        years -= 1;
    }
    let start = anniversary(years).unwrap_or(from);
    let rest = to - start;
    let days = rest.num_days();
    if years > 0 || days > 0 {
        let mut parts = Vec::new();
        if years > 0 {
            parts.push(plural(years, "year"));
        }
        if days > 0 {
            parts.push(plural(days, "day"));
        }
        return join(parts);
    }
    let hours = rest.num_hours();
    let minutes = rest.num_minutes() - hours * 60;
    let mut parts = Vec::new();
    if hours > 0 {
        parts.push(plural(hours, "hour"));
    }
    if minutes > 0 {
        parts.push(plural(minutes, "minute"));
    }
    join(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, min, 0)
            .single()
            .unwrap_or_default()
    }

    #[test]
    fn waits_in_words() {
        assert_eq!(
            waited(at(2024, 1, 1, 0, 0), at(2026, 1, 18, 0, 0)),
            "2 years and 17 days"
        );
        assert_eq!(waited(at(2024, 1, 1, 0, 0), at(2025, 1, 1, 0, 0)), "1 year");
        assert_eq!(
            waited(at(2024, 2, 29, 0, 0), at(2025, 2, 28, 0, 0)),
            "1 year"
        );
        assert_eq!(waited(at(2024, 3, 1, 0, 0), at(2024, 3, 4, 5, 0)), "3 days");
        assert_eq!(
            waited(at(2024, 3, 1, 0, 0), at(2024, 3, 1, 5, 2)),
            "5 hours and 2 minutes"
        );
        assert_eq!(
            waited(at(2024, 3, 1, 0, 0), at(2024, 3, 1, 0, 1)),
            "1 minute"
        );
        assert_eq!(
            waited(at(2024, 3, 1, 0, 0), at(2024, 3, 1, 0, 0)),
            "less than a minute"
        );
        assert_eq!(
            waited(at(2024, 12, 31, 0, 0), at(2025, 1, 2, 0, 0)),
            "2 days"
        );
    }

    #[test]
    fn message_ids_have_a_valid_right_hand_side_whatever_the_public_url() {
        let domain = |url: &str| Links::new(url).message_id_domain().to_owned();
        assert_eq!(domain("http://[::1]:8080"), "[::1]");
        assert_eq!(domain("https://[2001:db8::7]/cairn"), "[2001:db8::7]");
        assert_eq!(domain("https://capsules.example"), "capsules.example");
        assert_eq!(domain("http://127.0.0.1:8080/"), "127.0.0.1");
        assert_eq!(
            domain("https://user:pw@cairn.example:8443"),
            "cairn.example"
        );
        for odd in [
            "",
            "http://",
            "http://[::1",
            "https://bücher.example",
            "http://a..b",
        ] {
            assert_eq!(domain(odd), "cairn.localhost", "{odd:?}");
        }
    }

    #[test]
    fn outbox_ids_are_stable_per_kind() {
        let capsule = Uuid::from_u128(7);
        assert_eq!(
            outbox_id(capsule, EmailKind::Confirm),
            outbox_id(capsule, EmailKind::Confirm)
        );
        assert_ne!(
            outbox_id(capsule, EmailKind::Confirm),
            outbox_id(capsule, EmailKind::Active)
        );
    }
}
