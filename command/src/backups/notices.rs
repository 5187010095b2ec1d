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
        let host = public_url
            .split("://")
            .nth(1)
            .unwrap_or(public_url)
            .split(['/', ':'])
            .next()
            .filter(|h| !h.is_empty())
            .unwrap_or("cairn.localhost");
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
                    body: body.clone(),
                }
                .into_outbox(outbox_id(&format!("{cause}:{url}")))
            })
            .collect()
    }
}

/// `3 March 2027 at 09:00:05 UTC`.
fn time(at: DateTime<Utc>) -> String {
    at.format("%-d %B %Y at %H:%M:%S UTC").to_string()
}
