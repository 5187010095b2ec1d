//! In-process read models for the embedded default: ordered sets of message ids per index,
//! rebuilt from the event log at every start.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cairn_events::Position;
use ulid::Ulid;

use super::{Applied, MessageFilter, ReadError, ReadStore, StoredMessage};

#[derive(Default)]
struct State {
    checkpoints: HashMap<String, Position>,
    messages: HashMap<Ulid, Arc<StoredMessage>>,
    all: BTreeSet<Ulid>,
    by_tag: HashMap<String, BTreeSet<Ulid>>,
    by_user: HashMap<String, BTreeSet<Ulid>>,
}

#[derive(Default)]
pub struct MemoryStore {
    state: RwLock<State>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl ReadStore for MemoryStore {
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError> {
        Ok(self
            .read()
            .checkpoints
            .get(projection)
            .copied()
            .unwrap_or(0))
    }

    async fn apply_messages(
        &self,
        messages: &[StoredMessage],
        from: Position,
        to: Position,
    ) -> Result<Applied, ReadError> {
        let mut state = self.write();
        if state.checkpoints.get("messages").copied().unwrap_or(0) != from {
            return Ok(Applied::Moved);
        }
        for m in messages {
            state.all.insert(m.id);
            for tag in &m.hashtags {
                state
                    .by_tag
                    .entry(tag.to_lowercase())
                    .or_default()
                    .insert(m.id);
            }
            state
                .by_user
                .entry(m.user_name.to_ascii_lowercase())
                .or_default()
                .insert(m.id);
            state.messages.insert(m.id, Arc::new(m.clone()));
        }
        state.checkpoints.insert("messages".into(), to);
        Ok(Applied::Done)
    }

    async fn get_message(&self, id: Ulid) -> Result<Option<StoredMessage>, ReadError> {
        Ok(self.read().messages.get(&id).map(|m| (**m).clone()))
    }

    async fn list_messages(&self, filter: &MessageFilter) -> Result<Vec<StoredMessage>, ReadError> {
        let state = self.read();
        let empty = BTreeSet::new();
        // Walk the smallest index that applies and check the rest per message.
        let mut candidates = vec![&state.all];
        if let Some(tag) = &filter.hashtag {
            candidates.push(state.by_tag.get(tag).unwrap_or(&empty));
        }
        if let Some(user) = &filter.user_name {
            candidates.push(state.by_user.get(user).unwrap_or(&empty));
        }
        let index = candidates
            .into_iter()
            .min_by_key(|s| s.len())
            .unwrap_or(&empty);
        let lower = filter.lower.unwrap_or(Ulid::nil());
        let upper = filter
            .upper
            .unwrap_or(Ulid::from_parts(u64::MAX >> 16, u128::MAX));
        if lower >= upper {
            return Ok(Vec::new());
        }
        Ok(index
            .range(lower..upper)
            .rev()
            .filter_map(|id| state.messages.get(id))
            .filter(|m| filter.matches(m))
            .take(filter.limit)
            .map(|m| (**m).clone())
            .collect())
    }

    async fn reset(&self, projection: &str) -> Result<(), ReadError> {
        let mut state = self.write();
        if projection == "messages" {
            let checkpoints = std::mem::take(&mut state.checkpoints);
            *state = State {
                checkpoints,
                ..State::default()
            };
        }
        state.checkpoints.remove(projection);
        Ok(())
    }

    async fn ping(&self) -> Result<(), ReadError> {
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}
