//! Readers: one stream from a version, the global log from a position in pages, the head.

use super::{EventStore, EventStoreError, RecordedEvent};

pub(super) const COLUMNS: &str = "position, event_id, stream_id, scope, version, event_type, schema_version, \
     payload::text AS payload, metadata::text AS metadata, causation_id, correlation_id, actor, recorded_at, hash";

impl EventStore {
    /// A stream's events with `version >= from_version`, in version order.
    pub async fn read_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<RecordedEvent>, EventStoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version"
        ))
        .bind(stream_id)
        .bind(from_version as i64)
        .fetch_all(self.pool())
        .await
        .map_err(EventStoreError::classify)
    }

    /// Many streams' events at once, in position order (the ingest path loads a batch's state with this).
    pub async fn read_streams(&self, stream_ids: &[String]) -> Result<Vec<RecordedEvent>, EventStoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM unnest($1::text[]) AS s(id)
             JOIN LATERAL (SELECT * FROM events WHERE stream_id = s.id) e ON true ORDER BY position"
        ))
        .bind(stream_ids)
        .fetch_all(self.pool())
        .await
        .map_err(EventStoreError::classify)
    }

    /// Up to `limit` events with `position > after`, in position order. Positions are gapless and
    /// commit-ordered, so a tailer that remembers the last position it saw never skips an event.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>, EventStoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(EventStoreError::classify)
    }

    /// Up to `limit` events with `after < position <= head` of the shards a projector holds, in position
    /// order: `checkpoints[s]` is shard `s`'s checkpoint (an event of shard s must lie past it), `i64::MAX`
    /// for a shard it does not hold. An event's shard is its stream's hash modulo the number of shards
    /// (migrations/0010), so a document's events stay in one shard, in order.
    pub async fn read_shards(
        &self,
        after: i64,
        head: i64,
        checkpoints: &[i64],
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, EventStoreError> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM events
             WHERE position > $1 AND position <= $2
               AND position > ($3::bigint[])[stream_hash % cardinality($3::bigint[]) + 1]
             ORDER BY position LIMIT $4"
        ))
        .bind(after)
        .bind(head)
        .bind(checkpoints)
        .bind(limit)
        .fetch_all(self.pool())
        .await
        .map_err(EventStoreError::classify)
    }

    /// The position of the last committed event (0 for an empty log).
    pub async fn head(&self) -> Result<i64, EventStoreError> {
        sqlx::query_scalar("SELECT position FROM log_head")
            .fetch_one(self.pool())
            .await
            .map_err(EventStoreError::classify)
    }
}
