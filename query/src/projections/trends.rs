//! The trends projection: each `message.posted` event counts once for each of its hashtags
//! and once for all messages, at the minute it was posted.

use async_trait::async_trait;
use cairn_events::domain::message;
use cairn_events::{Envelope, Position};
use chrono::Utc;

use super::Projection;
use super::messages::posted;
use crate::read_store::{Applied, ReadError, ReadModels};
use crate::trends::{TrendBatch, TrendHit, TrendRules, minute_of};

/// Hashtag counters and trending ranks.
pub struct Trends {
    pub rules: TrendRules,
}

#[async_trait]
impl Projection for Trends {
    fn name(&self) -> &'static str {
        "trends"
    }

    fn categories(&self) -> &'static [&'static str] {
        &[message::CATEGORY]
    }

    /// Large batches: a hashtag used several times in one batch costs one counter update
    /// per minute, hour and day, not one per use.
    fn batch_size(&self) -> usize {
        5000
    }

    /// Nobody waits for trends to show their own post, and a batch's counters cost about
    /// the same whether it holds one message or hundreds: under a stream of posts, a
    /// quarter second between batches cuts the Redis work per message many times over.
    fn pace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(250)
    }

    async fn apply(
        &self,
        models: &ReadModels,
        events: &[Envelope],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let hits: Vec<TrendHit> = posted(events)
            .map(|(position, m)| {
                let mut tags: Vec<String> = m.hashtags.iter().map(|t| t.to_lowercase()).collect();
                tags.sort_unstable();
                tags.dedup();
                TrendHit {
                    position,
                    minute: minute_of(m.created_at),
                    user_id: m.user_id,
                    tags,
                }
            })
            .collect();
        let batch = TrendBatch::new(hits, &self.rules, minute_of(Utc::now()));
        models.trends.apply_trends(&batch, from, to).await
    }
}
