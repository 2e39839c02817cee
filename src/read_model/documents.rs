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
    /// The original file it was extracted from (media type, size, SHA-256, pages, sections), if any.
    pub origin: Option<serde_json::Value>,
    /// Current chunks of the document.
    pub chunks: i64,
    /// The active generation's checkpoint: the receipt of this read.
    pub checkpoint: i64,
}

/// A current document, as a listing shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DocumentSummary {
    pub scope: String,
    pub id: String,
    pub title: String,
    /// The text's length in bytes.
    pub bytes: i32,
}

/// Current (not removed) documents of the active generation in (scope, id) order, from after `after`.
pub async fn list_documents(
    pool: &PgPool,
    after: Option<&DocumentKey>,
    limit: i64,
) -> Result<Vec<DocumentSummary>, ReadModelError> {
    Ok(sqlx::query_as(
        "SELECT d.scope, d.id, d.title, octet_length(coalesce(v.text, '')) AS bytes
         FROM projections p
         JOIN documents d ON d.generation = p.generation
         LEFT JOIN document_versions v ON v.generation = d.generation AND v.position = d.position
         WHERE p.status = $1 AND NOT d.removed AND ($2::text IS NULL OR (d.scope, d.id) > ($2, $3))
         ORDER BY d.scope, d.id
         LIMIT $4",
    )
    .bind(GenerationStatus::Active.as_str())
    .bind(after.map(|k| k.scope.as_str()))
    .bind(after.map(|k| k.id.as_str()).unwrap_or(""))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

pub async fn document(pool: &PgPool, key: &DocumentKey) -> Result<Option<ProjectedDocument>, ReadModelError> {
    Ok(sqlx::query_as(
        "SELECT d.title, d.metadata, d.version, d.removed, d.position, coalesce(v.text, '') AS text, v.origin,
                (SELECT count(*) FROM chunks c WHERE c.generation = d.generation AND c.scope = d.scope
                    AND c.document_id = d.id AND c.valid_to IS NULL) AS chunks,
                projection_watermark(p.generation) AS checkpoint
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
