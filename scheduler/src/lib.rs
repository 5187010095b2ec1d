//! Timers and side effects: the sleeper that carries out due items when their time
//! comes, and the outbox workers (email) that send what commands queued.
//!
//! Commands put due items in the due index in the same transaction as their events (a
//! capsule's release at its send time, the expiry of an unconfirmed one). The sleeper
//! claims what is due, hands each item to its action (a command, composed in by the
//! binary: this crate knows no aggregate), and otherwise sleeps until the earliest due
//! time. It never polls in a loop: it is woken early when an item is scheduled (Postgres
//! `NOTIFY`, or in-process on SQLite), and each sleep is capped so that a wall clock that
//! jumped (a suspended laptop pauses tokio's monotonic clock) or a time years ahead is
//! looked at again within a minute.
#![forbid(unsafe_code)]

pub mod email;
pub mod jobs;
pub mod maintenance;
pub mod metrics;
pub mod outbox;
mod renew;
pub mod sleeper;
pub mod webhook;

pub use email::{EmailDelivery, FileMailer, Mailer, SendError, SmtpMailer};
pub use jobs::ByCategory;
pub use maintenance::{Job, Maintenance};
pub use metrics::SchedulerMetrics;
pub use outbox::{Delivery, OutboxWorker, Policy};
pub use sleeper::Sleeper;
pub use webhook::WebhookDelivery;
