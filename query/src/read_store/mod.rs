//! Read models and the stores that hold them.
//!
//! One trait per read model, each over the same small base:
//! - [`ReadBackend`]: what every read model of a backend shares: its checkpoint per
//!   projection, a reset that forgets one model, and a health check;
//! - [`MessageStore`] (`messages.rs`): messages by id, hashtag, user and date;
//! - [`TrendStore`] (`trends.rs`): hashtag counters, distinct users and trending ranks.
//!
//! Each backend has a folder, `redis/` and `sqlite/`: `mod.rs` holds the connection, key
//! or table naming and the checkpoint compare-and-set; one file per model holds only that
//! model's keys or tables and commands. One backend struct implements every model trait,
//! and [`ReadModels`] hands the same store out as each trait object, so projections and
//! routes depend on the one model they use.
//!
//! The invariants every backend keeps (and `crate::testing` checks on each):
//! - a model's writes and its checkpoint move together: a batch applies from `from` to
//!   `to` only if the checkpoint is still at `from` (compare-and-set); otherwise the store
//!   answers [`Applied::Moved`] and the checkpoint stays where it is;
//! - writes are idempotent: a batch written whose checkpoint did not move (a crash between
//!   the two, or a runner that lost its lease) can be applied again from the old checkpoint
//!   and leaves the state one application leaves; no message twice, no hit counted twice.

mod messages;
pub mod redis;
pub mod sqlite;
mod trends;

use std::sync::Arc;

use async_trait::async_trait;
use cairn_events::Position;

pub use self::messages::{MessageFilter, MessageStore, StoredMessage};
pub use self::redis::RedisStore;
pub use self::sqlite::{LogIdentity, SqliteStore};
pub use self::trends::TrendStore;

/// What became of an attempt to move a projection's checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Data written, checkpoint moved.
    Done,
    /// The checkpoint was not where the runner thought (a rebuild, a flush, or another
    /// runner): re-read it and continue from there.
    Moved,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("read store unavailable")]
    Unavailable(#[from] ::redis::RedisError),
    #[error("read store unavailable")]
    Sqlite(#[from] sqlx::Error),
    #[error("read model entry is unreadable: {0}")]
    Corrupt(String),
}

/// What a backend keeps for every read model alike. The model traits build on it, so the
/// store a projection writes to is also the one that answers its checkpoint.
#[async_trait]
pub trait ReadBackend: Send + Sync + 'static {
    /// The position a projection has applied up to; 0 if it has none (never run, or lost).
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError>;

    /// Forget a projection's data and checkpoint, so its runner rebuilds it from the log.
    async fn reset(&self, projection: &str) -> Result<(), ReadError>;

    async fn ping(&self) -> Result<(), ReadError>;

    /// The backend's name, as the health check reports it.
    fn backend(&self) -> &'static str;
}

/// One backend's read models, each as its own trait object (all the same store).
#[derive(Clone)]
pub struct ReadModels {
    pub messages: Arc<dyn MessageStore>,
    pub trends: Arc<dyn TrendStore>,
    /// Checkpoints, resets and health of the backend as a whole.
    pub backend: Arc<dyn ReadBackend>,
}

impl ReadModels {
    pub fn new<S: MessageStore + TrendStore>(store: Arc<S>) -> Self {
        ReadModels {
            messages: store.clone(),
            trends: store.clone(),
            backend: store,
        }
    }
}
