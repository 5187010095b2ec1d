//! The export rules, as pure functions of what was read and the time: what a request may
//! ask for, what an export's steps are, when it may start, what a failure comes to, and
//! whether it can be cancelled.

use cairn_events::DaySpan;
use cairn_events::domain::export::{MAX_BRANCH_BYTES, MAX_URL_BYTES, MessageDay, Step};
use chrono::{DateTime, Datelike, Utc};
use uuid::Uuid;

use super::state::{ExportState, Status};

/// Tries of one step before the export fails.
pub const MAX_ATTEMPTS: u32 = 5;
/// The wait after a step's first failure; it doubles with each further one.
pub const FIRST_RETRY: chrono::Duration = chrono::Duration::seconds(2);

/// A request's field that is not right.
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

/// Where a request asks the export to go, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Bundle,
    Git {
        url: String,
        branch: String,
        token: Option<String>,
    },
}

/// What `POST /exports` asked for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub target: Target,
    pub include_files: bool,
    pub keep_in_sync: bool,
}

/// Check a request: a git URL is `http(s)://…`, `file://…` or an absolute path; a branch a
/// name git takes; `keep_in_sync` only for git.
pub fn request(
    kind: &str,
    url: Option<String>,
    branch: Option<String>,
    token: Option<String>,
    include_files: bool,
    keep_in_sync: bool,
) -> Result<Request, Invalid> {
    let target = match kind {
        "bundle" => {
            if keep_in_sync {
                return Err(invalid(
                    "keep_in_sync",
                    "only a git destination can be kept in sync",
                ));
            }
            Target::Bundle
        }
        "git" => {
            let url = url.ok_or_else(|| invalid("destination.url", "url is required"))?;
            git_url(&url)?;
            let branch = branch.unwrap_or_else(|| "main".to_owned());
            git_branch(&branch)?;
            if let Some(token) = &token
                && (token.is_empty()
                    || token.len() > 1000
                    || token.chars().any(|c| c.is_control() || c == ' '))
            {
                return Err(invalid(
                    "destination.token",
                    "the token must be 1-1000 characters without spaces",
                ));
            }
            Target::Git { url, branch, token }
        }
        other => {
            return Err(invalid(
                "destination.kind",
                format!("the destination kind must be \"bundle\" or \"git\", not {other:?}"),
            ));
        }
    };
    Ok(Request {
        target,
        include_files,
        keep_in_sync,
    })
}

fn git_url(url: &str) -> Result<(), Invalid> {
    let bad = |why: &str| invalid("destination.url", why);
    if url.len() > MAX_URL_BYTES || url.chars().any(char::is_control) {
        return Err(bad("the url is too long or has control characters"));
    }
    if let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    {
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || host.contains('@') {
            return Err(bad(
                "an HTTP(S) url names a host and no credentials (give a token instead)",
            ));
        }
        return Ok(());
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.starts_with('/') && !path.split('/').any(|p| p == "..") {
        return Ok(());
    }
    Err(bad(
        "the url must be https://…, http://…, file://… or an absolute path",
    ))
}

/// A branch name as `git check-ref-format --branch` would take it, kept to the safe part.
fn git_branch(branch: &str) -> Result<(), Invalid> {
    let ok = !branch.is_empty()
        && branch.len() <= MAX_BRANCH_BYTES
        && !branch.starts_with(['-', '/', '.'])
        && !branch.ends_with(['/', '.'])
        && !branch.ends_with(".lock")
        && !branch.contains("..")
        && !branch.contains("//")
        && !branch.contains("@{")
        && branch
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "destination.branch",
            "the branch must be a git branch name: letters, digits, '-', '_', '.', '/'",
        ))
    }
}

/// A service as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceOutline {
    pub id: Uuid,
    pub name: String,
    /// Whether any of its resources keeps a backup.
    pub has_backups: bool,
}

/// The most messages one step writes, unless one day holds more.
pub const STEP_MESSAGES: u64 = 50_000;

/// An export's steps: the messages month by month (a month of more than
/// [`STEP_MESSAGES`] in several steps, of whole days), the backups, each service's files (when
/// asked for), the capsules, and the manifest last.
pub fn plan(days: &[DaySpan], services: &[ServiceOutline], include_files: bool) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut group: Vec<MessageDay> = Vec::new();
    for d in days {
        let day = MessageDay {
            day: d.day,
            first: d.first,
            last: d.last,
            count: d.count,
        };
        let held: u64 = group.iter().map(|g| g.count).sum();
        let same_month = group
            .first()
            .is_some_and(|g| (g.day.year(), g.day.month()) == (d.day.year(), d.day.month()));
        if !group.is_empty() && (!same_month || held + d.count > STEP_MESSAGES) {
            steps.push(Step::Messages {
                days: std::mem::take(&mut group),
            });
        }
        group.push(day);
    }
    if !group.is_empty() {
        steps.push(Step::Messages { days: group });
    }
    steps.push(Step::Backups);
    if include_files {
        steps.extend(
            services
                .iter()
                .filter(|s| s.has_backups)
                .map(|s| Step::Files {
                    service_id: s.id,
                    service: s.name.clone(),
                }),
        );
    }
    steps.push(Step::Capsules);
    steps.push(Step::Finish);
    steps
}

/// Whether a queued export may start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    Now,
    /// An earlier export of the user's has not ended.
    Wait,
    /// Not queued (started, or over): nothing to start.
    Nothing,
}

/// A user's exports run one at a time, in the order asked for: `export` starts once every
/// export queued before it (`earlier`) has ended.
pub fn start(export: &ExportState, earlier: &[ExportState]) -> Start {
    if export.status != Status::Queued {
        return Start::Nothing;
    }
    if earlier.iter().any(|e| !e.status.is_over()) {
        Start::Wait
    } else {
        Start::Now
    }
}

/// What a step's failure comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    Retry { attempt: u32, at: DateTime<Utc> },
    GiveUp { reason: String },
}

/// A step failed for the `attempts`-th time: tried again after a wait that doubles (2 s,
/// 4 s, 8 s, …), until [`MAX_ATTEMPTS`]; then the export fails, saying why.
pub fn failure(export: &ExportState, error: &str, now: DateTime<Utc>) -> Failure {
    let attempt = export.attempts + 1;
    if attempt >= MAX_ATTEMPTS {
        let step = export.current_step().unwrap_or_default();
        return Failure::GiveUp {
            reason: format!("{step}: {error} (tried {attempt} times)"),
        };
    }
    let wait = FIRST_RETRY * 2i32.pow(attempt.saturating_sub(1).min(16));
    Failure::Retry {
        attempt,
        at: now + wait,
    }
}

/// Why an export cannot be cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotCancellable {
    /// It ended (and is not kept in sync).
    Over(Status),
}

/// A queued or running export can be cancelled; a finished one kept in sync stops syncing.
pub fn cancel(export: &ExportState) -> Result<(), NotCancellable> {
    if export.status.is_over() && !export.syncing() {
        Err(NotCancellable::Over(export.status))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use cairn_events::domain::export::{Destination, ExportRequested};
    use chrono::NaiveDate;

    use super::*;

    fn export(status: Status) -> ExportState {
        let request = ExportRequested {
            export_id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            user_name: "ann".into(),
            destination: Destination::Bundle,
            include_files: false,
            keep_in_sync: false,
        };
        ExportState {
            status,
            steps: vec![Step::Backups, Step::Finish],
            ..ExportState::requested(request, Utc::now(), 1)
        }
    }

    #[test]
    fn requests_are_checked() {
        let git = |url: &str, branch: Option<&str>| {
            request(
                "git",
                Some(url.into()),
                branch.map(Into::into),
                None,
                false,
                true,
            )
        };
        assert!(git("https://git.example/me/notes.git", None).is_ok());
        assert!(git("/srv/git/notes.git", Some("cairn/export")).is_ok());
        assert!(git("file:///srv/git/notes.git", None).is_ok());
        assert_eq!(
            git("relative/path", None).unwrap_err().field,
            "destination.url"
        );
        assert!(git("https://user:pw@git.example/x", None).is_err());
        assert!(git("/srv/../etc", None).is_err());
        assert!(git("ssh://git.example/x", None).is_err());
        for branch in ["-x", "a..b", "a b", "x.lock", "", "a/", "@{x"] {
            assert_eq!(
                git("/srv/x", Some(branch)).unwrap_err().field,
                "destination.branch",
                "{branch:?}"
            );
        }
        assert_eq!(
            request("bundle", None, None, None, false, true)
                .unwrap_err()
                .field,
            "keep_in_sync"
        );
        assert_eq!(
            request("tape", None, None, None, false, false)
                .unwrap_err()
                .field,
            "destination.kind"
        );
        let r = request("git", Some("/srv/x".into()), None, None, true, false).unwrap();
        assert_eq!(
            r.target,
            Target::Git {
                url: "/srv/x".into(),
                branch: "main".into(),
                token: None
            }
        );
    }

    #[test]
    fn the_plan_is_days_then_backups_files_capsules_and_the_manifest() {
        let day = |m, d| DaySpan {
            day: NaiveDate::from_ymd_opt(2026, m, d).unwrap(),
            count: 2,
            first: 1,
            last: 9,
        };
        let services = [
            ServiceOutline {
                id: Uuid::nil(),
                name: "db".into(),
                has_backups: true,
            },
            ServiceOutline {
                id: Uuid::max(),
                name: "empty".into(),
                has_backups: false,
            },
        ];
        let labels = |steps: Vec<Step>| steps.iter().map(Step::label).collect::<Vec<_>>();
        assert_eq!(
            labels(plan(&[day(11, 24), day(11, 25)], &services, true)),
            [
                "messages 2026-11-24 – 2026-11-25",
                "backups",
                "files of db",
                "capsules",
                "manifest"
            ]
        );
        assert_eq!(
            labels(plan(&[], &services, false)),
            ["backups", "capsules", "manifest"]
        );
        // A step a month, of whole days: a full one is cut before the day that would
        // take it past the most a step writes; a day above that is a step of its own.
        let busy = |m, d, count| DaySpan { count, ..day(m, d) };
        let half = STEP_MESSAGES / 2;
        assert_eq!(
            labels(plan(
                &[
                    day(10, 30),
                    busy(11, 1, half),
                    busy(11, 2, half),
                    busy(11, 3, 1),
                    busy(11, 4, STEP_MESSAGES * 3),
                    day(11, 5),
                    day(12, 1),
                ],
                &[],
                false
            ))[..5],
            [
                "messages 2026-10-30",
                "messages 2026-11-01 – 2026-11-02",
                "messages 2026-11-03",
                "messages 2026-11-04",
                "messages 2026-11-05",
            ]
        );
    }

    #[test]
    fn one_export_at_a_time_in_order() {
        let queued = export(Status::Queued);
        assert_eq!(start(&queued, &[]), Start::Now);
        assert_eq!(start(&queued, &[export(Status::Running)]), Start::Wait);
        assert_eq!(start(&queued, &[export(Status::Queued)]), Start::Wait);
        assert_eq!(
            start(
                &queued,
                &[export(Status::Completed), export(Status::Failed)]
            ),
            Start::Now
        );
        assert_eq!(start(&export(Status::Running), &[]), Start::Nothing);
    }

    #[test]
    fn failures_back_off_then_give_up() {
        let now = Utc::now();
        let mut running = export(Status::Running);
        assert_eq!(
            failure(&running, "refused", now),
            Failure::Retry {
                attempt: 1,
                at: now + chrono::Duration::seconds(2)
            }
        );
        running.attempts = 3;
        assert_eq!(
            failure(&running, "refused", now),
            Failure::Retry {
                attempt: 4,
                at: now + chrono::Duration::seconds(16)
            }
        );
        running.attempts = MAX_ATTEMPTS - 1;
        assert_eq!(
            failure(&running, "refused", now),
            Failure::GiveUp {
                reason: "backups: refused (tried 5 times)".into()
            }
        );
    }

    #[test]
    fn what_can_be_cancelled() {
        assert!(cancel(&export(Status::Queued)).is_ok());
        assert!(cancel(&export(Status::Running)).is_ok());
        assert_eq!(
            cancel(&export(Status::Completed)),
            Err(NotCancellable::Over(Status::Completed))
        );
        let mut synced = export(Status::Completed);
        synced.request.keep_in_sync = true;
        synced.request.destination = Destination::Git {
            url: "/x".into(),
            branch: "main".into(),
            token: None,
        };
        assert!(cancel(&synced).is_ok());
    }
}
