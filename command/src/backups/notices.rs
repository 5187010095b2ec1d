//! The emails that tell a service's owner what happened: a backup stored, uploads refused
//! (at most one notice an hour per resource and reason, counting the rest), rendered from
//! `templates/email/` and queued in the outbox with the event that causes them. Each one's
//! outbox id and Message-ID come from its cause and recipient, so a retry never queues it
//! twice.

use cairn_events::OutboxMessage;
use cairn_events::domain::backup::BackupStored;
use cairn_events::domain::email::Email;
use cairn_events::domain::webhook::Webhook;
use chrono::{DateTime, Utc};
use minijinja::{Environment, Value, context};
use uuid::Uuid;

use super::state::{ResourceState, ServiceState};
use crate::capsules::emails::outbox_id_of as outbox_id;

/// The templates, parsed once.
pub struct Notices {
    env: Environment<'static>,
    /// The domain of Message-IDs.
    domain: String,
}

impl Notices {
    pub fn new(public_url: &str) -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        email_templates!(
            env,
            "backup_created",
            "upload_refused",
            "backup_missed",
            "back_to_normal"
        );
        let host = crate::capsules::emails::message_id_domain(public_url);
        Ok(Notices {
            env,
            domain: host.to_owned(),
        })
    }

    /// A notice from template `name` to each of `to`, caused by `cause`.
    fn render(&self, name: &str, to: &[String], cause: &str, values: &Value) -> Vec<OutboxMessage> {
        let render = |part: &str| {
            self.env
                .get_template(&format!("{name}.{part}"))
                .and_then(|t| t.render(values))
        };
        let (subject, text, html) = match (render("subject.txt"), render("txt"), render("html")) {
            (Ok(subject), Ok(text), Ok(html)) => (subject, text, html),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                tracing::error!(error = %e, name, "a notice could not be rendered");
                return Vec::new();
            }
        };
        to.iter()
            .map(|recipient| {
                let id = outbox_id(&format!("{cause}:{recipient}"));
                Email {
                    to: recipient.clone(),
                    to_name: None,
                    subject: subject.trim().to_owned(),
                    text: text.clone(),
                    html: html.clone(),
                    message_id: format!("<{}@{}>", id.simple(), self.domain),
                    record_in: None,
                    purpose: Some(name.to_owned()),
                    occurrence: None,
                }
                .into_outbox(id)
            })
            .collect()
    }

    /// "A backup was stored", to `to`.
    pub fn created(
        &self,
        to: &[String],
        service: &ServiceState,
        resource: &ResourceState,
        stored: &BackupStored,
        url: &str,
        at: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let values = context! {
            service_name => service.settings.name.as_str(),
            resource_name => resource.settings.name.as_str(),
            file_name => stored.file_name.as_str(),
            format => stored.format.as_str(),
            bytes => stored.bytes,
            sha256 => stored.sha256.as_str(),
            at => time(at),
            url,
        };
        self.render(
            "backup_created",
            to,
            &format!("backup-created:{}", stored.backup_id),
            &values,
        )
    }

    /// "Uploads were refused" (`reason`: `bad_key` or `ip_blocked`), counting `count`.
    #[allow(clippy::too_many_arguments)]
    pub fn refused(
        &self,
        to: &[String],
        service: &ServiceState,
        resource: &ResourceState,
        reason: &str,
        client: Option<&str>,
        count: u32,
        cause: Uuid,
        at: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let values = context! {
            service_name => service.settings.name.as_str(),
            resource_name => resource.settings.name.as_str(),
            reason,
            client => client.unwrap_or("an unknown address"),
            count,
            at => time(at),
        };
        self.render(
            "upload_refused",
            to,
            &format!("uploads-refused:{cause}"),
            &values,
        )
    }
}

impl Notices {
    /// "An expected backup did not come" (due at `due`).
    pub fn missed(
        &self,
        to: &[String],
        service: &ServiceState,
        resource: &ResourceState,
        due: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let values = context! {
            service_name => service.settings.name.as_str(),
            resource_name => resource.settings.name.as_str(),
            due => time(due),
            last => resource.last_backup_at.map_or("never".to_owned(), |at| format!("on {}", time(at))),
        };
        let cause = format!("backup-missed:{}:{}", resource.resource_id, due.timestamp());
        self.render("backup_missed", to, &cause, &values)
    }

    /// "Backups come again" after the one due at `due` was missed.
    pub fn resumed(
        &self,
        to: &[String],
        service: &ServiceState,
        resource: &ResourceState,
        due: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let values = context! {
            service_name => service.settings.name.as_str(),
            resource_name => resource.settings.name.as_str(),
            due => time(due),
            at => time(at),
        };
        let cause = format!(
            "backups-resumed:{}:{}",
            resource.resource_id,
            due.timestamp()
        );
        self.render("back_to_normal", to, &cause, &values)
    }
}

impl Notices {
    /// The webhook calls telling `service`'s URLs of `what` (`backup_created`, `bad_key`,
    /// …), if it asked to be told: a Standard Webhooks body, `{"type", "timestamp",
    /// "data"}`, with `data` and the service and resource ids.
    pub fn webhooks(
        &self,
        service: &ServiceState,
        resource: &ResourceState,
        what: &str,
        mut data: serde_json::Value,
        cause: &str,
        at: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let settings = &service.settings.notifications;
        let Some(secret) = &service.webhook_secret else {
            return Vec::new();
        };
        if !settings.on.iter().any(|on| on == what) {
            return Vec::new();
        }
        let kind = match what {
            "backup_created" => "backup.created",
            "bad_key" | "ip_blocked" => "backup.refused",
            "backup_missed" => "backup.missed",
            _ => "backup.resumed",
        };
        if let Some(object) = data.as_object_mut() {
            object.insert("service".into(), service.service_id.to_string().into());
            object.insert("resource".into(), resource.resource_id.to_string().into());
            object.insert(
                "resource_name".into(),
                resource.settings.name.clone().into(),
            );
        }
        let line = line(what, service, resource, &data);
        let body = serde_json::json!({
            "type": kind,
            "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string();
        settings
            .webhooks
            .iter()
            .map(|url| {
                Webhook {
                    url: url.clone(),
                    secret: secret.clone(),
                    body: flavoured(url, &line).unwrap_or_else(|| body.clone()),
                }
                .into_outbox(outbox_id(&format!("{cause}:{url}")))
            })
            .collect()
    }
}

/// The news in one line, for chat webhooks.
fn line(
    what: &str,
    service: &ServiceState,
    resource: &ResourceState,
    data: &serde_json::Value,
) -> String {
    let (resource, service) = (&resource.settings.name, &service.settings.name);
    let field = |name: &str| match &data[name] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "an unknown address".to_owned(),
        other => other.to_string(),
    };
    match what {
        "backup_created" => format!(
            "Backup stored: {resource} ({service}): {}, {} bytes",
            data["backup"]["file_name"].as_str().unwrap_or_default(),
            data["backup"]["bytes"]
        ),
        "bad_key" => format!(
            "A backup to {resource} ({service}) without a valid API key was refused ({} since the last notice)",
            field("count")
        ),
        "ip_blocked" => format!(
            "A backup to {resource} ({service}) from {}, not on the allowlist, was refused ({} since the last notice)",
            field("client"),
            field("count")
        ),
        "backup_missed" => format!(
            "Backup missed: {resource} ({service}), expected at {}",
            field("due_at")
        ),
        _ => format!("Backups back to normal: {resource} ({service})"),
    }
}

/// The body a chat's incoming webhook takes, for URLs that are one: Slack's
/// (`https://hooks.slack.com/…`, `{"text"}`) and Telegram's Bot API
/// (`https://api.telegram.org/bot<token>/sendMessage?chat_id=<chat>`, `{"chat_id", "text"}`).
/// `None`: a Standard Webhooks endpoint, which takes the typed body.
fn flavoured(url: &str, line: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    match host.to_ascii_lowercase().as_str() {
        "hooks.slack.com" => Some(serde_json::json!({ "text": line }).to_string()),
        "api.telegram.org" => {
            let chat = path
                .split_once('?')
                .map(|(_, query)| query)
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("chat_id="))?;
            let chat = percent_encoding::percent_decode_str(chat).decode_utf8_lossy();
            Some(serde_json::json!({ "chat_id": chat, "text": line }).to_string())
        }
        _ => None,
    }
}

/// `3 March 2027 at 09:00:05 UTC`.
fn time(at: DateTime<Utc>) -> String {
    at.format("%-d %B %Y at %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_webhooks_get_their_own_bodies() {
        assert_eq!(
            flavoured("https://hooks.slack.com/services/T0/B0/x", "Backup stored").as_deref(),
            Some(r#"{"text":"Backup stored"}"#)
        );
        assert_eq!(
            flavoured(
                "https://api.telegram.org/bot123:abc/sendMessage?chat_id=-100%2042",
                "Backup missed"
            )
            .as_deref(),
            Some(r#"{"chat_id":"-100 42","text":"Backup missed"}"#)
        );
        assert_eq!(
            flavoured("https://api.telegram.org/bot1:a/sendMessage", "x"),
            None
        );
        assert_eq!(flavoured("https://example.com/hooks.slack.com", "x"), None);
        assert_eq!(flavoured("http://hooks.slack.com/services/x", "x"), None);
    }
}
