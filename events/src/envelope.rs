//! What an event looks like on the way in ([`NewEvent`]) and on the way out ([`Envelope`]).

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

use crate::{Effects, Position, StoreError};

/// Who and what caused an event; stored beside the payload.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The user id or subsystem ("cli", "scheduler") that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Shared by every event caused by one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The event (or request) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
}

/// A stored event as every reader sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub position: Position,
    pub event_id: Uuid,
    pub stream_id: String,
    /// 1 for the first event of a stream.
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Metadata,
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: serde_json::Value,
    pub occurred_at: DateTime<Utc>,
    pub metadata: Metadata,
}

impl NewEvent {
    /// Wrap a domain event, stamping a fresh UUID v7 and the current time.
    pub fn new<E: DomainEvent>(event: &E, metadata: Metadata) -> Self {
        Self::at(event, metadata, Utc::now())
    }

    /// Wrap a domain event that happened at `occurred_at`.
    pub fn at<E: DomainEvent>(event: &E, metadata: Metadata, occurred_at: DateTime<Utc>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            schema_version: E::SCHEMA_VERSION,
            // Serializing plain structs of strings and numbers cannot fail.
            payload: serde_json::to_value(event).unwrap_or(serde_json::Value::Null),
            occurred_at,
            metadata,
        }
    }
}

/// The version a writer expects a stream to be at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream's last event must have exactly this version.
    Exact(i64),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` (0 = no stream) satisfies this expectation.
    pub fn allows(self, actual: i64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "{v}"),
        }
    }
}

/// Events for one stream, appended atomically, with the work they leave behind.
///
/// A request may also append to further streams ([`AppendRequest::and_stream`]), each with
/// its own expected version: all of its events are committed or none. That is how a
/// uniqueness rule spanning streams is kept: the request opens a stream named by the unique
/// value with [`ExpectedVersion::NoStream`] beside its own events.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Further streams written in the same commit.
    pub also: Vec<StreamEvents>,
    /// Due items and outbox messages, committed with the events or not at all.
    pub effects: Effects,
}

/// Events for a further stream of an [`AppendRequest`].
#[derive(Clone, Debug)]
pub struct StreamEvents {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl AppendRequest {
    pub fn new(
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        AppendRequest {
            stream_id: stream_id.into(),
            expected,
            events,
            also: Vec::new(),
            effects: Effects::default(),
        }
    }

    /// The same request, also appending `events` to `stream_id` if that stream is at
    /// `expected`; a conflict on either stream fails the whole request.
    pub fn and_stream(
        mut self,
        stream_id: impl Into<String>,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Self {
        self.also.push(StreamEvents {
            stream_id: stream_id.into(),
            expected,
            events,
        });
        self
    }

    /// The same request, leaving `effects` behind when it commits.
    pub fn with_effects(mut self, effects: Effects) -> Self {
        self.effects = effects;
        self
    }

    /// Every stream the request writes, its own first: (stream, expected, events).
    pub(crate) fn parts(&self) -> impl Iterator<Item = (&str, ExpectedVersion, &[NewEvent])> {
        std::iter::once((
            self.stream_id.as_str(),
            self.expected,
            self.events.as_slice(),
        ))
        .chain(
            self.also
                .iter()
                .map(|s| (s.stream_id.as_str(), s.expected, s.events.as_slice())),
        )
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        for (i, (stream_id, _, events)) in self.parts().enumerate() {
            if stream_id.is_empty() || stream_id.len() > 512 {
                return Err(StoreError::Invalid("stream id must be 1-512 bytes".into()));
            }
            if events.is_empty() {
                return Err(StoreError::Invalid(
                    "an append needs at least one event per stream".into(),
                ));
            }
            if self
                .parts()
                .take(i)
                .any(|(earlier, _, _)| earlier == stream_id)
            {
                return Err(StoreError::Invalid(format!(
                    "stream {stream_id} is named twice in one append"
                )));
            }
        }
        Ok(())
    }
}

/// The outcome of a successful append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The request's own stream (not the further ones).
    pub stream_id: String,
    /// The version of the request's own stream after its last event.
    pub version: i64,
    /// The global position of the first and last appended events, of every stream of the
    /// request (they are contiguous).
    pub first_position: Position,
    pub last_position: Position,
}

/// The category of a stream: the part of its id before the first `-`.
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// A domain event payload: the contract between the write side and every reader.
///
/// `SCHEMA_VERSION` grows when the payload shape changes; [`DomainEvent::upcast`] turns an
/// older stored payload into the current shape, so events written years ago stay readable.
pub trait DomainEvent: Serialize + DeserializeOwned {
    const TYPE: &'static str;
    const SCHEMA_VERSION: i32;

    /// Rewrite a payload stored with an older `schema_version` into the current shape.
    fn upcast(
        schema_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        if schema_version == Self::SCHEMA_VERSION {
            Ok(payload)
        } else {
            Err(format!("unknown schema version {schema_version}"))
        }
    }

    /// Decode an envelope of this type, upcasting older versions.
    fn decode(envelope: &Envelope) -> Result<Self, DecodeError> {
        if envelope.event_type != Self::TYPE {
            return Err(DecodeError::WrongType {
                expected: Self::TYPE,
                found: envelope.event_type.clone(),
            });
        }
        let invalid = |e: serde_json::Error| DecodeError::Payload {
            event_id: envelope.event_id,
            reason: e.to_string(),
        };
        if envelope.schema_version == Self::SCHEMA_VERSION {
            // The current shape: read it in place, without copying the payload.
            return Self::deserialize(&envelope.payload).map_err(invalid);
        }
        let payload =
            Self::upcast(envelope.schema_version, envelope.payload.clone()).map_err(|reason| {
                DecodeError::Payload {
                    event_id: envelope.event_id,
                    reason,
                }
            })?;
        serde_json::from_value(payload).map_err(invalid)
    }
}

/// A stored event that does not decode as the type asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("expected a {expected} event, found {found}")]
    WrongType {
        expected: &'static str,
        found: String,
    },
    #[error("event {event_id} has an unreadable payload: {reason}")]
    Payload { event_id: Uuid, reason: String },
}
