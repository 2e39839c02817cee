//! Events the projector parked: what failed, where, how often, and whether a retry resolved it.

use sqlx::PgPool;

use super::ReadModelError;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct ParkedFailure {
    pub generation: i64,
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub stream_id: String,
    pub event_type: String,
    pub error: String,
    pub attempts: i32,
    pub first_failed_at: chrono::DateTime<chrono::Utc>,
    pub last_failed_at: chrono::DateTime<chrono::Utc>,
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Parked failures of every generation (resolved ones too when `all`).
pub async fn failures(pool: &PgPool, all: bool) -> Result<Vec<ParkedFailure>, ReadModelError> {
    Ok(sqlx::query_as(
        "SELECT generation, position, event_id, stream_id, event_type, error, attempts, first_failed_at,
                last_failed_at, resolved_at
         FROM projection_failures WHERE $1 OR resolved_at IS NULL ORDER BY generation, position",
    )
    .bind(all)
    .fetch_all(pool)
    .await?)
}
