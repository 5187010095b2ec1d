//! The email worker: sends the outbox's emails, after the transaction that queued them.
//!
//! A message is claimed for a while, sent, then settled: sent, to be retried later (a
//! transient failure: exponential backoff with jitter), or dead after too many tries (a
//! permanent refusal gives up at once). Dead letters are listed and revived from the CLI.
//! SMTP gives no exactly-once: a crash between the server's `250` and the settlement
//! sends the message again when the claim runs out, with the same Message-ID, so the
//! window is one claim and the duplicate is recognisable. Sent messages are deleted once
//! their retention has passed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::domain::email::{Email, OUTBOX_KIND};
use cairn_events::{Outbox, Outcome, QueuedMessage};
use chrono::Utc;
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio_util::sync::CancellationToken;

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again (connection refused, `4xx`).
    #[error("{0}")]
    Transient(String),
    /// Trying again will not help (`5xx`, an address lettre cannot parse).
    #[error("{0}")]
    Permanent(String),
}

/// A way of delivering an email.
#[async_trait]
pub trait Mailer: Send + Sync + 'static {
    async fn send(&self, email: &Email) -> Result<(), SendError>;
}

/// Build the MIME message: plain text and HTML alternatives, the stable Message-ID.
fn message(from: &Mailbox, email: &Email) -> Result<Message, SendError> {
    let address = email
        .to
        .parse()
        .map_err(|e| SendError::Permanent(format!("recipient {:?}: {e}", email.to)))?;
    let to = Mailbox::new(email.to_name.clone(), address);
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(email.subject.clone())
        .message_id(Some(email.message_id.clone()))
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| SendError::Permanent(e.to_string()))
}

/// SMTP, from `CAIRN_SMTP_URL` (`smtp://host:25` plain, `smtp://…?tls=required` for
/// STARTTLS, `smtps://host:465` for TLS; `user:password@` for credentials).
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpMailer {
    pub fn new(url: &str, from: Mailbox) -> Result<Self, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| e.to_string())?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        Ok(SmtpMailer { transport, from })
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let message = message(&self.from, email)?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Err(e) => Err(SendError::Transient(e.to_string())),
        }
    }
}

/// The embedded default: each email as an `.eml` file in a directory (`data/outbox`), and
/// its links in the log, so a laptop needs no mail server.
pub struct FileMailer {
    dir: PathBuf,
    from: Mailbox,
}

impl FileMailer {
    pub fn new(dir: PathBuf, from: Mailbox) -> Self {
        FileMailer { dir, from }
    }
}

#[async_trait]
impl Mailer for FileMailer {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let bytes = message(&self.from, email)?.formatted();
        let name: String = email
            .message_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '@'))
            .collect();
        let io = |e: std::io::Error| SendError::Transient(format!("{}: {e}", self.dir.display()));
        tokio::fs::create_dir_all(&self.dir).await.map_err(io)?;
        // Written whole, then renamed: a reader never sees half an email.
        let partial = self.dir.join(format!(".{name}.partial"));
        tokio::fs::write(&partial, &bytes).await.map_err(io)?;
        let path = self.dir.join(format!("{name}.eml"));
        tokio::fs::rename(&partial, &path).await.map_err(io)?;
        let links: Vec<&str> = email
            .text
            .split_whitespace()
            .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
            .collect();
        tracing::info!(to = %email.to, subject = %email.subject, path = %path.display(), ?links, "email written");
        Ok(())
    }
}

/// How the worker paces itself.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Tries before a message is dead.
    pub max_attempts: i32,
    /// The first retry's delay; each later one doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// How long a claim hides a message being sent: the longest a crash delays a resend.
    pub hold: Duration,
    /// How long sent messages are kept before they are deleted.
    pub keep_sent: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 8,
            first_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(3600),
            hold: Duration::from_secs(120),
            keep_sent: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Policy {
    /// The delay before try `attempts + 1`: doubling, capped, with up to a quarter of
    /// jitter so that many failures do not retry in step.
    pub fn delay(&self, attempts: i32) -> Duration {
        let doubled = self
            .first_delay
            .saturating_mul(1_u32 << attempts.clamp(0, 20))
            .min(self.max_delay);
        let jitter = doubled.mul_f64(rand::random::<f64>() * 0.25);
        doubled.saturating_add(jitter)
    }
}

pub struct EmailWorker {
    outbox: Arc<dyn Outbox>,
    mailer: Arc<dyn Mailer>,
    pub policy: Policy,
}

/// The longest an idle worker sleeps before looking for retries that fell due.
const IDLE: Duration = Duration::from_secs(5);
/// Messages claimed (and sent concurrently) at once.
const BATCH: usize = 16;

impl EmailWorker {
    pub fn new(outbox: Arc<dyn Outbox>, mailer: Arc<dyn Mailer>) -> Self {
        EmailWorker {
            outbox,
            mailer,
            policy: Policy::default(),
        }
    }

    /// Send until `shutdown`; a send in progress is finished and settled first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut queued = self.outbox.outbox_changed();
        let mut last_purge = std::time::Instant::now();
        loop {
            queued.borrow_and_update();
            let claimed = self
                .outbox
                .claim_outbox(OUTBOX_KIND, Utc::now(), BATCH, self.policy.hold)
                .await;
            let wait = match claimed {
                Ok(messages) if !messages.is_empty() => {
                    // A claimed batch is sent at once, over the transport's pool.
                    let mut sending = tokio::task::JoinSet::new();
                    for message in messages {
                        let (outbox, mailer, policy) = (
                            self.outbox.clone(),
                            self.mailer.clone(),
                            self.policy.clone(),
                        );
                        sending.spawn(deliver(outbox, mailer, policy, message));
                    }
                    while let Some(done) = sending.join_next().await {
                        if let Err(panicked) = done {
                            // Its claim runs out and the message is tried again.
                            tracing::error!(%panicked, "sending an email panicked");
                        }
                    }
                    continue;
                }
                Ok(_) => IDLE,
                Err(error) => {
                    tracing::warn!(%error, "outbox unavailable; trying again");
                    Duration::from_secs(1)
                }
            };
            if last_purge.elapsed() > Duration::from_secs(3600) {
                last_purge = std::time::Instant::now();
                self.purge().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = queued.changed() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn purge(&self) {
        let before = Utc::now()
            - chrono::Duration::from_std(self.policy.keep_sent)
                .unwrap_or(chrono::Duration::days(7));
        match self.outbox.purge_sent(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(n, "sent emails past their retention deleted"),
            Err(error) => tracing::warn!(%error, "could not delete old sent emails"),
        }
    }
}

/// Send one claimed message and settle it.
async fn deliver(
    outbox: Arc<dyn Outbox>,
    mailer: Arc<dyn Mailer>,
    policy: Policy,
    queued: QueuedMessage,
) {
    let id = queued.message.id;
    let outcome = match serde_json::from_value::<Email>(queued.message.payload.clone()) {
        Err(e) => Outcome::Dead {
            error: format!("unreadable email: {e}"),
        },
        Ok(email) => match mailer.send(&email).await {
            Ok(()) => Outcome::Sent,
            Err(SendError::Permanent(error)) => Outcome::Dead { error },
            Err(SendError::Transient(error)) if queued.attempts + 1 >= policy.max_attempts => {
                Outcome::Dead { error }
            }
            Err(SendError::Transient(error)) => {
                let delay = policy.delay(queued.attempts);
                let at = Utc::now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(1));
                Outcome::Retry { error, at }
            }
        },
    };
    match &outcome {
        Outcome::Sent => tracing::debug!(%id, "email sent"),
        Outcome::Retry { error, at } => {
            tracing::warn!(%id, %error, %at, "email failed; will retry")
        }
        Outcome::Dead { error } => tracing::error!(%id, %error, "email is a dead letter"),
    }
    if let Err(error) = outbox.settle(id, outcome).await {
        // The claim runs out and the message is sent again, with the same Message-ID.
        tracing::warn!(%id, %error, "could not settle an email");
    }
}
