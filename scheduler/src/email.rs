//! The email worker: sends the outbox's emails, after the transaction that queued them.
//!
//! A message is claimed for a few seconds (renewed while it is being sent, so a slow
//! server never gets it from two workers), sent, then settled: sent, to be retried later
//! (a transient failure: exponential backoff with jitter), or dead after too many tries (a
//! permanent refusal gives up at once). Dead letters are listed and revived from the CLI.
//! SMTP gives no exactly-once: a crash between the server's `250` and the settlement
//! sends the message again when another worker takes the claim over (at once on Postgres,
//! else when it runs out), with the same Message-ID, so the duplicate is recognisable.
//! Sent messages are deleted once their retention has passed (a maintenance job).
//!
//! An email that names a stream (a capsule's) has each sending recorded there as an
//! `email.sent` event, after the server's `250` and before the settlement, so a capsule's
//! history lists every email it caused with its Message-ID; a resend is recorded again.
//!
//! An idle worker sleeps until the next retry is due or a message is queued, looking at
//! the clock at least once a minute but asking the database nothing meanwhile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_events::domain::email::{Email, EmailSent, OUTBOX_KIND};
use cairn_events::{
    AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, QueuedMessage, StoreError,
};
use lettre::address::Envelope;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::outbox::Delivery;

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
///
/// The subject and the recipient's name hold what people typed (capsule names). Mail
/// clients decode RFC 2047 encoded words (`=?utf-8?q?…?=`) in headers, so such text,
/// written as it is, would be shown as whatever it encodes; text holding `=?` is written
/// wholly as encoded words instead ([`literal_header`]), whose decoded text clients show as
/// it is, so every client shows exactly what was typed.
fn message(from: &Mailbox, email: &Email) -> Result<Message, SendError> {
    let address: Address = email
        .to
        .parse()
        .map_err(|e| SendError::Permanent(format!("recipient {:?}: {e}", email.to)))?;
    let mut builder = Message::builder().from(from.clone());
    builder = match &email.to_name {
        Some(name) if name.contains("=?") => builder
            .header(LiteralTo {
                name: name.clone(),
                address: address.clone(),
            })
            .envelope(
                Envelope::new(Some(from.email.clone()), vec![address])
                    .map_err(|e| SendError::Permanent(e.to_string()))?,
            ),
        name => builder.to(Mailbox::new(name.clone(), address)),
    };
    builder = if email.subject.contains("=?") {
        builder.header(LiteralSubject(email.subject.clone()))
    } else {
        builder.subject(email.subject.clone())
    };
    builder
        .message_id(Some(email.message_id.clone()))
        .multipart(MultiPart::alternative_plain_html(
            email.text.clone(),
            email.html.clone(),
        ))
        .map_err(|e| SendError::Permanent(e.to_string()))
}

/// `text` as RFC 2047 encoded words (UTF-8, base64), folded: what a mail client decodes
/// back to exactly `text`, and shows without decoding again.
fn literal_header(text: &str) -> String {
    use base64::Engine as _;
    // 39 bytes make 52 base64 characters: each word, with `Subject: `, fits a 78-column line.
    const CHUNK: usize = 39;
    let mut words = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut end = rest.len().min(CHUNK);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        let encoded = base64::engine::general_purpose::STANDARD.encode(chunk);
        words.push(format!("=?utf-8?b?{encoded}?="));
        rest = tail;
    }
    words.join("\r\n ")
}

type HeaderError = Box<dyn std::error::Error + Send + Sync>;

/// A Subject written as encoded words ([`literal_header`]).
#[derive(Clone)]
struct LiteralSubject(String);

impl Header for LiteralSubject {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        Ok(LiteralSubject(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::dangerous_new_pre_encoded(
            Self::name(),
            self.0.clone(),
            literal_header(&self.0),
        )
    }
}

/// A To header whose display name is written as encoded words ([`literal_header`]).
#[derive(Clone)]
struct LiteralTo {
    name: String,
    address: Address,
}

impl Header for LiteralTo {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("To")
    }

    fn parse(s: &str) -> Result<Self, HeaderError> {
        let mailbox: Mailbox = s.parse()?;
        Ok(LiteralTo {
            name: mailbox.name.unwrap_or_default(),
            address: mailbox.email,
        })
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::dangerous_new_pre_encoded(
            Self::name(),
            format!("{} <{}>", self.name, self.address),
            format!("{}\r\n <{}>", literal_header(&self.name), self.address),
        )
    }
}

/// SMTP, from `CAIRN_SMTP_URL` (`smtp://host:25` plain, `smtp://…?tls=required` for
/// STARTTLS, `?tls=opportunistic` for STARTTLS when offered, `smtps://host:465` for TLS;
/// `user:password@` for credentials).
///
/// For `smtp://`, Cairn opens the TCP connections itself, with `TCP_NODELAY`, and hands
/// them to lettre: lettre 0.11 leaves Nagle's algorithm on, which holds back each
/// message's closing `.` until the server's delayed ACK, about 40 ms on every email.
/// Idle connections are kept for the next email. `smtps://` goes through lettre's own
/// pooled transport.
pub struct SmtpMailer {
    route: Route,
    from: Mailbox,
}

enum Route {
    Pooled(AsyncSmtpTransport<Tokio1Executor>),
    Direct(Direct),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum StartTls {
    Never,
    IfOffered,
    Required,
}

struct Direct {
    host: String,
    port: u16,
    starttls: StartTls,
    credentials: Option<Credentials>,
    /// Connections kept for the next email, with when each was last used.
    idle: std::sync::Mutex<Vec<(std::time::Instant, AsyncSmtpConnection)>>,
}

/// Idle connections kept per mailer, and for how long (servers close idle sessions,
/// often after 30 s to a few minutes).
const IDLE_CONNECTIONS: usize = 8;
const IDLE_FOR: Duration = Duration::from_secs(20);
/// The longest one email may take to send, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

impl SmtpMailer {
    pub fn new(url: &str, from: Mailbox) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        let route = match parsed.scheme() {
            "smtps" => Route::Pooled(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| e.to_string())?
                    .timeout(Some(Duration::from_secs(30)))
                    .build(),
            ),
            "smtp" => {
                let host = parsed
                    .host_str()
                    .filter(|h| !h.is_empty())
                    .ok_or("no host in the SMTP URL")?
                    .trim_matches(['[', ']'])
                    .to_owned();
                let starttls = match parsed
                    .query_pairs()
                    .find(|(k, _)| k == "tls")
                    .map(|(_, v)| v.into_owned())
                    .as_deref()
                {
                    None | Some("none") => StartTls::Never,
                    Some("opportunistic") => StartTls::IfOffered,
                    Some("required") => StartTls::Required,
                    Some(other) => {
                        return Err(format!("tls={other}: use none, opportunistic or required"));
                    }
                };
                let decode = |s: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                let credentials = (!parsed.username().is_empty()).then(|| {
                    Credentials::new(
                        decode(parsed.username()),
                        decode(parsed.password().unwrap_or_default()),
                    )
                });
                if credentials.is_some() && starttls != StartTls::Required {
                    return Err(
                        "credentials in an smtp:// URL need ?tls=required (or use smtps://): they would cross the network in clear text".into(),
                    );
                }
                Route::Direct(Direct {
                    host,
                    port: parsed.port().unwrap_or(25),
                    starttls,
                    credentials,
                    idle: std::sync::Mutex::default(),
                })
            }
            other => return Err(format!("{other}:// is not smtp:// or smtps://")),
        };
        Ok(SmtpMailer { route, from })
    }
}

impl Direct {
    /// A new session: connect, greet, STARTTLS, AUTH. Its failures are the session's, not
    /// the message's (a wrong password, a server refusing us): they are all worth a
    /// retry, so one misconfiguration does not dead-letter every email at once.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        let failed = |e: &dyn std::fmt::Display| {
            SendError::Transient(format!(
                "SMTP session with {}:{}: {e}",
                self.host, self.port
            ))
        };
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| failed(&e))?;
        stream.set_nodelay(true).map_err(|e| failed(&e))?;
        let hello = ClientId::default();
        let mut connection = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &hello)
            .await
            .map_err(|e| failed(&e))?;
        let tls = match self.starttls {
            StartTls::Required => true,
            StartTls::IfOffered => connection.can_starttls(),
            StartTls::Never => false,
        };
        if tls {
            let parameters = TlsParameters::new(self.host.clone()).map_err(|e| failed(&e))?;
            connection
                .starttls(parameters, &hello)
                .await
                .map_err(|e| failed(&e))?;
        }
        if let Some(credentials) = &self.credentials {
            connection
                .auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await
                .map_err(|e| failed(&e))?;
        }
        Ok(connection)
    }

    /// An idle connection that is still fresh and still answers (a `NOOP`).
    async fn reuse(&self) -> Option<AsyncSmtpConnection> {
        loop {
            let (used, mut connection) = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                idle.pop()?
            };
            if used.elapsed() < IDLE_FOR
                && !connection.has_broken()
                && connection.test_connected().await
            {
                return Some(connection);
            }
            connection.abort().await;
        }
    }

    fn keep(&self, connection: AsyncSmtpConnection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < IDLE_CONNECTIONS && !connection.has_broken() {
            idle.push((std::time::Instant::now(), connection));
        }
    }

    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let bytes = message.formatted();
        let mut connection = match self.reuse().await {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        // No second try here on another connection: the server may have taken the
        // message before the failure. The outbox retries, with the same Message-ID.
        connection
            .send(message.envelope(), &bytes)
            .await
            .map_err(classify)?;
        self.keep(connection);
        Ok(())
    }
}

/// A permanent refusal (`5xx`) is a dead letter; anything else may pass on a retry.
fn classify(error: lettre::transport::smtp::Error) -> SendError {
    if error.is_permanent() {
        SendError::Permanent(error.to_string())
    } else {
        SendError::Transient(error.to_string())
    }
}

#[async_trait]
impl Mailer for SmtpMailer {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let message = message(&self.from, email)?;
        let sent = match &self.route {
            Route::Pooled(transport) => {
                tokio::time::timeout(SEND_TIMEOUT, async {
                    transport.send(message).await.map(|_| ()).map_err(classify)
                })
                .await
            }
            Route::Direct(direct) => {
                tokio::time::timeout(SEND_TIMEOUT, direct.send(&message)).await
            }
        };
        sent.unwrap_or_else(|_| {
            Err(SendError::Transient(format!(
                "no answer within {SEND_TIMEOUT:?}"
            )))
        })
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

/// Emails as the outbox worker delivers them: sent by `mailer`, each sending recorded in
/// the stream the email names (if it names one).
pub struct EmailDelivery {
    /// Where sendings are recorded.
    pub events: Arc<dyn EventStore>,
    pub mailer: Arc<dyn Mailer>,
}

#[async_trait]
impl Delivery for EmailDelivery {
    fn kind(&self) -> &'static str {
        OUTBOX_KIND
    }

    async fn deliver(&self, queued: &QueuedMessage, last_try: bool) -> Result<(), SendError> {
        let email = serde_json::from_value::<Email>(queued.message.payload.clone())
            .map_err(|e| SendError::Permanent(format!("unreadable email: {e}")))?;
        self.mailer.send(&email).await?;
        match record(&*self.events, queued, &email).await {
            Ok(()) => Ok(()),
            Err(error) if passing(&error) && !last_try => Err(SendError::Transient(format!(
                "sent, but the sending could not be recorded: {error}"
            ))),
            Err(error) => {
                // Sending it again would not get it recorded: the email went, and only
                // its line in the history is missing.
                tracing::error!(id = %queued.message.id, %error, "an email was sent but its sending could not be recorded");
                Ok(())
            }
        }
    }
}

/// Append [`EmailSent`] to the stream `email` names (its cause's), if it names one.
///
/// Before the message is settled, so that every send the outbox counts as done is in the
/// history: if this fails the message is settled as a retry, and sent (with the same
/// Message-ID) and recorded again later. The opposite order could lose the record for
/// good, and a recipient's mail client folds the resend into the first by its Message-ID.
async fn record(
    events: &dyn EventStore,
    queued: &QueuedMessage,
    email: &Email,
) -> Result<(), StoreError> {
    let Some(stream) = &email.record_in else {
        return Ok(());
    };
    let sent = EmailSent {
        outbox_id: queued.message.id,
        message_id: email.message_id.clone(),
        purpose: email.purpose.clone(),
        retries: queued.attempts,
        occurrence: email.occurrence,
    };
    let metadata = Metadata {
        actor: Some(ACTOR.to_owned()),
        correlation_id: None,
        causation_id: None,
    };
    events
        .append(AppendRequest::new(
            stream.clone(),
            ExpectedVersion::Any,
            vec![NewEvent::new(&sent, metadata)],
        ))
        .await
        .map(|_| ())
}

/// Whether recording may work on a later try: the store was out of reach, not the
/// record at fault (a stream name it refuses).
fn passing(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Unavailable(_) | StoreError::Closed | StoreError::Conflict { .. }
    )
}

/// Who the recorded sends are by, in their events' metadata.
const ACTOR: &str = "email-worker";

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (String, u16, bool, bool, Option<Credentials>);

    fn direct(url: &str) -> Result<Parsed, String> {
        let from: Mailbox = "Cairn <cairn@localhost>".parse().map_err(|_| "from")?;
        match SmtpMailer::new(url, from)?.route {
            Route::Direct(d) => Ok((
                d.host,
                d.port,
                d.starttls == StartTls::Required,
                d.starttls == StartTls::IfOffered,
                d.credentials,
            )),
            Route::Pooled(_) => Err("pooled".into()),
        }
    }

    #[tokio::test]
    async fn smtp_urls() {
        assert_eq!(
            direct("smtp://mail.example:1025"),
            Ok(("mail.example".into(), 1025, false, false, None))
        );
        let (host, port, required, _, credentials) =
            direct("smtp://ann%40corp:p%2Bss@mail.example?tls=required").unwrap_or_default();
        assert_eq!((host.as_str(), port, required), ("mail.example", 25, true));
        assert_eq!(
            credentials,
            Some(Credentials::new("ann@corp".into(), "p+ss".into()))
        );
        assert_eq!(
            direct("smtp://[::1]:2525?tls=opportunistic").map(|d| (d.0, d.1, d.3)),
            Ok(("::1".into(), 2525, true))
        );
        assert_eq!(direct("smtps://mail.example"), Err("pooled".into()));
        assert!(direct("smtp://mail.example?tls=sometimes").is_err());
        assert!(direct("http://mail.example").is_err());
        assert!(direct("smtp://").is_err());
        assert!(
            direct("smtp://ann:pw@mail.example").is_err(),
            "no password without TLS"
        );
        assert!(direct("smtp://ann:pw@mail.example?tls=opportunistic").is_err());
    }
}
