//! A real SMTP listener for the tests: accepts every message over a socket, as a mail
//! server would, and keeps what it received.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One received message: the envelope recipient and the raw message (headers and body).
#[derive(Clone, Debug)]
pub struct Received {
    pub to: String,
    pub raw: String,
    /// When the message was received (its final `.`).
    pub at: std::time::SystemTime,
}

impl Received {
    /// A header's value (the first of that name), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    // Unfolding removes the line break, not the space after it.
                    v.push(' ');
                    v.push_str(line.trim_start());
                    continue;
                }
                break;
            }
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// A header's value as a mail client shows it: RFC 2047 encoded words
    /// (`=?utf-8?b?…?=`, `=?utf-8?q?…?=`) decoded once, the space between two of them
    /// dropped.
    pub fn shown_header(&self, name: &str) -> Option<String> {
        Some(decode_encoded_words(&self.header(name)?))
    }

    /// The message with quoted-printable soft breaks and `=XX` escapes undone, enough to
    /// search its text for links and words.
    pub fn decoded(&self) -> String {
        let joined = self.raw.replace("=\r\n", "");
        let mut out = Vec::with_capacity(joined.len());
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && i + 2 < bytes.len()
                && let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16)
            {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Clone)]
pub struct SmtpSink {
    pub url: String,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    /// Refuse every recipient with a permanent `550`, as a server does for an unknown user.
    refuse: bool,
    /// Messages whose subject contains this are received but not answered, the first time:
    /// the sender is left waiting for the `250`.
    stall: Option<String>,
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::listen(false, None).await
    }

    /// A server that refuses every recipient (`550`).
    pub async fn refusing() -> Self {
        Self::listen(true, None).await
    }

    /// A server that keeps the first message about `subject` without answering it, as
    /// a server would whose sender crashed before the `250` arrived.
    pub async fn stalling(subject: &str) -> Self {
        Self::listen(false, Some(subject.to_owned())).await
    }

    async fn listen(refuse: bool, stall: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("smtp://{}", listener.local_addr().unwrap());
        let sink = SmtpSink {
            url,
            received: Arc::default(),
            arrived: Arc::default(),
            refuse,
            stall,
            stalled: Arc::default(),
        };
        let accepting = sink.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let session = accepting.clone();
                tokio::spawn(async move { session.serve(socket).await });
            }
        });
        sink
    }

    async fn serve(&self, socket: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read);
        write.write_all(b"220 sink ESMTP\r\n").await?;
        let mut to = String::new();
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?,
                "RCPT" if self.refuse => write.write_all(b"550 no such user\r\n").await?,
                "RCPT" => {
                    to = line
                        .split_once(':')
                        .map(|(_, a)| a.trim().trim_matches(['<', '>']).to_owned())
                        .unwrap_or_default();
                    write.write_all(b"250 ok\r\n").await?;
                }
                "DATA" => {
                    write.write_all(b"354 go on\r\n").await?;
                    let mut raw = String::new();
                    loop {
                        line.clear();
                        if lines.read_line(&mut line).await? == 0 {
                            return Ok(());
                        }
                        if line == ".\r\n" {
                            break;
                        }
                        raw.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    let stall = self.stall.as_ref().is_some_and(|s| {
                        raw.contains(&format!("Subject: {s}"))
                            && !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst)
                    });
                    self.received.lock().unwrap().push(Received {
                        to: to.clone(),
                        raw,
                        at: std::time::SystemTime::now(),
                    });
                    self.arrived.notify_waiters();
                    if stall {
                        // Never answered: hold the connection until the sender goes away.
                        let mut rest = String::new();
                        while lines.read_line(&mut rest).await? > 0 {
                            rest.clear();
                        }
                        return Ok(());
                    }
                    write.write_all(b"250 queued\r\n").await?;
                }
                "QUIT" => {
                    write.write_all(b"221 bye\r\n").await?;
                    return Ok(());
                }
                _ => write.write_all(b"250 ok\r\n").await?,
            }
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait (bounded) for a message to `to` whose subject contains `subject`.
    pub async fn wait_for(&self, to: &str, subject: &str) -> Received {
        for _ in 0..300 {
            let arrived = self.arrived.notified();
            if let Some(found) = self.received().into_iter().find(|m| {
                m.to.eq_ignore_ascii_case(to)
                    && m.header("Subject").is_some_and(|s| s.contains(subject))
            }) {
                return found;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), arrived).await;
        }
        panic!(
            "no email to {to} about {subject:?}; received: {:?}",
            self.received()
                .iter()
                .map(|m| (m.to.clone(), m.header("Subject")))
                .collect::<Vec<_>>()
        );
    }
}

/// Decode the RFC 2047 encoded words in a header value, as mail clients do (UTF-8 and
/// US-ASCII only; anything else is left as it is).
pub fn decode_encoded_words(value: &str) -> String {
    use base64::Engine as _;
    let decode = |word: &str| -> Option<String> {
        let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
        let mut parts = inner.splitn(3, '?');
        let charset = parts.next()?.to_ascii_lowercase();
        let (encoding, text) = (parts.next()?, parts.next()?);
        if !matches!(charset.as_str(), "utf-8" | "us-ascii") || text.contains('?') {
            return None;
        }
        let bytes = match encoding {
            "b" | "B" => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
            "q" | "Q" => {
                let mut out = Vec::new();
                let mut bytes = text.bytes();
                while let Some(b) = bytes.next() {
                    match b {
                        b'_' => out.push(b' '),
                        b'=' => {
                            let hex = [bytes.next()?, bytes.next()?];
                            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
                        }
                        b => out.push(b),
                    }
                }
                out
            }
            _ => return None,
        };
        String::from_utf8(bytes).ok()
    };
    let mut out = String::new();
    let mut last_was_word = false;
    let mut pending_space = String::new();
    for token in value.split_inclusive([' ', '\t']) {
        let word = token.trim_end_matches([' ', '\t']);
        let space = &token[word.len()..];
        match decode(word) {
            Some(decoded) => {
                if !last_was_word {
                    out.push_str(&pending_space);
                }
                out.push_str(&decoded);
                last_was_word = true;
            }
            None => {
                out.push_str(&pending_space);
                out.push_str(word);
                last_was_word = word.is_empty() && last_was_word;
            }
        }
        pending_space = space.to_owned();
    }
    out.push_str(&pending_space);
    out
}
