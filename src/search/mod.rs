//! Dense search over the read model: the nearest current chunks to a query vector (HNSW over current
//! chunks), or the chunks that were current at a past log position (`as_of`), with the position the read
//! model reflected as the answer's receipt.

mod encoder;

pub use encoder::QueryEncoder;

use serde::Serialize;
use sqlx::PgPool;
use thiserror::Error;

use crate::domain::Scope;

#[derive(Debug, Error)]
pub enum SearchError {
    #[error("k must be between 1 and {max}, not {k}")]
    BadK { k: usize, max: usize },
    #[error(
        "as_of position {as_of} is ahead of what the read model reflects ({checkpoint}); wait for it or search live"
    )]
    AsOfAhead { as_of: i64, checkpoint: i64 },
    #[error("as_of must be a log position of 0 or more, not {0}")]
    BadAsOf(i64),
    #[error("the filter must be a JSON object of metadata keys and values")]
    BadFilter,
    #[error("there is no read model yet; run `recall project`")]
    NoReadModel,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

pub const MAX_K: usize = 100;

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub k: usize,
    pub scope: Option<Scope>,
    /// Metadata that matching documents must contain (`@>`).
    pub filter: Option<serde_json::Value>,
    /// Search the chunks that were current at this log position instead of the current ones.
    pub as_of: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SearchHit {
    pub scope: String,
    pub document_id: String,
    pub chunk_index: i32,
    pub score: f64,
    pub title: String,
    pub text: String,
    pub char_start: i32,
    pub char_end: i32,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct SearchResponse {
    /// The receipt: the log position the read model reflected when it answered. Searching again with
    /// `as_of` set to it gives the same results later.
    pub position: i64,
    pub results: Vec<SearchHit>,
}

/// The live query: HNSW over current chunks, scanning on past filtered-out rows until k are found.
const LIVE: &str = "
SELECT c.scope, c.document_id, c.chunk_index, 1 - (c.embedding <=> $1) AS score, d.title, c.text,
       c.char_start, c.char_end, d.metadata
FROM chunks c
JOIN documents d ON d.generation = c.generation AND d.scope = c.scope AND d.id = c.document_id
WHERE c.valid_to IS NULL AND c.generation = $2 AND ($3::text IS NULL OR c.scope = $3)
  AND ($4::jsonb IS NULL OR d.metadata @> $4)
ORDER BY c.embedding <=> $1
LIMIT $5";

/// As of a past position: the chunks valid then, with the title and metadata their own event carried.
const AS_OF: &str = "
SELECT c.scope, c.document_id, c.chunk_index, 1 - (c.embedding <=> $1) AS score,
       coalesce(e.payload->>'title', '') AS title, c.text, c.char_start, c.char_end,
       coalesce((e.payload->'metadata')::jsonb, '{}'::jsonb) AS metadata
FROM chunks c
JOIN events e ON e.position = c.valid_from
WHERE c.generation = $2 AND c.valid_from <= $6 AND (c.valid_to IS NULL OR c.valid_to > $6)
  AND ($3::text IS NULL OR c.scope = $3)
  AND ($4::jsonb IS NULL OR coalesce((e.payload->'metadata')::jsonb, '{}'::jsonb) @> $4)
ORDER BY c.embedding <=> $1
LIMIT $5";

#[tracing::instrument(skip_all, fields(k = request.k, as_of = ?request.as_of))]
pub async fn search(pool: &PgPool, query: &[f32], request: &SearchRequest) -> Result<SearchResponse, SearchError> {
    if request.k == 0 || request.k > MAX_K {
        return Err(SearchError::BadK {
            k: request.k,
            max: MAX_K,
        });
    }
    if let Some(filter) = &request.filter {
        if !filter.is_object() {
            return Err(SearchError::BadFilter);
        }
    }
    // One snapshot for the receipt and the rows, so the receipt describes exactly what was searched.
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL hnsw.iterative_scan = relaxed_order")
        .execute(&mut *tx)
        .await?;
    let (generation, checkpoint): (i64, i64) =
        sqlx::query_as("SELECT generation, checkpoint FROM projections WHERE status = 'active'")
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(SearchError::NoReadModel)?;
    let vector = pgvector::Vector::from(query.to_vec());
    let scope = request.scope.as_ref().map(|s| s.as_str().to_owned());
    let (sql, position) = match request.as_of {
        None => (LIVE, checkpoint),
        Some(p) if p < 0 => return Err(SearchError::BadAsOf(p)),
        Some(p) if p > checkpoint => return Err(SearchError::AsOfAhead { as_of: p, checkpoint }),
        Some(p) => (AS_OF, p),
    };
    let mut query = sqlx::query_as(sql)
        .bind(vector)
        .bind(generation)
        .bind(scope)
        .bind(&request.filter)
        .bind(request.k as i64);
    if request.as_of.is_some() {
        query = query.bind(position);
    }
    let mut results: Vec<SearchHit> = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    // The relaxed index scan may return near-ties slightly out of order.
    results.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(SearchResponse { position, results })
}
