//! A git destination: Markdown a person can browse (a file per day of messages, a file
//! per backup service, the capsules), committed and pushed one commit per step.
//!
//! The `git` command on the host does the work: it speaks every transport and credential
//! setup a user's remote may need, costs nothing to build, and its behaviour is the one
//! users know. The working copy under the data directory is only a cache: before each
//! step it is set to the remote branch as it is, then the step's files are written whole
//! from the events. So a step run again after a crash (committed and perhaps pushed, not
//! yet recorded) changes nothing and makes no second commit. Commits to one destination
//! (URL and branch) never run at once: a lock in this process and a lease across
//! processes are held for the step.
//!
//! A token reaches git only in its environment, as an `http.extraHeader`, never on a
//! command line, in the working copy's config, in the event log or in a log line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use cairn_events::domain::export::{Destination, Part, Step};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use tokio::process::Command;

use super::content::{MessageRecord, ServiceRecords};
use super::state::ExportState;
use super::{ExportError, Exports};

/// The longest one git command may take (a large first push).
const GIT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One destination's working copy, its remote, and how to reach it.
pub struct Repo {
    dir: PathBuf,
    url: String,
    branch: String,
    token: Option<String>,
    author: String,
}

/// Locks of destinations being written in this process, by their key.
pub type Locks = Arc<Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// A destination's key: its URL and branch, hashed (names its working copy and lease).
fn key_of(url: &str, branch: &str) -> String {
    let hash = Sha256::digest(format!("{url}\n{branch}").as_bytes());
    crate::blobs::hex(&hash[..12])
}

impl Repo {
    /// Run `git args…` in the working copy; its standard output.
    async fn git(&self, args: &[&str]) -> Result<String, ExportError> {
        let mut command = Command::new("git");
        command
            .args(args)
            .current_dir(&self.dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("GIT_AUTHOR_NAME", "Cairn")
            .env("GIT_AUTHOR_EMAIL", &self.author)
            .env("GIT_COMMITTER_NAME", "Cairn")
            .env("GIT_COMMITTER_EMAIL", &self.author)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        if let Some(token) = &self.token {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
            command
                .env("GIT_CONFIG_COUNT", "1")
                .env("GIT_CONFIG_KEY_0", "http.extraHeader")
                .env(
                    "GIT_CONFIG_VALUE_0",
                    format!("Authorization: Basic {basic}"),
                );
        }
        let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
            .await
            .map_err(|_| ExportError::Destination(format!("git {} took too long", args[0])))?
            .map_err(|e| ExportError::Destination(format!("git could not be run: {e}")))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .to_owned();
            Err(ExportError::Destination(format!("git {}: {said}", args[0])))
        }
    }

    /// Set the working copy to the remote branch as it is (empty if the branch is new).
    /// The working copy is only a cache: one left broken (a process killed in the middle
    /// of a git command leaves its lock behind) is made anew.
    async fn sync(&self) -> Result<(), ExportError> {
        if self.try_sync().await.is_ok() {
            return Ok(());
        }
        if self.dir.exists() {
            tokio::fs::remove_dir_all(&self.dir)
                .await
                .map_err(|e| ExportError::Destination(format!("the working copy: {e}")))?;
        }
        self.try_sync().await
    }

    async fn try_sync(&self) -> Result<(), ExportError> {
        let fresh = !self.dir.join(".git").exists();
        if fresh {
            self.init().await?;
        }
        self.git(&["remote", "set-url", "origin", &self.url])
            .await?;
        let remote = format!("refs/heads/{}", self.branch);
        let listed = self.git(&["ls-remote", "origin", &remote]).await?;
        if listed.is_empty() {
            // A new branch: start it with no history.
            if !fresh {
                tokio::fs::remove_dir_all(&self.dir)
                    .await
                    .map_err(|e| ExportError::Destination(format!("the working copy: {e}")))?;
                self.init().await?;
            }
            return Ok(());
        }
        self.git(&["fetch", "-q", "--depth", "1", "origin", &remote])
            .await?;
        self.git(&["checkout", "-q", "-B", "cairn", "FETCH_HEAD"])
            .await?;
        self.git(&["reset", "-q", "--hard", "FETCH_HEAD"]).await?;
        self.git(&["clean", "-qfdx"]).await?;
        Ok(())
    }

    /// A new, empty working copy.
    async fn init(&self) -> Result<(), ExportError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| ExportError::Destination(format!("the working copy: {e}")))?;
        self.git(&["init", "-q"]).await?;
        self.git(&["symbolic-ref", "HEAD", "refs/heads/cairn"])
            .await?;
        self.git(&["remote", "add", "origin", &self.url]).await?;
        Ok(())
    }

    /// Write a file of the working copy (its folders made as needed).
    async fn write(&self, path: &str, content: &[u8]) -> Result<(), ExportError> {
        let full = self.dir.join(path);
        if let Some(parent) = full.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ExportError::Destination(format!("writing {path}: {e}")))?;
        }
        tokio::fs::write(&full, content)
            .await
            .map_err(|e| ExportError::Destination(format!("writing {path}: {e}")))
    }

    /// Commit what changed and push it; the commit, or `None` if nothing changed.
    async fn commit_and_push(&self, message: &str) -> Result<Option<String>, ExportError> {
        self.git(&["add", "-A"]).await?;
        if self.git(&["diff", "--cached", "--quiet"]).await.is_ok() {
            return Ok(None);
        }
        self.git(&["commit", "-q", "--no-verify", "-m", message])
            .await?;
        let commit = self.git(&["rev-parse", "HEAD"]).await?;
        self.git(&[
            "push",
            "-q",
            "origin",
            &format!("HEAD:refs/heads/{}", self.branch),
        ])
        .await?;
        Ok(Some(commit))
    }
}

/// A file written into the working copy, for the manifest.
fn part(path: &str, content: &[u8], records: u64) -> Part {
    Part {
        path: path.to_owned(),
        blob: String::new(),
        bytes: content.len() as u64,
        stored_bytes: content.len() as u64,
        deflated: false,
        crc32: crc32fast::hash(content),
        sha256: crate::blobs::hex(&Sha256::digest(content)),
        records,
    }
}

impl Exports {
    /// The working copy and remote of `export`'s git destination.
    fn repo(&self, export: &ExportState) -> Result<Repo, ExportError> {
        let Destination::Git { url, branch, token } = &export.request.destination else {
            return Err(ExportError::Other("not a git destination".into()));
        };
        let token = match token {
            Some(sealed) => Some(self.open(export.id(), sealed).ok_or_else(|| {
                ExportError::Destination(
                    "the destination's token cannot be opened with this server's key".into(),
                )
            })?),
            None => None,
        };
        Ok(Repo {
            dir: self.git_dir.join(key_of(url, branch)),
            url: url.strip_prefix("file://").unwrap_or(url).to_owned(),
            branch: branch.clone(),
            token,
            author: format!("cairn@{}", self.domain),
        })
    }

    /// Hold `export`'s destination for a step: `None` if another process holds it.
    async fn hold(
        &self,
        export: &ExportState,
    ) -> Result<
        Option<(
            tokio::sync::OwnedMutexGuard<()>,
            Box<dyn cairn_events::Lease>,
        )>,
        ExportError,
    > {
        let Destination::Git { url, branch, .. } = &export.request.destination else {
            return Err(ExportError::Other("not a git destination".into()));
        };
        let key = key_of(url, branch);
        let lock = {
            let mut locks = self.git_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(key.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        match self.events.try_lease(&format!("export-git:{key}")).await? {
            Some(lease) => Ok(Some((guard, lease))),
            None => Ok(None),
        }
    }

    /// Write step `index` to the git destination and push it; the files it wrote and the
    /// commit (none if the step changed nothing). `Ok(None)`: the destination is busy.
    pub(super) async fn git_step(
        &self,
        export: &ExportState,
        index: usize,
        step: &Step,
    ) -> Result<Option<(Vec<Part>, Option<String>)>, ExportError> {
        let Some(_held) = self.hold(export).await? else {
            return Ok(None);
        };
        let repo = self.repo(export)?;
        repo.sync().await?;
        let user = export.owner();
        let mut parts = Vec::new();
        match step {
            Step::Messages { days } => {
                for day in days {
                    parts.push(
                        self.write_day(&repo, user, day.day, day.first, day.last)
                            .await?,
                    );
                }
            }
            Step::Backups => {
                for service in self.services(user).await? {
                    let path = format!("backups/{}.md", slug(&service.name, service.id));
                    let text = service_markdown(&service);
                    repo.write(&path, text.as_bytes()).await?;
                    let count = service.resources.iter().map(|(_, b)| b.len() as u64).sum();
                    parts.push(part(&path, text.as_bytes(), count));
                }
            }
            Step::Files { service_id, .. } => {
                for service in self.services(user).await? {
                    if service.id != *service_id {
                        continue;
                    }
                    for file in &service.files {
                        let path = format!("backups/{}", file.path());
                        let Some(mut out) = self.file_in(&repo, &path).await? else {
                            continue;
                        };
                        if self.blobs.copy_to(&file.blob, &mut out).await?.is_some() {
                            parts.push(Part {
                                path,
                                blob: String::new(),
                                bytes: file.bytes,
                                stored_bytes: file.bytes,
                                deflated: false,
                                crc32: 0,
                                sha256: file.sha256.clone(),
                                records: 1,
                            });
                        }
                    }
                }
            }
            Step::Capsules => {
                let capsules = self.capsules(user, export.up_to).await?;
                let mut text =
                    String::from("# Capsules\n\nCapsules submitted with this account's token.\n");
                for capsule in &capsules {
                    let value = serde_json::to_value(capsule).unwrap_or_default();
                    let _ = write!(
                        text,
                        "\n## {}\n\n- Status: {}\n- From {} to {}\n- Send at: {}\n- Submitted: {}\n- Deliveries: {}\n",
                        value["id"].as_str().unwrap_or_default(),
                        value["status"].as_str().unwrap_or_default(),
                        value["sender"]["name"].as_str().unwrap_or_default(),
                        value["recipient"]["name"].as_str().unwrap_or_default(),
                        value["send_at"].as_str().unwrap_or_default(),
                        value["submitted_at"].as_str().unwrap_or_default(),
                        value["deliveries"],
                    );
                }
                repo.write("capsules.md", text.as_bytes()).await?;
                parts.push(part("capsules.md", text.as_bytes(), capsules.len() as u64));
            }
            Step::Finish => {
                let mut all = export.parts.clone();
                let readme = readme(export);
                all.push(part("README.md", readme.as_bytes(), 0));
                repo.write("README.md", readme.as_bytes()).await?;
                let manifest = serde_json::to_vec_pretty(&super::manifest(export, &all))
                    .map_err(|e| ExportError::Other(e.to_string()))?;
                repo.write("manifest.json", &manifest).await?;
            }
        }
        let total = export.steps.len();
        let message = format!(
            "Cairn export: {} (step {} of {total})\n\nExport {}",
            step.label(),
            index + 1,
            export.id()
        );
        let commit = repo.commit_and_push(&message).await?;
        Ok(Some((parts, commit)))
    }

    /// A file of the working copy opened for writing; `None` if its path is not one.
    async fn file_in(
        &self,
        repo: &Repo,
        path: &str,
    ) -> Result<Option<tokio::fs::File>, ExportError> {
        let full = repo.dir.join(path);
        let Some(parent) = full.parent() else {
            return Ok(None);
        };
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| ExportError::Destination(format!("writing {path}: {e}")))?;
        tokio::fs::File::create(&full)
            .await
            .map(Some)
            .map_err(|e| ExportError::Destination(format!("writing {path}: {e}")))
    }

    /// Write a day's messages as Markdown, oldest first, into the working copy page by
    /// page (a day of any size is never whole in memory); its part for the manifest.
    async fn write_day(
        &self,
        repo: &Repo,
        user: uuid::Uuid,
        day: chrono::NaiveDate,
        first: cairn_events::Position,
        last: cairn_events::Position,
    ) -> Result<Part, ExportError> {
        use tokio::io::AsyncWriteExt;
        let path = format!("messages/{}.md", day.format("%Y/%m/%d"));
        let failed = |e: std::io::Error| ExportError::Destination(format!("writing {path}: {e}"));
        let Some(file) = self.file_in(repo, &path).await? else {
            return Err(ExportError::Other(format!("{path} is not a file's path")));
        };
        let mut out = tokio::io::BufWriter::new(file);
        let (mut sha256, mut crc32) = (Sha256::new(), crc32fast::Hasher::new());
        let (mut bytes, mut records) = (0_u64, 0_u64);
        let mut text = format!("# Messages of {day}\n");
        let mut pages = self.messages(user, &[day], first, last);
        loop {
            let page = pages.next().await?;
            for (_, record) in page.iter().flatten() {
                message_markdown(&mut text, record);
                records += 1;
            }
            sha256.update(text.as_bytes());
            crc32.update(text.as_bytes());
            bytes += text.len() as u64;
            out.write_all(text.as_bytes()).await.map_err(failed)?;
            text.clear();
            if page.is_none() {
                break;
            }
        }
        out.flush().await.map_err(failed)?;
        Ok(Part {
            path: path.clone(),
            blob: String::new(),
            bytes,
            stored_bytes: bytes,
            deflated: false,
            crc32: crc32.finalize(),
            sha256: crate::blobs::hex(&sha256.finalize()),
            records,
        })
    }

    /// Keep a git destination in sync: write the days that have new messages since it was
    /// last written, in one commit. `Ok(None)`: the destination is busy.
    pub(super) async fn git_sync(
        &self,
        export: &ExportState,
        up_to: cairn_events::Position,
    ) -> Result<Option<Synced>, ExportError> {
        let Some(_held) = self.hold(export).await? else {
            return Ok(None);
        };
        let user = export.owner();
        let actor = user.to_string();
        let new = self
            .events
            .read_by_actor(
                &actor,
                cairn_events::domain::message::CATEGORY,
                export.synced_up_to,
                up_to,
                SYNC_BATCH,
            )
            .await?;
        // A batch that fills up stops at its last message; the next sync goes on from it.
        let up_to = match new.last() {
            Some(last) if new.len() == SYNC_BATCH => last.position,
            _ => up_to,
        };
        let mut days: Vec<chrono::NaiveDate> =
            new.iter().map(|e| e.occurred_at.date_naive()).collect();
        days.sort_unstable();
        days.dedup();
        if days.is_empty() {
            return Ok(Some(Synced {
                messages: 0,
                up_to,
                commit: None,
            }));
        }
        let repo = self.repo(export)?;
        repo.sync().await?;
        let spans = cairn_events::actor_days(
            &*self.events,
            &actor,
            cairn_events::domain::message::CATEGORY,
            up_to,
        )
        .await?;
        for span in spans.iter().filter(|s| days.contains(&s.day)) {
            self.write_day(&repo, user, span.day, span.first, span.last)
                .await?;
        }
        let message = format!(
            "Cairn: {} new message{}\n\nExport {}",
            new.len(),
            if new.len() == 1 { "" } else { "s" },
            export.id()
        );
        let commit = repo.commit_and_push(&message).await?;
        Ok(Some(Synced {
            messages: new.len() as u64,
            up_to,
            commit,
        }))
    }
}

/// The most messages one sync writes (read whole, to find their days).
const SYNC_BATCH: usize = 10_000;

/// What a sync of a destination kept in sync wrote.
pub(super) struct Synced {
    pub messages: u64,
    /// The position the destination now holds every message up to.
    pub up_to: cairn_events::Position,
    pub commit: Option<String>,
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A file name for a service: its name, kept to safe characters, and its id's start.
fn slug(name: &str, id: uuid::Uuid) -> String {
    let mut slug: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    slug.truncate(60);
    let id = id.simple().to_string();
    format!("{slug}-{}", &id[..8])
}

fn message_markdown(text: &mut String, m: &MessageRecord) {
    let time = m.created_at.get(11..19).unwrap_or_default();
    let _ = write!(text, "\n## {time} UTC · `{}`\n\n", m.id);
    for line in m.text.lines() {
        let _ = writeln!(text, "{line}");
    }
    if !m.hashtags.is_empty() {
        let tags: Vec<String> = m.hashtags.iter().map(|t| format!("#{t}")).collect();
        let _ = writeln!(text, "\nTags: {}", tags.join(" "));
    }
}

fn service_markdown(service: &ServiceRecords) -> String {
    let s = serde_json::to_value(&service.service).unwrap_or_default();
    let mut text = format!(
        "# {}\n\n{}\n\n- Id: `{}`\n- Retention: {}\n- Largest backup: {} bytes\n- Created: {}\n",
        service.name,
        s["description"].as_str().unwrap_or_default(),
        service.id,
        s["retention"].as_str().unwrap_or_default(),
        s["max_backup_bytes"],
        s["created_at"].as_str().unwrap_or_default(),
    );
    for (resource, backups) in &service.resources {
        let r = serde_json::to_value(resource).unwrap_or_default();
        let _ = write!(
            text,
            "\n## {}\n\n{}\n\n- Upload URL: {}\n- Backups kept: {}\n\n| Created | File | Format | Bytes | SHA-256 |\n|---|---|---|---|---|\n",
            r["name"].as_str().unwrap_or_default(),
            r["description"].as_str().unwrap_or_default(),
            r["upload_url"].as_str().unwrap_or_default(),
            backups.len(),
        );
        for backup in backups {
            let b = serde_json::to_value(backup).unwrap_or_default();
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | `{}` |",
                b["created_at"].as_str().unwrap_or_default(),
                b["file_name"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('|', "\\|"),
                b["format"].as_str().unwrap_or_default(),
                b["bytes"],
                b["sha256"].as_str().unwrap_or_default(),
            );
        }
    }
    text
}

fn readme(export: &ExportState) -> String {
    format!(
        "# {}'s Cairn export\n\nWritten by Cairn (export `{}`, asked for {}).\n\n\
         - `messages/YYYY/MM/DD.md`: the messages of each day (UTC), oldest first\n\
         - `backups/<service>.md`: each backup service, its resources and the backups they keep\n\
         - `capsules.md`: the capsules submitted with this account's token\n\
         - `manifest.json`: what the export holds, with a SHA-256 per file\n",
        export.request.user_name,
        export.id(),
        stamp(export.requested_at),
    )
}

/// Where destinations' working copies are kept, by default.
pub fn default_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("exports").join("git")
}
