//! One document as the active generation has it, with the checkpoint read in the same statement.

use sqlx::PgPool;

use super::{GenerationStatus, ReadModelError};
use crate::domain::DocumentKey;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProjectedDocument {
    pub title: String,
    pub metadata: serde_json::Value,
    pub version: i64,
    pub removed: bool,
    /// The log position of the event this state was projected from.
    pub position: i64,
    pub text: String,
    /// Current chunks of the document.
    pub chunks: i64,
    /// The active generation's checkpoint: the receipt of this read.
    pub checkpoint: i64,
}

pub async fn document(pool: &PgPool, key: &DocumentKey) -> Result<Option<ProjectedDocument>, ReadModelError> {
    Ok(sqlx::query_as(
        "SELECT d.title, d.metadata, d.version, d.removed, d.position, coalesce(v.text, '') AS text,
                (SELECT count(*) FROM chunks c WHERE c.generation = d.generation AND c.scope = d.scope
                    AND c.document_id = d.id AND c.valid_to IS NULL) AS chunks,
                p.checkpoint
         FROM projections p
         JOIN documents d ON d.generation = p.generation
         LEFT JOIN document_versions v ON v.generation = d.generation AND v.position = d.position
         WHERE p.status = $3 AND d.scope = $1 AND d.id = $2",
    )
    .bind(key.scope.as_str())
    .bind(key.id.as_str())
    .bind(GenerationStatus::Active.as_str())
    .fetch_optional(pool)
    .await?)
}
