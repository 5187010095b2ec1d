//! The webhook delivery against a real HTTP listener: what each answer comes to.
#![allow(clippy::unwrap_used)]

use cairn_events::domain::webhook::Webhook;
use cairn_events::{OutboxMessage, QueuedMessage};
use cairn_scheduler::outbox::Delivery;
use cairn_scheduler::{SendError, WebhookDelivery};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A listener that answers every request with `status`; its URL.
async fn answering(status: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 64 * 1024];
                let _ = socket.read(&mut buffer).await;
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

fn queued(url: &str) -> QueuedMessage {
    let id = uuid::Uuid::now_v7();
    let hook = Webhook {
        url: url.to_owned(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        body: r#"{"type":"backup.created"}"#.into(),
    };
    let OutboxMessage { id, kind, payload } = hook.into_outbox(id);
    QueuedMessage {
        message: OutboxMessage { id, kind, payload },
        attempts: 0,
        queued_at: chrono::Utc::now(),
        last_error: None,
    }
}

#[tokio::test]
async fn answers_decide_between_delivered_retried_and_dead() {
    let delivery = WebhookDelivery::new().unwrap();
    for (status, expect) in [
        (200, "ok"),
        (204, "ok"),
        (500, "retry"),
        (503, "retry"),
        (429, "retry"),
        (408, "retry"),
        (400, "dead"),
        (410, "dead"),
    ] {
        let url = answering(status).await;
        let outcome = match delivery.deliver(&queued(&url), false).await {
            Ok(()) => "ok",
            Err(SendError::Transient(_)) => "retry",
            Err(SendError::Permanent(_)) => "dead",
        };
        assert_eq!(outcome, expect, "an answer {status}");
    }
    // Nobody listening: tried again later.
    let gone = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    assert!(matches!(
        delivery.deliver(&queued(&gone), false).await,
        Err(SendError::Transient(_))
    ));
}
