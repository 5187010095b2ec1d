//! The trends projection: each `message.posted` event counts once for each of its hashtags
//! and once for all messages, at the minute it was posted.

use async_trait::async_trait;
use cairn_events::domain::message;
use cairn_events::{Envelope, Position};

use super::{Projection, to_stored_message};
use crate::read_store::{Applied, ReadError, ReadStore};
use crate::trends::{Scoring, TrendHit, minute_of};

/// Hashtag counters and trending ranks.
pub struct Trends {
    pub scoring: Scoring,
}

#[async_trait]
impl Projection for Trends {
    fn name(&self) -> &'static str {
        "trends"
    }

    fn categories(&self) -> &'static [&'static str] {
        &[message::CATEGORY]
    }

    async fn apply(
        &self,
        read: &dyn ReadStore,
        events: &[Envelope],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let mut hits = Vec::with_capacity(events.len());
        for envelope in events {
            match to_stored_message(envelope) {
                Some(Ok(m)) => {
                    let mut tags: Vec<String> =
                        m.hashtags.iter().map(|t| t.to_lowercase()).collect();
                    tags.sort_unstable();
                    tags.dedup();
                    hits.push(TrendHit {
                        position: envelope.position,
                        minute: minute_of(m.created_at),
                        user_id: m.user_id,
                        tags,
                    });
                }
                Some(Err(error)) => tracing::error!(%error, "skipping unreadable event"),
                None => {}
            }
        }
        read.apply_trends(&hits, &self.scoring, from, to).await
    }
}
