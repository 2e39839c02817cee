//! What the read side looks like right now: the log head, each generation's checkpoint and lag, row
//! counts and parked failures; as a report and in the Prometheus text format.

use crate::postgres::Databases;

use super::{GenerationStatus, ReadModelError};

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ProjectionStatus {
    pub generation: i64,
    pub status: GenerationStatus,
    pub model: String,
    pub dimension: i32,
    /// The arithmetic of its vectors: f32, bf16 or int8.
    pub precision: String,
    /// The watermark: every shard has projected the log up to here.
    pub checkpoint: i64,
    /// How many shards the generation's log is split into, and the furthest one's checkpoint.
    pub shards: i32,
    pub furthest_shard: i64,
    pub lag_events: i64,
    /// Age of the oldest event not yet projected (0 when caught up).
    pub lag_seconds: f64,
    pub documents: i64,
    pub current_chunks: i64,
    pub parked_failures: i64,
    /// Failed attempts in a row at this checkpoint (0 when the last batch committed).
    pub retry_attempts: i32,
    pub retrying_since: Option<chrono::DateTime<chrono::Utc>>,
    pub last_error: Option<String>,
}

/// A projector that has reported in (`recall project`/`worker`, `recall serve`'s own).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema, sqlx::FromRow)]
pub struct WorkerStatus {
    /// `host:pid`.
    pub name: String,
    pub device: String,
    pub generation: Option<i64>,
    /// Shards it holds now (leases not expired).
    pub shards: i64,
    /// Seconds since its last heartbeat.
    pub heartbeat_age_seconds: f64,
}

#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct StatusReport {
    pub head: i64,
    pub projections: Vec<ProjectionStatus>,
    /// Workers heard from in the last minute.
    pub workers: Vec<WorkerStatus>,
}

impl StatusReport {
    /// The generation that searches read, if there is one.
    pub fn active(&self) -> Option<&ProjectionStatus> {
        self.projections.iter().find(|p| p.status == GenerationStatus::Active)
    }
}

/// The report, from the read model's database (checkpoints and counts) and the log's (the head, the age
/// of the first unprojected event); the same database or two.
pub async fn status(databases: &Databases) -> Result<StatusReport, ReadModelError> {
    let (log, pool) = (databases.log(), databases.read_model());
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        i64,
        String,
        String,
        String,
        i32,
        i64,
        i64,
        i64,
        i64,
        i32,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
        i32,
        i64,
        String,
    )> = sqlx::query_as(
        "SELECT p.generation, p.status, p.model_name, p.model_revision, p.dimension,
                projection_watermark(p.generation),
                (SELECT count(*) FROM documents d WHERE d.generation = p.generation AND NOT d.removed),
                (SELECT count(*) FROM chunks c WHERE c.generation = p.generation AND c.valid_to IS NULL),
                (SELECT count(*) FROM projection_failures f WHERE f.generation = p.generation AND f.resolved_at IS NULL),
                p.retry_attempts, p.retrying_since, p.last_error, p.shards,
                (SELECT coalesce(max(s.checkpoint), 0) FROM projection_shards s WHERE s.generation = p.generation),
                p.precision
         FROM projections p ORDER BY p.generation",
    )
    .fetch_all(pool)
    .await?;
    // Read after the checkpoints, so that no lag comes out negative.
    let head: i64 = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(log)
        .await?;
    let next: Vec<i64> = rows.iter().map(|r| r.5 + 1).collect();
    let ages: std::collections::HashMap<i64, f64> = sqlx::query_as(
        "SELECT position, extract(epoch FROM now() - recorded_at)::float8 FROM events WHERE position = ANY($1)",
    )
    .bind(&next)
    .fetch_all(log)
    .await?
    .into_iter()
    .collect();
    let projections = rows
        .into_iter()
        .map(
            |(
                generation,
                status,
                name,
                revision,
                dimension,
                checkpoint,
                documents,
                chunks,
                failures,
                retry_attempts,
                retrying_since,
                last_error,
                shards,
                furthest_shard,
                precision,
            )| {
                ProjectionStatus {
                    generation,
                    // The table's CHECK admits only the three names.
                    status: GenerationStatus::try_from(status).unwrap_or(GenerationStatus::Retired),
                    model: format!("{name}@{revision}"),
                    dimension,
                    precision,
                    checkpoint,
                    shards,
                    furthest_shard,
                    lag_events: head - checkpoint,
                    lag_seconds: ages.get(&(checkpoint + 1)).copied().unwrap_or(0.0).max(0.0),
                    documents,
                    current_chunks: chunks,
                    parked_failures: failures,
                    retry_attempts,
                    retrying_since,
                    last_error,
                }
            },
        )
        .collect();
    let workers = sqlx::query_as(
        "SELECT w.name, w.device, w.generation,
                (SELECT count(*) FROM projection_shards s WHERE s.owner = w.id AND s.lease_expires > now()) AS shards,
                extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age_seconds
         FROM projection_workers w WHERE w.heartbeat_at > now() - interval '1 minute' ORDER BY w.name",
    )
    .fetch_all(pool)
    .await?;
    Ok(StatusReport {
        head,
        projections,
        workers,
    })
}

/// A gauge's name, help text and value.
type Gauge = (&'static str, &'static str, fn(&ProjectionStatus) -> f64);

impl StatusReport {
    /// Gauges in the Prometheus text exposition format.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP recall_log_head_position Position of the last committed event.\n# TYPE recall_log_head_position gauge\n");
        out.push_str(&format!("recall_log_head_position {}\n", self.head));
        out.push_str("# HELP recall_projection_workers Projectors heard from in the last minute.\n# TYPE recall_projection_workers gauge\n");
        out.push_str(&format!("recall_projection_workers {}\n", self.workers.len()));
        let gauges: [Gauge; 8] = [
            (
                "recall_projection_checkpoint",
                "The watermark: every shard has projected the log up to here.",
                |p| p.checkpoint as f64,
            ),
            ("recall_projection_lag_events", "Events not yet projected.", |p| {
                p.lag_events as f64
            }),
            (
                "recall_projection_lag_seconds",
                "Age of the oldest event not yet projected.",
                |p| p.lag_seconds,
            ),
            (
                "recall_projection_documents",
                "Live documents in the read model.",
                |p| p.documents as f64,
            ),
            ("recall_projection_chunks", "Current chunks in the read model.", |p| {
                p.current_chunks as f64
            }),
            (
                "recall_projection_parked_failures",
                "Events parked by the projector.",
                |p| p.parked_failures as f64,
            ),
            (
                "recall_projection_retry_attempts",
                "Failed attempts in a row at the checkpoint (0 while projecting normally).",
                |p| p.retry_attempts as f64,
            ),
            (
                "recall_projection_retrying_seconds",
                "How long the projector has been retrying at its checkpoint (0 while projecting normally).",
                |p| {
                    p.retrying_since
                        .map_or(0.0, |t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1e3)
                },
            ),
        ];
        for (name, help, value) in gauges {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for p in &self.projections {
                out.push_str(&format!(
                    "{name}{{generation=\"{}\",status=\"{}\",model=\"{}\"}} {}\n",
                    p.generation,
                    p.status,
                    p.model.replace('"', "'"),
                    value(p)
                ));
            }
        }
        out
    }
}
