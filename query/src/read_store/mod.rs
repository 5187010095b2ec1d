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
//! Each model is kept in generations ([`GenerationStore`]): a generation is one complete
//! copy of the model with its own checkpoint (its own key prefix in Redis, its own tables in
//! SQLite). Reads answer from the *live* generation only. A rebuild (`cairn projections
//! rebuild`, or a model whose live generation is gone) builds a new generation beside the
//! live one, and the runner makes it live in one atomic step once it has caught up with the
//! log, so a reader sees either the complete old model or the complete new one, never one
//! half built. The generation that was live is then *retired* and its data deleted a little
//! later (readers that resolved it just before the switch finish first). Without a live
//! generation (first start, keys lost) reads answer "rebuilding" rather than a partial model.
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
    /// The model has no live generation: it is being built from the first event.
    #[error("the {0} read model is being rebuilt")]
    Rebuilding(&'static str),
}

/// A generation of a read model: one complete copy, built from the first event.
pub type Generation = u64;

/// Where a read model's generations stand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Generations {
    /// The generation reads answer from; none when the model was lost or never built.
    pub live: Option<Generation>,
    /// A generation being built from the first event, to replace the live one.
    pub building: Option<Generation>,
    /// A generation that was live before the last switch and whose data is still to be
    /// deleted.
    pub retired: Option<Generation>,
}

/// What a backend keeps for every read model alike. The model traits build on it, so the
/// store a projection writes to is also the one that answers its checkpoint.
#[async_trait]
pub trait ReadBackend: Send + Sync + 'static {
    /// The position a projection has applied up to; 0 if it has none (never run, or lost).
    /// Of the store's own generation; asked of a [`GenerationStore`], of the live one.
    async fn checkpoint(&self, projection: &str) -> Result<Position, ReadError>;

    /// Of one generation: forget a projection's data and checkpoint. Asked of a
    /// [`GenerationStore`]: rebuild the model into a new generation beside the live one
    /// ([`GenerationStore::begin_generation`]).
    async fn reset(&self, projection: &str) -> Result<(), ReadError>;

    async fn ping(&self) -> Result<(), ReadError>;

    /// The backend's name, as the health check reports it.
    fn backend(&self) -> &'static str;
}

/// A backend's read models in generations (see the module docs). The runner builds and
/// switches generations; the routes read from the live one; the CLI asks for a rebuild.
/// Generation numbers are never reused while a generation's data may exist.
#[async_trait]
pub trait GenerationStore: ReadBackend {
    /// Where `model`'s generations stand. No live generation means none can answer: the
    /// model was never built, or its data was lost (a flushed or emptied Redis).
    async fn generations(&self, model: &str) -> Result<Generations, ReadError>;

    /// Start building a new generation of `model` from the first event, beside the live
    /// one; if one is already being built, that one (it is built from the first event too).
    async fn begin_generation(&self, model: &str) -> Result<Generation, ReadError>;

    /// Make `building` the live generation of `model`, atomically, if it is still the one
    /// being built, `live` is still the live one, nothing retired awaits deletion, and
    /// `building`'s checkpoint is not behind `live`'s. The old live generation becomes the
    /// retired one. Whether it switched.
    async fn switch_generation(
        &self,
        model: &str,
        live: Option<Generation>,
        building: Generation,
    ) -> Result<bool, ReadError>;

    /// Delete the data of `model`'s retired generation `generation` (in bounded batches)
    /// and forget it.
    async fn drop_generation(&self, model: &str, generation: Generation) -> Result<(), ReadError>;

    /// The models of one generation.
    fn models_at(&self, generation: Generation) -> ReadModels;

    /// The models of `model`'s live generation, or [`ReadError::Rebuilding`].
    async fn live(&self, model: &'static str) -> Result<ReadModels, ReadError> {
        match self.generations(model).await?.live {
            Some(generation) => Ok(self.models_at(generation)),
            None => Err(ReadError::Rebuilding(model)),
        }
    }
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
