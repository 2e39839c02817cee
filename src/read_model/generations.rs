//! Generations of the read model: the active one serves, a building one is being filled by a rebuild.
//! Each records the model that embedded it; a projector with another model is refused.

use sqlx::PgPool;

use super::ReadModelError;
use crate::embed::{ModelIdentity, Precision};

/// Where a generation is in its life. Stored as its lowercase name (`projections.status`); SQL binds it
/// from here rather than spelling it, so that the names live in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GenerationStatus {
    /// Being filled by a rebuild while the active one serves.
    Building,
    /// The one searches read.
    Active,
    /// Replaced by a rebuild; dropped with its rows.
    Retired,
}

impl GenerationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            GenerationStatus::Building => "building",
            GenerationStatus::Active => "active",
            GenerationStatus::Retired => "retired",
        }
    }
}

impl std::fmt::Display for GenerationStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for GenerationStatus {
    type Error = String;

    fn try_from(status: String) -> Result<Self, String> {
        match status.as_str() {
            "building" => Ok(GenerationStatus::Building),
            "active" => Ok(GenerationStatus::Active),
            "retired" => Ok(GenerationStatus::Retired),
            other => Err(format!("unknown generation status {other:?}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct Generation {
    pub generation: i64,
    #[sqlx(try_from = "String")]
    pub status: GenerationStatus,
    pub model_name: String,
    pub model_revision: String,
    pub dimension: i32,
    /// The arithmetic its vectors were computed in: workers and queries use the same.
    #[sqlx(try_from = "String")]
    pub precision: Precision,
    /// How many shards its log is split into (fixed for its life).
    pub shards: i32,
    /// The watermark: every shard has projected the log up to this position (migrations/0010).
    pub checkpoint: i64,
}

impl Generation {
    pub fn model(&self) -> String {
        format!("{}@{}", self.model_name, self.model_revision)
    }

    /// Whether vectors of `identity` (model and precision) belong with this generation's.
    pub fn admits(&self, identity: &ModelIdentity) -> Result<(), ReadModelError> {
        if self.model_name == identity.name
            && self.model_revision == identity.revision
            && self.dimension as usize == identity.dimension
            && self.precision == identity.precision
        {
            Ok(())
        } else {
            Err(ReadModelError::ModelMismatch {
                generation: self.generation,
                stored: format!("{} at {}", self.model(), self.precision),
                offered: format!("{}@{} at {}", identity.name, identity.revision, identity.precision),
            })
        }
    }
}

const COLUMNS: &str =
    "generation, status, model_name, model_revision, dimension, precision, shards, projection_watermark(generation) AS checkpoint";

/// The active generation's watermark (0 before there is one): what read-your-writes waits on and a replica
/// is judged by.
pub async fn active_watermark(pool: &PgPool) -> Result<i64, sqlx::Error> {
    let watermark: Option<i64> =
        sqlx::query_scalar("SELECT projection_watermark(generation) FROM projections WHERE status = $1")
            .bind(GenerationStatus::Active.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(watermark.unwrap_or(0))
}

/// The generation's watermark: the lowest of its shards' checkpoints.
pub async fn watermark(pool: &PgPool, generation: i64) -> Result<i64, ReadModelError> {
    Ok(sqlx::query_scalar("SELECT projection_watermark($1)")
        .bind(generation)
        .fetch_one(pool)
        .await?)
}

/// The dimension of the `chunks.embedding` column.
pub async fn table_dimension(pool: &PgPool) -> Result<usize, ReadModelError> {
    let typmod: i32 = sqlx::query_scalar(
        "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'",
    )
    .fetch_one(pool)
    .await?;
    Ok(typmod as usize)
}

async fn check_dimension(pool: &PgPool, identity: &ModelIdentity) -> Result<(), ReadModelError> {
    let table = table_dimension(pool).await?;
    if table != identity.dimension {
        return Err(ReadModelError::DimensionMismatch {
            model: format!("{}@{}", identity.name, identity.revision),
            dimension: identity.dimension,
            table,
        });
    }
    Ok(())
}

pub async fn load(pool: &PgPool, generation: i64) -> Result<Generation, ReadModelError> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM projections WHERE generation = $1"))
        .bind(generation)
        .fetch_optional(pool)
        .await?
        .ok_or(ReadModelError::NoSuchGeneration { generation })
}

pub async fn active(pool: &PgPool) -> Result<Option<Generation>, ReadModelError> {
    Ok(
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM projections WHERE status = $1"))
            .bind(GenerationStatus::Active.as_str())
            .fetch_optional(pool)
            .await?,
    )
}

/// The active generation, created (empty, at checkpoint 0, in `shards` shards) on first use; refused if
/// another model built it.
pub async fn active_for(pool: &PgPool, identity: &ModelIdentity, shards: i32) -> Result<Generation, ReadModelError> {
    check_dimension(pool, identity).await?;
    if let Some(g) = active(pool).await? {
        g.admits(identity)?;
        return Ok(g);
    }
    let created = sqlx::query_as(&format!(
        "INSERT INTO projections (status, model_name, model_revision, dimension, shards, precision, activated_at)
         VALUES ($4, $1, $2, $3, $5, $6, now()) ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(&identity.name)
    .bind(&identity.revision)
    .bind(identity.dimension as i32)
    .bind(GenerationStatus::Active.as_str())
    .bind(shards)
    .bind(identity.precision.as_str())
    .fetch_optional(pool)
    .await?;
    match created {
        Some(g) => Ok(g),
        // Another process created it first.
        None => {
            let g = active(pool).await?.ok_or(ReadModelError::NoActiveGeneration)?;
            g.admits(identity)?;
            Ok(g)
        }
    }
}

/// Ties `generation` to the log in `log` on first use and checks that it is that log's afterwards, so that
/// a read model in a database of its own is never projected from two logs.
pub async fn claim_for_log(log: &PgPool, pool: &PgPool, generation: i64) -> Result<(), ReadModelError> {
    let id: uuid::Uuid = sqlx::query_scalar("SELECT log_id FROM log_head").fetch_one(log).await?;
    let stored = || {
        sqlx::query_scalar::<_, Option<uuid::Uuid>>("SELECT log_id FROM projections WHERE generation = $1")
            .bind(generation)
            .fetch_optional(pool)
    };
    let mut claimed = stored().await?;
    if claimed == Some(None) {
        // First use; a concurrent claim wins or loses on the row, and either way it is read back.
        sqlx::query("UPDATE projections SET log_id = $2 WHERE generation = $1 AND log_id IS NULL")
            .bind(generation)
            .bind(id)
            .execute(pool)
            .await?;
        claimed = stored().await?;
    }
    let claimed = claimed.flatten();
    match claimed {
        None => Err(ReadModelError::NoSuchGeneration { generation }),
        Some(claimed) if claimed != id => Err(ReadModelError::OtherLog {
            generation,
            claimed,
            log: id,
        }),
        Some(_) => Ok(()),
    }
}

/// A new, empty generation in `shards` shards for a rebuild with this model.
pub async fn create_building(
    pool: &PgPool,
    identity: &ModelIdentity,
    shards: i32,
) -> Result<Generation, ReadModelError> {
    check_dimension(pool, identity).await?;
    Ok(sqlx::query_as(&format!(
        "INSERT INTO projections (status, model_name, model_revision, dimension, shards, precision)
         VALUES ($4, $1, $2, $3, $5, $6) RETURNING {COLUMNS}"
    ))
    .bind(&identity.name)
    .bind(&identity.revision)
    .bind(identity.dimension as i32)
    .bind(GenerationStatus::Building.as_str())
    .bind(shards)
    .bind(identity.precision.as_str())
    .fetch_one(pool)
    .await?)
}

/// Makes `generation` active if it has projected the whole log; the log's head is locked meanwhile (in
/// the log's database, `log`, which may be the read model's, `pool`), so no append can slip in between the
/// check and the switch, and a receipt never goes back. Returns false when it is not caught up yet.
pub async fn activate_if_caught_up(log: &PgPool, pool: &PgPool, generation: i64) -> Result<bool, ReadModelError> {
    // Two transactions even in one database: the head's lock is held until the switch has committed.
    let mut head_lock = log.begin().await?;
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head FOR SHARE")
        .fetch_one(&mut *head_lock)
        .await?;
    let mut tx = pool.begin().await?;
    // Shards only move forward, and nothing can be appended while the head is locked.
    let checkpoint: i64 =
        sqlx::query_scalar("SELECT projection_watermark(generation) FROM projections WHERE generation = $1 FOR UPDATE")
            .bind(generation)
            .fetch_one(&mut *tx)
            .await?;
    if checkpoint < head {
        tx.rollback().await?;
        head_lock.rollback().await?;
        return Ok(false);
    }
    sqlx::query("UPDATE projections SET status = $1, updated_at = now() WHERE status = $2")
        .bind(GenerationStatus::Retired.as_str())
        .bind(GenerationStatus::Active.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projections SET status = $2, activated_at = now(), updated_at = now() WHERE generation = $1")
        .bind(generation)
        .bind(GenerationStatus::Active.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    head_lock.commit().await?;
    Ok(true)
}

/// Drops retired generations and their rows.
pub async fn drop_retired(pool: &PgPool) -> Result<u64, ReadModelError> {
    Ok(sqlx::query("DELETE FROM projections WHERE status = $1")
        .bind(GenerationStatus::Retired.as_str())
        .execute(pool)
        .await?
        .rows_affected())
}
