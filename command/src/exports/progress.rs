//! Live progress, straight from the export's stream: `GET /exports/{id}/events` as
//! Server-Sent Events (each event's id is the stream version it shows, so a client that
//! reconnects with `Last-Event-ID` goes on where it was), and a page with a progress bar
//! that follows them, or, without JavaScript, refreshes itself.
//!
//! One task per export in a process reads its stream when the log grows (the store's
//! hint) or a second has passed (a step recorded by another process), and hands each new
//! state to every watcher: a thousand watchers of one export cost one small read a step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use cairn_events::domain::export;
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::state::ExportState;
use super::{ExportError, Exports};

/// The longest an export's follower waits before reading again without a hint.
const POLL: Duration = Duration::from_secs(1);
/// The shortest time between two reads of an export's follower: watchers see at most
/// four updates a second.
const MIN_GAP: Duration = Duration::from_millis(250);

/// What each event carries.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Progress {
    pub status: &'static str,
    pub done: usize,
    pub total: usize,
    /// The step running or about to, while one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why the last try failed (retrying), or why the export failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&ExportState> for Progress {
    fn from(export: &ExportState) -> Self {
        Progress {
            status: export.status.as_str(),
            done: export.done.min(export.steps.len()),
            total: export.steps.len(),
            step: (!export.status.is_over())
                .then(|| export.current_step())
                .flatten(),
            error: export.failure.clone().or_else(|| {
                (!export.status.is_over())
                    .then(|| export.last_error.clone())
                    .flatten()
            }),
        }
    }
}

/// What watchers are shown of an export: its progress at a version of its stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Shown {
    version: i64,
    progress: Progress,
    /// Nothing more will come.
    over: bool,
}

impl From<&ExportState> for Shown {
    fn from(export: &ExportState) -> Self {
        Shown {
            version: export.version,
            progress: Progress::from(export),
            over: export.status.is_over() && !export.syncing(),
        }
    }
}

/// The exports being followed in this process, each by one task that reads its stream
/// and hands what changed to every watcher of it.
pub type Followers = Arc<Mutex<HashMap<Uuid, watch::Sender<Shown>>>>;

impl Exports {
    /// The progress events of `export`, after the one with id `last_seen` (none: the state
    /// now first), until it ends.
    pub fn progress(
        &self,
        export: ExportState,
        last_seen: Option<i64>,
    ) -> Sse<impl Stream<Item = Result<Event, std::convert::Infallible>> + use<>> {
        let seen = last_seen.unwrap_or(0).min(export.version);
        let now = Shown::from(&export);
        let updates = (!now.over).then(|| self.follow(export));
        let stream = futures_util::stream::unfold(
            (now, updates, seen),
            |(mut now, mut updates, mut seen)| async move {
                loop {
                    if let Some(newer) = updates
                        .as_mut()
                        .map(|u| u.borrow_and_update().clone())
                        .filter(|newer| newer.version > now.version)
                    {
                        now = newer;
                    }
                    if now.version > seen {
                        seen = now.version;
                        let data = serde_json::to_string(&now.progress).unwrap_or_default();
                        let event = Event::default()
                            .event("progress")
                            .id(seen.to_string())
                            .data(data);
                        return Some((Ok(event), (now, updates, seen)));
                    }
                    if now.over {
                        return None;
                    }
                    // No follower left (it ended with the export, which the state read
                    // above already shows).
                    updates.as_mut()?.changed().await.ok()?;
                }
            },
        );
        Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
    }

    /// A receiver of what `export` shows as it changes: from the task following it in
    /// this process, started by its first watcher.
    fn follow(&self, export: ExportState) -> watch::Receiver<Shown> {
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sender) = followers.get(&export.id()) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Shown::from(&export));
        followers.insert(export.id(), sender.clone());
        let exports = self.clone();
        tokio::spawn(async move { exports.publish(export, sender).await });
        receiver
    }

    /// Follow an export's stream for its watchers, until it ends or nobody watches: a
    /// read when the log grows (the store's hint) or a second has passed (a step recorded
    /// by another process), however many watch it.
    async fn publish(&self, mut export: ExportState, sender: watch::Sender<Shown>) {
        let mut hint = self.events.subscribe();
        let id = export.id();
        loop {
            if Shown::from(&export).over {
                self.unfollow(id);
                return;
            }
            let nobody = tokio::select! {
                () = sender.closed() => true,
                _ = tokio::time::timeout(POLL, hint.changed()) => false,
            };
            if nobody {
                // Leave under the lock, unless a watcher came meanwhile.
                let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
                if sender.receiver_count() == 0 {
                    followers.remove(&id);
                    return;
                }
                continue;
            }
            tokio::time::sleep(MIN_GAP).await;
            match self.read_more(&mut export).await {
                Ok(()) => {
                    if export.version > sender.borrow().version {
                        sender.send_replace(Shown::from(&export));
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "export progress could not be read");
                    tokio::time::sleep(POLL).await;
                }
            }
        }
    }

    fn unfollow(&self, id: Uuid) {
        let mut followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        followers.remove(&id);
    }

    /// Apply what was appended to `export`'s stream since it was read.
    pub(super) async fn read_more(&self, export: &mut ExportState) -> Result<(), ExportError> {
        let events = self
            .events
            .read_stream_after(&export::stream(export.id()), export.version)
            .await?;
        for event in &events {
            export.apply(event)?;
        }
        Ok(())
    }

    /// The progress page: a bar, the step, and, while the export runs, a refresh every
    /// two seconds for browsers without JavaScript; with it, the bar follows the events.
    pub fn page(&self, export: &ExportState, events_url: &str) -> String {
        let progress = Progress::from(export);
        let percent = (progress.done * 100)
            .checked_div(progress.total)
            .unwrap_or(0);
        let running = !export.status.is_over();
        let refresh = if running {
            r#"<noscript><meta http-equiv="refresh" content="2"></noscript>"#
        } else {
            ""
        };
        let step = progress.step.clone().unwrap_or_default();
        let error = progress.error.clone().unwrap_or_default();
        let download = match (&export.bundle, export.expired) {
            (Some(_), false) => format!(
                r#"<p id="download"><a href="{}">Download the bundle</a></p>"#,
                escape(&self.bundle_link(export.id(), self.now()))
            ),
            _ => String::new(),
        };
        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
{refresh}
<title>Export {id}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; }}
progress {{ width: 100%; height: 1.5rem; }}
.error {{ color: #a00; }}
</style>
</head>
<body>
<h1>Export</h1>
<p>Status: <strong id="status">{status}</strong></p>
<progress id="bar" max="{total}" value="{done}">{percent}%</progress>
<p><span id="count">{done}/{total}</span> steps <span id="step">{step}</span></p>
<p class="error" id="error">{error}</p>
{download}
<script>
(function () {{
  if (!window.EventSource || {over}) return;
  var source = new EventSource({events});
  source.addEventListener("progress", function (e) {{
    var p = JSON.parse(e.data);
    document.getElementById("status").textContent = p.status;
    var bar = document.getElementById("bar");
    bar.max = p.total; bar.value = p.done;
    document.getElementById("count").textContent = p.done + "/" + p.total;
    document.getElementById("step").textContent = p.step || "";
    document.getElementById("error").textContent = p.error || "";
    if (p.status === "completed" || p.status === "failed" || p.status === "cancelled") {{
      source.close();
      window.location.reload();
    }}
  }});
}})();
</script>
</body>
</html>
"#,
            id = export.id(),
            status = progress.status,
            total = progress.total,
            done = progress.done,
            step = escape(&step),
            error = escape(&error),
            over = !running,
            events = serde_json::to_string(events_url).unwrap_or_default(),
        )
    }
}

/// Text safe inside HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The id of the last event a reconnecting client saw.
pub fn last_event_id(headers: &axum::http::HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether `id` is an export id at all.
pub fn parse_id(raw: &str) -> Option<Uuid> {
    Uuid::parse_str(raw).ok()
}
