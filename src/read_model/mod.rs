//! The read side's state, as its readers see it: generations of the read model (the active one serves,
//! a building one is filled by a rebuild) with their model identity and checkpoint, the status report,
//! parked failures, one document as projected, and read-your-writes waits on the checkpoint.
//!
//! Only the projector writes these tables (`projections`, `documents`, `document_versions`, `chunks`,
//! `lexical_*`, `projection_failures`); everything here reads them, and the read model keeps what its
//! readers need (text, title and metadata per version), so nothing on this side parses event payloads.

mod documents;
mod failures;
mod generations;
mod replicas;
mod status;
mod wait;
mod watch;

use std::time::Duration;

use thiserror::Error;

pub use documents::{document, list_documents, DocumentSummary, ProjectedDocument};
pub use failures::{failures, ParkedFailure};
pub use generations::{
    activate_if_caught_up, active, active_for, claim_for_log, create_building, drop_retired, load, table_dimension,
    watermark, Generation, GenerationStatus,
};
pub use replicas::{ReadSource, Readers, DEFAULT_REPLICA_PATIENCE};
pub use status::{status, ProjectionStatus, StatusReport};
pub use wait::wait_for;
pub use watch::CheckpointWatch;

/// The channel a committed projection batch notifies, with `generation:checkpoint`.
pub const PROJECTED_CHANNEL: &str = "recall_projected";

#[derive(Debug, Error)]
pub enum ReadModelError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the model {model} makes {dimension}-dimensional vectors but chunks.embedding holds {table}; use a {table}-dimensional model")]
    DimensionMismatch {
        model: String,
        dimension: usize,
        table: usize,
    },
    #[error("generation {generation} of the read model was built with {stored}, not {offered}; run with its model and precision (--model, --precision), or `recall rebuild` to re-embed everything with the new ones")]
    ModelMismatch {
        generation: i64,
        stored: String,
        offered: String,
    },
    #[error("generation {generation} of the read model was projected from another event log ({claimed}, not this one, {log}); point RECALL_READ_MODEL_URL at this log's read model, or at an empty database to project it afresh")]
    OtherLog {
        generation: i64,
        claimed: uuid::Uuid,
        log: uuid::Uuid,
    },
    #[error("generation {generation} does not exist")]
    NoSuchGeneration { generation: i64 },
    #[error("there is no active read-model generation yet; run `recall project` first")]
    NoActiveGeneration,
    #[error(
        "timed out after {waited:?} waiting for the projector to pass position {position} (it is at {checkpoint})"
    )]
    WaitTimeout {
        position: i64,
        checkpoint: i64,
        waited: Duration,
    },
}
