//! Several jobs' due items on one sleeper: each item goes to the action of its stream's
//! category (`capsule-…` to the capsules', `resource-…` to the backups'), as the binary
//! composes them.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use cairn_events::{DueAction, DueItem, Envelope, Handled, category_of};

/// Due items routed by their stream's category.
#[derive(Default)]
pub struct ByCategory {
    actions: Vec<(String, Arc<dyn DueAction>)>,
}

impl ByCategory {
    /// Items of streams in `category` go to `action`.
    pub fn with(mut self, category: &str, action: Arc<dyn DueAction>) -> Self {
        self.actions.push((category.to_owned(), action));
        self
    }

    fn action_of(&self, item: &DueItem) -> Option<&Arc<dyn DueAction>> {
        let category = category_of(&item.stream_id);
        self.actions
            .iter()
            .find(|(c, _)| c == category)
            .map(|(_, action)| action)
    }
}

#[async_trait]
impl DueAction for ByCategory {
    async fn run(&self, item: &DueItem) -> Result<Handled, String> {
        match self.action_of(item) {
            Some(action) => action.run(item).await,
            None => {
                tracing::warn!(key = %item.key, stream = %item.stream_id, "a due item no job takes; dropped");
                Ok(Handled::Nothing)
            }
        }
    }

    async fn prefetch(&self, items: &[DueItem]) -> HashMap<String, Vec<Envelope>> {
        let mut read = HashMap::new();
        for (category, action) in &self.actions {
            let mine: Vec<DueItem> = items
                .iter()
                .filter(|item| category_of(&item.stream_id) == category)
                .cloned()
                .collect();
            if !mine.is_empty() {
                read.extend(action.prefetch(&mine).await);
            }
        }
        read
    }

    async fn run_read(&self, item: &DueItem, stream: Vec<Envelope>) -> Result<Handled, String> {
        match self.action_of(item) {
            Some(action) => action.run_read(item, stream).await,
            None => self.run(item).await,
        }
    }
}
