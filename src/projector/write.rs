//! Writing a prepared batch: every effect and the checkpoint in one transaction, so that each event's
//! effect lands exactly once whenever the process dies. The checkpoint updates are guarded by the values
//! the writer started from and by its leases: a second writer that raced it finds nothing to update and
//! rolls back.

use std::collections::HashMap;

use pgvector::Vector;
use sqlx::PgConnection;

use super::prepare::{Effect, PreparedBatch};
use super::shards::Advance;
use super::ProjectorError;
use crate::read_model::PROJECTED_CHANNEL;

#[derive(Default)]
struct ChunkRows {
    scope: Vec<String>,
    document_id: Vec<String>,
    valid_from: Vec<i64>,
    chunk_index: Vec<i32>,
    valid_to: Vec<Option<i64>>,
    char_start: Vec<i32>,
    char_end: Vec<i32>,
    text: Vec<String>,
    tokens: Vec<i32>,
    embedding: Vec<Vector>,
    title: Vec<String>,
    page_start: Vec<Option<i32>>,
    page_end: Vec<Option<i32>>,
    /// Heading paths as JSON arrays: an array of arrays cannot be unnested row by row.
    section: Vec<Option<serde_json::Value>>,
}

/// What each version said (migrations/0007), for as-of searches and document reads.
#[derive(Default)]
struct VersionRows {
    scope: Vec<String>,
    id: Vec<String>,
    position: Vec<i64>,
    title: Vec<String>,
    metadata: Vec<serde_json::Value>,
    text: Vec<String>,
    origin: Vec<Option<serde_json::Value>>,
}

#[derive(Default)]
struct DocumentRows {
    scope: Vec<String>,
    id: Vec<String>,
    title: Vec<String>,
    metadata: Vec<serde_json::Value>,
    version: Vec<i64>,
    removed: Vec<bool>,
    position: Vec<i64>,
}

/// Applies the effects of a batch inside `tx`; does not touch the checkpoint.
pub(crate) async fn apply_effects(
    tx: &mut PgConnection,
    generation: i64,
    effects: &[Effect],
) -> Result<(), ProjectorError> {
    // Current chunks of a document close at the position of the first change to it in this batch; the
    // chunks this batch adds close at the next change within the batch.
    let mut superseded: Vec<(String, String, i64)> = Vec::new();
    let mut open_rows: HashMap<(String, String), Vec<usize>> = HashMap::new();
    let mut final_docs: HashMap<(String, String), usize> = HashMap::new();
    let mut rows = ChunkRows::default();
    let mut versions = VersionRows::default();
    let mut docs: Vec<(String, String, String, serde_json::Value, i64, bool, i64)> = Vec::new();
    let mut failures = Vec::new();
    for effect in effects {
        let (scope, id, position) = match effect {
            Effect::Upsert {
                scope, id, position, ..
            }
            | Effect::Remove {
                scope, id, position, ..
            } => (scope, id, *position),
            Effect::Failed { .. } => {
                failures.push(effect);
                continue;
            }
        };
        let key = (scope.clone(), id.clone());
        match open_rows.get_mut(&key) {
            Some(open) => {
                for row in open.drain(..) {
                    rows.valid_to[row] = Some(position);
                }
            }
            None => {
                superseded.push((scope.clone(), id.clone(), position));
                open_rows.insert(key.clone(), Vec::new());
            }
        }
        let doc_row = match effect {
            Effect::Upsert {
                version,
                title,
                metadata,
                text,
                origin,
                chunks,
                ..
            } => {
                versions.scope.push(scope.clone());
                versions.id.push(id.clone());
                versions.position.push(position);
                versions.title.push(title.clone());
                versions.metadata.push(metadata.clone());
                versions.text.push(text.clone());
                versions.origin.push(origin.clone());
                let open = open_rows.get_mut(&key).expect("inserted above");
                for c in chunks {
                    open.push(rows.scope.len());
                    rows.scope.push(scope.clone());
                    rows.document_id.push(id.clone());
                    rows.valid_from.push(position);
                    rows.chunk_index.push(c.index);
                    rows.valid_to.push(None);
                    rows.char_start.push(c.char_start);
                    rows.char_end.push(c.char_end);
                    rows.text.push(c.text.clone());
                    rows.tokens.push(c.tokens);
                    rows.embedding.push(Vector::from(c.embedding.clone()));
                    rows.title.push(title.clone());
                    rows.page_start.push(c.pages.map(|p| p.0));
                    rows.page_end.push(c.pages.map(|p| p.1));
                    rows.section.push(c.section.as_ref().map(|s| serde_json::json!(s)));
                }
                (
                    scope.clone(),
                    id.clone(),
                    title.clone(),
                    metadata.clone(),
                    *version,
                    false,
                    position,
                )
            }
            Effect::Remove { version, .. } => {
                // Keep what the document last said, when this batch has it.
                let (title, metadata) = match final_docs.get(&key) {
                    Some(&i) => (docs[i].2.clone(), docs[i].3.clone()),
                    None => (String::new(), serde_json::json!({})),
                };
                (scope.clone(), id.clone(), title, metadata, *version, true, position)
            }
            Effect::Failed { .. } => unreachable!("handled above"),
        };
        match final_docs.get(&key) {
            Some(&i) => docs[i] = doc_row,
            None => {
                final_docs.insert(key, docs.len());
                docs.push(doc_row);
            }
        }
    }

    if !superseded.is_empty() {
        let (s, i, p): (Vec<_>, Vec<_>, Vec<_>) = unzip3(superseded);
        sqlx::query(
            "UPDATE chunks c SET valid_to = u.position
             FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(scope, id, position)
             WHERE c.generation = $1 AND c.scope = u.scope AND c.document_id = u.id AND c.valid_to IS NULL",
        )
        .bind(generation)
        .bind(s)
        .bind(i)
        .bind(p)
        .execute(&mut *tx)
        .await?;
    }
    if !rows.scope.is_empty() {
        sqlx::query(
            "INSERT INTO chunks (generation, scope, document_id, valid_from, chunk_index, valid_to, char_start,
                                 char_end, text, tokens, embedding, title, page_start, page_end, section)
             SELECT $1, u.scope, u.document_id, u.valid_from, u.chunk_index, u.valid_to, u.char_start, u.char_end,
                    u.text, u.tokens, u.embedding, u.title, u.page_start, u.page_end,
                    CASE WHEN u.section IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(u.section)) END
             FROM unnest($2::text[], $3::text[], $4::bigint[], $5::int[], $6::bigint[], $7::int[], $8::int[],
                         $9::text[], $10::int[], $11::vector[], $12::text[], $13::int[], $14::int[], $15::jsonb[])
                  AS u(scope, document_id, valid_from, chunk_index, valid_to, char_start, char_end, text, tokens,
                       embedding, title, page_start, page_end, section)",
        )
        .bind(generation)
        .bind(rows.scope)
        .bind(rows.document_id)
        .bind(rows.valid_from)
        .bind(rows.chunk_index)
        .bind(rows.valid_to)
        .bind(rows.char_start)
        .bind(rows.char_end)
        .bind(rows.text)
        .bind(rows.tokens)
        .bind(rows.embedding)
        .bind(rows.title)
        .bind(rows.page_start)
        .bind(rows.page_end)
        .bind(rows.section)
        .execute(&mut *tx)
        .await?;
    }
    if !versions.position.is_empty() {
        // A parked event retried later may be applied again: its version is already there.
        sqlx::query(
            "INSERT INTO document_versions (generation, scope, id, position, title, metadata, text, origin)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::jsonb[], $7::text[],
                                      $8::jsonb[])
             ON CONFLICT (generation, position) DO NOTHING",
        )
        .bind(generation)
        .bind(versions.scope)
        .bind(versions.id)
        .bind(versions.position)
        .bind(versions.title)
        .bind(versions.metadata)
        .bind(versions.text)
        .bind(versions.origin)
        .execute(&mut *tx)
        .await?;
    }
    if !docs.is_empty() {
        let mut d = DocumentRows::default();
        for (scope, id, title, metadata, version, removed, position) in docs {
            d.scope.push(scope);
            d.id.push(id);
            d.title.push(title);
            d.metadata.push(metadata);
            d.version.push(version);
            d.removed.push(removed);
            d.position.push(position);
        }
        // A removal keeps the title and metadata the document last had, for history views.
        sqlx::query(
            "INSERT INTO documents (generation, scope, id, title, metadata, version, removed, position)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::jsonb[], $6::bigint[], $7::bool[], $8::bigint[])
             ON CONFLICT (generation, scope, id) DO UPDATE SET
                 title = CASE WHEN EXCLUDED.removed THEN documents.title ELSE EXCLUDED.title END,
                 metadata = CASE WHEN EXCLUDED.removed THEN documents.metadata ELSE EXCLUDED.metadata END,
                 version = EXCLUDED.version, removed = EXCLUDED.removed, position = EXCLUDED.position",
        )
        .bind(generation)
        .bind(d.scope)
        .bind(d.id)
        .bind(d.title)
        .bind(d.metadata)
        .bind(d.version)
        .bind(d.removed)
        .bind(d.position)
        .execute(&mut *tx)
        .await?;
    }
    for failure in failures {
        if let Effect::Failed {
            position,
            event_id,
            stream_id,
            event_type,
            error,
        } = failure
        {
            tracing::warn!(position, %stream_id, %event_type, %error, "parking an event the projector cannot apply");
            sqlx::query(
                "INSERT INTO projection_failures (generation, position, event_id, stream_id, event_type, error)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (generation, position) DO UPDATE SET attempts = projection_failures.attempts + 1,
                     error = EXCLUDED.error, last_failed_at = now(), resolved_at = NULL",
            )
            .bind(generation)
            .bind(position)
            .bind(event_id)
            .bind(stream_id)
            .bind(event_type)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}

fn unzip3<A, B, C>(v: Vec<(A, B, C)>) -> (Vec<A>, Vec<B>, Vec<C>) {
    let mut a = Vec::with_capacity(v.len());
    let mut b = Vec::with_capacity(v.len());
    let mut c = Vec::with_capacity(v.len());
    for (x, y, z) in v {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

/// Writes a batch and moves the checkpoints of the shards it covers as `advance` says, atomically. Every
/// shard must still be at the checkpoint the batch was read from and owned by `worker`: a worker whose
/// lease has passed to another, or that raced one, finds fewer rows to update and rolls back.
#[tracing::instrument(skip_all, fields(generation, effects = batch.effects.len()))]
pub(crate) async fn write_batch(
    pool: &sqlx::PgPool,
    generation: i64,
    worker: uuid::Uuid,
    advance: &Advance,
    batch: &PreparedBatch,
) -> Result<i64, ProjectorError> {
    let mut tx = pool.begin().await?;
    // The read model is derived: a crash that loses this commit only means re-projecting its events from
    // the older checkpoint. Not waiting for the flush keeps the projector's large WAL writes from
    // delaying the command path's own commits, which do wait.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let (shards, from, to) = advance.rows();
    let moved = sqlx::query(
        "UPDATE projection_shards s SET checkpoint = u.next, updated_at = now()
         FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS u(shard, expected, next)
         WHERE s.generation = $1 AND s.shard = u.shard AND s.checkpoint = u.expected AND s.owner = $5
           AND EXISTS (SELECT 1 FROM projections p WHERE p.generation = $1 AND p.status <> $6)",
    )
    .bind(generation)
    .bind(&shards)
    .bind(&from)
    .bind(&to)
    .bind(worker)
    .bind(crate::read_model::GenerationStatus::Retired.as_str())
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() != shards.len() as u64 {
        tx.rollback().await?;
        return Err(ProjectorError::LostCheckpoint {
            generation,
            expected: from.iter().copied().min().unwrap_or(0),
        });
    }
    apply_effects(&mut tx, generation, &batch.effects).await?;
    // Touches the generation's row only when a retry is recorded there, so that workers writing other
    // shards at once do not queue on it.
    sqlx::query(
        "UPDATE projections SET retry_attempts = 0, retrying_since = NULL, last_error = NULL
         WHERE generation = $1 AND retry_attempts <> 0",
    )
    .bind(generation)
    .execute(&mut *tx)
    .await?;
    let low = advance.low();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROJECTED_CHANNEL)
        .bind(format!("{generation}:{low}"))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(low)
}
