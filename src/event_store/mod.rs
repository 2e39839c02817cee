//! The append-only event log in PostgreSQL: appends with an expected version, gapless commit-ordered
//! global positions, a SHA-256 hash chain for tamper evidence, stream and global readers, and a NOTIFY
//! on every append so that tailers wake without polling hard.

mod append;
mod chain;
mod group_commit;
mod read;
mod timings;

use chrono::{DateTime, Utc};
use thiserror::Error;
use uuid::Uuid;

pub use append::{AppendPaths, AppendRejection, AppendRequest, AppendResults, Appended};
pub use chain::{verify_chain, VerifyReport};
pub use timings::{CommandTimings, Histogram, Snapshot};

/// The channel every append notifies with the new head position.
pub const NOTIFY_CHANNEL: &str = "recall_events";

/// What the writer believes about the stream it appends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

impl ExpectedVersion {
    fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// An event about to be appended. `payload` and `metadata` are JSON text, stored and hashed verbatim.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: String,
    pub metadata: String,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub actor: Option<String>,
}

/// An event as stored in the log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct RecordedEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub stream_id: String,
    pub scope: String,
    pub version: i64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: String,
    pub metadata: String,
    pub causation_id: Option<Uuid>,
    pub correlation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub recorded_at: DateTime<Utc>,
    #[serde(serialize_with = "hex_bytes")]
    pub hash: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

#[derive(Debug, Error)]
pub enum EventStoreError {
    #[error("the database is unavailable or too slow ({0}); check that PostgreSQL is running and retry")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the event store's writer has stopped (the runtime is shutting down); retry")]
    WriterGone,
    #[error("event {event_id} was already appended with different content (stream {stream_id}); use a new event id")]
    EventIdReused { event_id: Uuid, stream_id: String },
}

impl EventStoreError {
    /// Connection-level failures and statements the server gave up for a reason of the moment (its timeout
    /// while a transaction that has not ended yet holds the log's head, say) become `Unavailable`, which
    /// callers may retry: either way nothing was appended. The rest stay as they are.
    fn classify(error: sqlx::Error) -> Self {
        if crate::postgres::is_unavailable(&error) || crate::postgres::is_transient(&error) {
            EventStoreError::Unavailable(error)
        } else {
            EventStoreError::Database(error)
        }
    }
}

/// The event log over a PostgreSQL pool.
#[derive(Clone)]
pub struct EventStore {
    pool: sqlx::PgPool,
    writer: tokio::sync::mpsc::Sender<group_commit::Job>,
    paths: std::sync::Arc<AppendPaths>,
    timings: std::sync::Arc<CommandTimings>,
}

impl EventStore {
    /// Must be called inside a tokio runtime: it starts the store's group-commit writer task.
    pub fn new(pool: sqlx::PgPool) -> Self {
        let paths = std::sync::Arc::new(AppendPaths::default());
        let timings = std::sync::Arc::new(CommandTimings::default());
        let writer = group_commit::spawn_writer(pool.clone(), paths.clone(), timings.clone());
        EventStore {
            pool,
            writer,
            paths,
            timings,
        }
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        &self.pool
    }

    /// How this store's appends went so far: in one round trip, or through the slow path.
    pub fn append_paths(&self) -> &AppendPaths {
        &self.paths
    }

    /// Where commands' time went, stage by stage (for `/metrics`).
    pub fn command_timings(&self) -> &CommandTimings {
        &self.timings
    }
}
