//! The hash chain: each event's SHA-256 covers the previous event's hash and every stored field, so an
//! edited, deleted or reordered row breaks the chain at exactly that position.

use futures_util::TryStreamExt;
use sha2::{Digest, Sha256};

use super::{EventStore, EventStoreError, RecordedEvent};

pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The fields that are hashed, in a fixed, length-prefixed encoding.
pub(crate) struct HashInput<'a> {
    pub position: i64,
    pub stream_id: &'a str,
    pub scope: &'a str,
    pub version: i64,
    pub event_type: &'a str,
    pub schema_version: i32,
    pub event_id: uuid::Uuid,
    pub causation_id: Option<uuid::Uuid>,
    pub correlation_id: Option<uuid::Uuid>,
    pub actor: Option<&'a str>,
    pub recorded_at_micros: i64,
    pub payload: &'a str,
    pub metadata: &'a str,
}

impl HashInput<'_> {
    pub fn chain(&self, previous: &[u8]) -> [u8; 32] {
        fn bytes(h: &mut Sha256, b: &[u8]) {
            h.update((b.len() as u64).to_be_bytes());
            h.update(b);
        }
        fn opt_uuid(h: &mut Sha256, u: Option<uuid::Uuid>) {
            match u {
                Some(u) => bytes(h, u.as_bytes()),
                None => h.update([0xff; 8]),
            }
        }
        let mut h = Sha256::new();
        bytes(&mut h, previous);
        h.update(self.position.to_be_bytes());
        bytes(&mut h, self.stream_id.as_bytes());
        bytes(&mut h, self.scope.as_bytes());
        h.update(self.version.to_be_bytes());
        bytes(&mut h, self.event_type.as_bytes());
        h.update(self.schema_version.to_be_bytes());
        h.update(self.event_id.as_bytes());
        opt_uuid(&mut h, self.causation_id);
        opt_uuid(&mut h, self.correlation_id);
        match self.actor {
            Some(a) => bytes(&mut h, a.as_bytes()),
            None => h.update([0xff; 8]),
        }
        h.update(self.recorded_at_micros.to_be_bytes());
        bytes(&mut h, self.payload.as_bytes());
        bytes(&mut h, self.metadata.as_bytes());
        h.finalize().into()
    }
}

impl RecordedEvent {
    fn hash_input(&self) -> HashInput<'_> {
        HashInput {
            position: self.position,
            stream_id: &self.stream_id,
            scope: &self.scope,
            version: self.version,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            event_id: self.event_id,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            actor: self.actor.as_deref(),
            recorded_at_micros: self.recorded_at.timestamp_micros(),
            payload: &self.payload,
            metadata: &self.metadata,
        }
    }
}

/// The result of recomputing the chain from position 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    /// Events checked before stopping.
    pub checked: u64,
    /// The head position recorded in `log_head`.
    pub head: i64,
    /// The first position that does not match, with why; `None` when the whole chain holds.
    pub first_bad_position: Option<i64>,
    pub problem: Option<String>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.first_bad_position.is_none()
    }
}

/// Walks the log in position order, recomputing every hash; stops at the first mismatch.
pub async fn verify_chain(store: &EventStore) -> Result<VerifyReport, EventStoreError> {
    let (head, head_hash): (i64, Vec<u8>) = sqlx::query_as("SELECT position, last_hash FROM log_head")
        .fetch_one(store.pool())
        .await
        .map_err(EventStoreError::classify)?;
    let sql = format!("SELECT {} FROM events ORDER BY position", super::read::COLUMNS);
    let mut rows = sqlx::query_as::<_, RecordedEvent>(&sql).fetch(store.pool());
    let mut previous = GENESIS_HASH.to_vec();
    let mut expected_position = 1i64;
    let mut checked = 0u64;
    let bad = |position: i64, problem: String, checked| VerifyReport {
        checked,
        head,
        first_bad_position: Some(position),
        problem: Some(problem),
    };
    while let Some(event) = rows.try_next().await.map_err(EventStoreError::classify)? {
        if event.position != expected_position {
            return Ok(bad(
                expected_position,
                format!(
                    "position {expected_position} is missing (next stored position is {})",
                    event.position
                ),
                checked,
            ));
        }
        let computed = event.hash_input().chain(&previous);
        if computed.as_slice() != event.hash.as_slice() {
            return Ok(bad(
                event.position,
                format!(
                    "stored hash {} does not match the recomputed {}: the event or one before it was altered",
                    hex::encode(&event.hash),
                    hex::encode(computed)
                ),
                checked,
            ));
        }
        previous = event.hash;
        expected_position += 1;
        checked += 1;
    }
    if expected_position - 1 != head {
        return Ok(bad(
            expected_position,
            format!(
                "the log ends at position {} but its head says {head}",
                expected_position - 1
            ),
            checked,
        ));
    }
    if previous != head_hash {
        return Ok(bad(
            head,
            "the head hash does not match the last event's hash".into(),
            checked,
        ));
    }
    Ok(VerifyReport {
        checked,
        head,
        first_bad_position: None,
        problem: None,
    })
}
