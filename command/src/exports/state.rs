//! An export's stream folded into what the rules and the views need.

use cairn_events::domain::export::{
    Destination, ExportCancelled, ExportCompleted, ExportExpired, ExportFailed, ExportRequested,
    ExportStarted, ExportStepDone, ExportStepFailed, ExportSynced, Part, Step,
};
use cairn_events::{DecodeError, DomainEvent, Envelope, Position};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Where an export is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the user's exports before it.
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_over(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One export, as its stream tells it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportState {
    pub request: ExportRequested,
    pub requested_at: DateTime<Utc>,
    pub status: Status,
    /// The log position it covers, once started.
    pub up_to: Position,
    pub steps: Vec<Step>,
    /// Steps done: the next to run is `steps[done]`.
    pub done: usize,
    /// The files the steps wrote, in order.
    pub parts: Vec<Part>,
    /// Tries of the next step that failed, and the last one's error.
    pub attempts: u32,
    pub last_error: Option<String>,
    pub retry_at: Option<DateTime<Utc>>,
    pub bundle: Option<Part>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The bundle was deleted at the end of its retention.
    pub expired: bool,
    pub failure: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    /// A destination kept in sync: the log position its messages are written up to.
    pub synced_up_to: Position,
    pub synced_at: Option<DateTime<Utc>>,
    /// Stream version, for the next append.
    pub version: i64,
}

impl ExportState {
    pub fn id(&self) -> Uuid {
        self.request.export_id
    }

    pub fn owner(&self) -> Uuid {
        self.request.user_id
    }

    pub fn is_git(&self) -> bool {
        matches!(self.request.destination, Destination::Git { .. })
    }

    /// Whether new messages still go to its destination.
    pub fn syncing(&self) -> bool {
        self.status == Status::Completed && self.request.keep_in_sync && self.is_git()
    }

    /// The label of the step running or about to.
    pub fn current_step(&self) -> Option<String> {
        self.steps.get(self.done).map(Step::label)
    }

    /// An export as it is once asked for, queued.
    pub fn requested(request: ExportRequested, at: DateTime<Utc>, version: i64) -> Self {
        ExportState {
            request,
            requested_at: at,
            status: Status::Queued,
            up_to: 0,
            steps: Vec::new(),
            done: 0,
            parts: Vec::new(),
            attempts: 0,
            last_error: None,
            retry_at: None,
            bundle: None,
            expires_at: None,
            expired: false,
            failure: None,
            finished_at: None,
            synced_up_to: 0,
            synced_at: None,
            version,
        }
    }

    /// Fold an export's stream; `None` for an empty one.
    pub fn of(events: &[Envelope]) -> Result<Option<Self>, DecodeError> {
        let Some((first, rest)) = events.split_first() else {
            return Ok(None);
        };
        let mut state = ExportState::requested(
            ExportRequested::decode(first)?,
            first.occurred_at,
            first.version,
        );
        for event in rest {
            state.apply(event)?;
        }
        Ok(Some(state))
    }

    /// Apply one more event of the stream.
    pub fn apply(&mut self, event: &Envelope) -> Result<(), DecodeError> {
        self.version = event.version;
        match event.event_type.as_str() {
            ExportStarted::TYPE => {
                let started = ExportStarted::decode(event)?;
                self.status = Status::Running;
                self.up_to = started.up_to;
                self.synced_up_to = started.up_to;
                self.steps = started.steps;
            }
            ExportStepDone::TYPE => {
                let done = ExportStepDone::decode(event)?;
                self.done = self.done.max(done.index as usize + 1);
                self.parts.extend(done.parts);
                self.attempts = 0;
                self.retry_at = None;
            }
            ExportStepFailed::TYPE => {
                let failed = ExportStepFailed::decode(event)?;
                self.attempts = failed.attempt;
                self.last_error = Some(failed.error);
                self.retry_at = Some(failed.retry_at);
            }
            ExportCompleted::TYPE => {
                let completed = ExportCompleted::decode(event)?;
                self.status = Status::Completed;
                self.bundle = completed.bundle;
                self.expires_at = completed.expires_at;
                self.finished_at = Some(event.occurred_at);
            }
            ExportFailed::TYPE => {
                self.status = Status::Failed;
                self.failure = Some(ExportFailed::decode(event)?.reason);
                self.finished_at = Some(event.occurred_at);
            }
            ExportCancelled::TYPE => {
                if self.status == Status::Completed {
                    // A finished export kept in sync: syncing stops, the export stays done.
                    self.request.keep_in_sync = false;
                } else {
                    self.status = Status::Cancelled;
                    self.finished_at = Some(event.occurred_at);
                }
            }
            ExportExpired::TYPE => self.expired = true,
            ExportSynced::TYPE => {
                self.synced_up_to = ExportSynced::decode(event)?.up_to;
                self.synced_at = Some(event.occurred_at);
            }
            _ => {}
        }
        Ok(())
    }
}
