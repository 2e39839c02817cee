//! The projector: tails the event log from its checkpoint and keeps the pgvector read model of document
//! chunks up to date. Embedding happens outside any transaction, on a blocking thread; each batch's
//! read-model changes and its checkpoint commit together, so every event's effect lands exactly once.
//! While batch N embeds, batch N-1 is written. One projector is active per generation (an advisory lock);
//! it wakes on the append NOTIFY, polls as a fallback, and starts over from its checkpoint after errors.

mod backend;
mod foreground;
mod prepare;
mod write;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::event_store::{EventStore, EventStoreError, NOTIFY_CHANNEL};
use crate::postgres::Databases;
use crate::read_model::{
    activate_if_caught_up, active, active_for, claim_for_log, create_building, drop_retired, load, Generation,
    GenerationStatus, ReadModelError,
};

pub use backend::{EmbedBackend, ModelBackend};
pub use foreground::Foreground;

#[derive(Debug, Error)]
pub enum ProjectorError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error(transparent)]
    ReadModel(#[from] ReadModelError),
    #[error(
        "generation {generation} moved past checkpoint {expected} under this projector (another instance wrote it)"
    )]
    LostCheckpoint { generation: i64, expected: i64 },
    #[error("stopped at position {position} ({event_type} on {stream_id}): {error}; fix the cause and restart, or run with --on-error park")]
    Stopped {
        position: i64,
        stream_id: String,
        event_type: String,
        error: String,
    },
    #[error("the embedding thread panicked: {0}")]
    Panicked(String),
}

impl ProjectorError {
    /// Errors that a retry may cure: connections, a lost race, a restarting server.
    fn is_transient(&self) -> bool {
        matches!(
            self,
            ProjectorError::Database(_)
                | ProjectorError::Store(_)
                | ProjectorError::ReadModel(ReadModelError::Database(_))
                | ProjectorError::LostCheckpoint { .. }
        )
    }

    /// Errors the database raised about what a batch asked of it (a value out of range, a row too large
    /// to index, a statement cancelled by its timeout), rather than about being reachable or about a
    /// concurrent transaction: retrying the same events as they are cannot be expected to help, so the
    /// projector looks for the event at fault and parks it.
    fn is_caused_by_the_events(&self) -> bool {
        match self {
            ProjectorError::Database(e) => {
                !crate::postgres::is_unavailable(e)
                    && match e {
                        // 40: serialization failures and deadlocks, which a retry does cure.
                        sqlx::Error::Database(db) => !db.code().is_some_and(|c| c.starts_with("40")),
                        _ => false,
                    }
            }
            _ => false,
        }
    }
}

/// How many times one event's write is tried, alone, before it is parked with its error.
const ATTEMPTS_PER_EVENT: u32 = 3;

/// What to do with an event the projector cannot apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Record it in the failures table and go on.
    Park,
    /// Stop before it, with the checkpoint just before it.
    Stop,
}

#[derive(Debug, Clone, Copy)]
pub struct ProjectorOptions {
    /// Events read per batch.
    pub batch_events: i64,
    pub on_error: OnError,
    /// How long to sleep when no NOTIFY arrives.
    pub poll_interval: Duration,
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        ProjectorOptions {
            batch_events: 256,
            on_error: OnError::Park,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Running totals, for progress bars and metrics.
#[derive(Debug, Default)]
pub struct ProjectorStats {
    pub events: AtomicU64,
    pub tokens: AtomicU64,
    pub batches: AtomicU64,
    pub parked: AtomicU64,
    pub checkpoint: AtomicU64,
    retrying: std::sync::Mutex<Option<Retrying>>,
}

/// A projector that has failed and is retrying from its checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Retrying {
    /// Failed attempts in a row at this checkpoint.
    pub attempts: u32,
    /// The checkpoint it keeps starting over from.
    pub position: i64,
    pub since: chrono::DateTime<chrono::Utc>,
    pub error: String,
}

impl ProjectorStats {
    /// Whether the projector is retrying after errors, and since when.
    pub fn retrying(&self) -> Option<Retrying> {
        self.retrying.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn record_failure(&self, position: i64, error: String) -> Retrying {
        let mut state = self.retrying.lock().unwrap_or_else(|p| p.into_inner());
        let next = match state.take() {
            Some(r) if r.position == position => Retrying {
                attempts: r.attempts + 1,
                error,
                ..r
            },
            _ => Retrying {
                attempts: 1,
                position,
                since: chrono::Utc::now(),
                error,
            },
        };
        *state = Some(next.clone());
        next
    }

    fn record_progress(&self, checkpoint: i64) {
        self.checkpoint.store(checkpoint as u64, Ordering::Relaxed);
        *self.retrying.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[derive(Clone)]
pub struct Projector {
    /// The read model: effects, checkpoints, the generation's lock.
    pool: PgPool,
    /// The log it tails.
    store: EventStore,
    backend: Arc<dyn EmbedBackend>,
    options: ProjectorOptions,
    stats: Arc<ProjectorStats>,
    foreground: Foreground,
}

/// Which generation a projector serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The active one, following it across rebuilds.
    Active,
    Generation(i64),
}

const LOCK_NAMESPACE: i32 = 0x7265_636c; // "recl"

impl Projector {
    /// Tails `databases`' log into its read model (the same database or another).
    pub fn new(databases: &Databases, backend: Arc<dyn EmbedBackend>, options: ProjectorOptions) -> Self {
        Projector {
            pool: databases.read_model().clone(),
            store: EventStore::new(databases.log().clone()),
            backend,
            options,
            stats: Arc::default(),
            foreground: Foreground::never(),
        }
    }

    /// Takes turns between writing and embedding while `foreground` says requests are arriving (the
    /// backend, given the same handle, also narrows its threads).
    pub fn yielding_to(mut self, foreground: Foreground) -> Self {
        self.foreground = foreground;
        self
    }

    /// The projector as `recall serve` runs it beside the API: model threads on the pools of `cpu`,
    /// yielding a core to `foreground` traffic (give `Foreground::never()` to keep every core busy).
    /// `databases` should be pools opened with `Databases::background_beside`.
    pub fn beside_api(
        databases: &Databases,
        model: (Arc<crate::embed::Embedder>, crate::embed::Chunker),
        cpu: &crate::runtime::CpuPolicy,
        foreground: Foreground,
        options: ProjectorOptions,
    ) -> Result<Self, crate::runtime::PoolError> {
        let (embedder, chunker) = model;
        let (all, narrow) = cpu.projector_pools()?;
        let backend = ModelBackend::shared(embedder, chunker, Some(all)).yielding_to(foreground.clone(), narrow);
        Ok(Projector::new(databases, Arc::new(backend), options).yielding_to(foreground))
    }

    pub fn stats(&self) -> Arc<ProjectorStats> {
        self.stats.clone()
    }

    pub fn backend(&self) -> &Arc<dyn EmbedBackend> {
        &self.backend
    }

    async fn resolve(&self, target: Target) -> Result<Generation, ProjectorError> {
        let generation = match target {
            Target::Active => active_for(&self.pool, self.backend.identity()).await?,
            Target::Generation(g) => load(&self.pool, g).await?,
        };
        generation.admits(self.backend.identity())?;
        claim_for_log(self.store.pool(), &self.pool, generation.generation).await?;
        Ok(generation)
    }

    /// One batch, synchronously: read after the checkpoint, prepare, write. Returns how many events it
    /// projected (0 when caught up). Tests drive the projector with this.
    pub async fn step(&self, target: Target) -> Result<usize, ProjectorError> {
        let generation = self.resolve(target).await?;
        let events = self
            .store
            .read_all(generation.checkpoint, self.options.batch_events)
            .await?;
        if events.is_empty() {
            return Ok(0);
        }
        let batch = self.prepare(events).await?;
        let (batch, stopped) = self.split_at_failure(batch);
        let n = if batch.last_position > generation.checkpoint {
            self.write(generation.generation, generation.checkpoint, batch).await?
        } else {
            0
        };
        match stopped {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Chunks and embeds a batch on a blocking thread. Should the tokenizer or the model panic on some
    /// input, the batch is prepared again event by event and the event that panics is parked, so that
    /// no input can stop the projector.
    async fn prepare(
        &self,
        events: Vec<crate::event_store::RecordedEvent>,
    ) -> Result<prepare::PreparedBatch, ProjectorError> {
        let events: Arc<[crate::event_store::RecordedEvent]> = events.into();
        let (backend, all) = (self.backend.clone(), events.clone());
        match tokio::task::spawn_blocking(move || prepare::prepare(&*backend, &all)).await {
            Ok(batch) => Ok(batch),
            Err(e) if e.is_panic() && events.len() > 1 => {
                tracing::warn!("preparing a batch panicked; preparing its events one by one");
                let mut batch = prepare::PreparedBatch::default();
                for i in 0..events.len() {
                    let (backend, all) = (self.backend.clone(), events.clone());
                    let one = tokio::task::spawn_blocking(move || prepare::prepare(&*backend, &all[i..=i]))
                        .await
                        .unwrap_or_else(|e| prepare::panicked(&events[i], &e));
                    batch.effects.extend(one.effects);
                    batch.tokens += one.tokens;
                    batch.last_position = one.last_position;
                }
                Ok(batch)
            }
            Err(e) if e.is_panic() => Ok(prepare::panicked(&events[0], &e)),
            Err(e) => Err(ProjectorError::Panicked(e.to_string())),
        }
    }

    /// Under `--on-error stop`, cut the batch before its first failure and say why; the part before it
    /// is still written.
    fn split_at_failure(&self, mut batch: prepare::PreparedBatch) -> (prepare::PreparedBatch, Option<ProjectorError>) {
        if self.options.on_error == OnError::Park {
            return (batch, None);
        }
        let Some(i) = batch
            .effects
            .iter()
            .position(|e| matches!(e, prepare::Effect::Failed { .. }))
        else {
            return (batch, None);
        };
        let failure = batch.effects.drain(i..).next();
        let Some(prepare::Effect::Failed {
            position,
            stream_id,
            event_type,
            error,
            ..
        }) = failure
        else {
            unreachable!("found above")
        };
        batch.last_position = position - 1;
        (
            batch,
            Some(ProjectorError::Stopped {
                position,
                stream_id,
                event_type,
                error,
            }),
        )
    }

    /// Writes a prepared batch. When the database rejects it for what it holds, the batch is written
    /// again event by event to find the one at fault, which is parked with the error after
    /// ATTEMPTS_PER_EVENT tries; every other event of the batch is projected.
    async fn write(
        &self,
        generation: i64,
        expected: i64,
        batch: prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        match self.write_once(generation, expected, &batch).await {
            Err(e) if e.is_caused_by_the_events() => {
                tracing::warn!(error = %e, effects = batch.effects.len(), "a batch was refused; writing its events one by one");
                self.write_isolating(generation, expected, batch).await
            }
            other => other,
        }
    }

    async fn write_once(
        &self,
        generation: i64,
        expected: i64,
        batch: &prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        let n = batch.effects.len();
        let parked = batch
            .effects
            .iter()
            .filter(|e| matches!(e, prepare::Effect::Failed { .. }))
            .count();
        let checkpoint = write::write_batch(&self.pool, generation, expected, batch).await?;
        self.stats.events.fetch_add(n as u64, Ordering::Relaxed);
        self.stats.tokens.fetch_add(batch.tokens as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.parked.fetch_add(parked as u64, Ordering::Relaxed);
        self.stats.record_progress(checkpoint);
        Ok(n)
    }

    async fn write_isolating(
        &self,
        generation: i64,
        mut checkpoint: i64,
        batch: prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        let n = batch.effects.len();
        for effect in batch.effects {
            let position = effect.position();
            let single = prepare::PreparedBatch {
                tokens: effect.tokens(),
                last_position: position,
                effects: vec![effect],
            };
            let mut attempt = 1;
            loop {
                match self.write_once(generation, checkpoint, &single).await {
                    Ok(_) => break,
                    Err(e) if e.is_caused_by_the_events() && attempt < ATTEMPTS_PER_EVENT => attempt += 1,
                    Err(e) if e.is_caused_by_the_events() => {
                        let failed = single.effects[0].failed(format!("writing to the read model failed: {e}"));
                        let parked = prepare::PreparedBatch {
                            effects: vec![failed],
                            last_position: position,
                            tokens: 0,
                        };
                        // Under `--on-error stop`, stop before it as for any other failure.
                        if let (_, Some(stopped)) = self.split_at_failure(parked.clone()) {
                            return Err(stopped);
                        }
                        self.write_once(generation, checkpoint, &parked).await?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            checkpoint = position;
        }
        if batch.last_position > checkpoint {
            // Nothing left to apply (a batch cut short), but the checkpoint still moves to its end.
            let rest = prepare::PreparedBatch {
                last_position: batch.last_position,
                ..Default::default()
            };
            self.write_once(generation, checkpoint, &rest).await?;
        }
        Ok(n)
    }

    /// Projects until the checkpoint reaches the head that was current when it last looked.
    pub async fn run_until_caught_up(&self, target: Target) -> Result<Generation, ProjectorError> {
        self.run_with(target, true, std::future::pending()).await?;
        self.resolve(target).await
    }

    /// Projects forever (until `shutdown` resolves), following the log as it grows.
    pub async fn run(&self, target: Target, shutdown: impl Future<Output = ()>) -> Result<(), ProjectorError> {
        self.run_with(target, false, shutdown).await
    }

    async fn run_with(
        &self,
        target: Target,
        until_caught_up: bool,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectorError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = self.run_locked(target, until_caught_up, shutdown.as_mut());
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    let position = self.stats.checkpoint.load(Ordering::Relaxed) as i64;
                    let retrying = self.stats.record_failure(position, e.to_string());
                    tracing::warn!(error = %e, retry_in = ?backoff, attempts = retrying.attempts, "projector error; starting over from the checkpoint");
                    self.record_retry(target, &retrying).await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.as_mut() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Best effort (the database may be what fails): where `recall status` and /metrics see it.
    async fn record_retry(&self, target: Target, retrying: &Retrying) {
        let generation = match target {
            Target::Generation(g) => Some(g),
            Target::Active => None,
        };
        let recorded = sqlx::query(
            "UPDATE projections SET retry_attempts = $2, retrying_since = $3, last_error = $4
             WHERE CASE WHEN $1::bigint IS NULL THEN status = $5 ELSE generation = $1 END",
        )
        .bind(generation)
        .bind(retrying.attempts as i32)
        .bind(retrying.since)
        .bind(&retrying.error)
        .bind(GenerationStatus::Active.as_str())
        .execute(&self.pool)
        .await;
        if let Err(e) = recorded {
            tracing::debug!(error = %e, "could not record the projector's retry");
        }
    }

    /// Holds the generation's advisory lock on a connection of its own while projecting.
    async fn run_locked(
        &self,
        target: Target,
        until_caught_up: bool,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), ProjectorError> {
        let generation = self.resolve(target).await?;
        let mut lock = self.pool.acquire().await?;
        let mut said = false;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2::int)")
                .bind(LOCK_NAMESPACE)
                .bind(generation.generation as i32)
                .fetch_one(&mut *lock)
                .await?;
            if got {
                break;
            }
            if !said {
                tracing::warn!(
                    generation = generation.generation,
                    "another projector is active for this generation; waiting for it to stop"
                );
                said = true;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.as_mut() => return Ok(()),
            }
        }
        if said {
            tracing::warn!(
                generation = generation.generation,
                "the other projector stopped; this one is now active"
            );
        }
        let id = generation.generation as i32;
        let result = self.pipeline(generation, target, until_caught_up, shutdown).await;
        // Release explicitly; if the connection is gone, the server released the lock with it.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2::int)")
            .bind(LOCK_NAMESPACE)
            .bind(id)
            .execute(&mut *lock)
            .await;
        result.map(|_| ())
    }

    /// The overlapped loop: read batch N and embed it while batch N-1 is being written.
    async fn pipeline(
        &self,
        generation: Generation,
        target: Target,
        until_caught_up: bool,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<i64, ProjectorError> {
        let g = generation.generation;
        // Appends notify on the log's database.
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        // Re-read under the lock: a previous holder may have moved it.
        let mut checkpoint = load(&self.pool, g).await?.checkpoint;
        self.stats.checkpoint.store(checkpoint as u64, Ordering::Relaxed);
        let mut read_after = checkpoint;
        let mut writing: Option<JoinHandle<Result<(i64, usize), ProjectorError>>> = None;
        loop {
            let events = self.store.read_all(read_after, self.options.batch_events).await?;
            if events.is_empty() {
                if let Some(w) = writing.take() {
                    checkpoint = join(w).await?;
                }
                if until_caught_up {
                    return Ok(g);
                }
                if target == Target::Active && active(&self.pool).await?.map(|a| a.generation) != Some(g) {
                    // A rebuild switched generations: start over on the new active one.
                    return Err(ProjectorError::LostCheckpoint {
                        generation: g,
                        expected: checkpoint,
                    });
                }
                tokio::select! {
                    _ = listener.recv() => {}
                    _ = tokio::time::sleep(self.options.poll_interval) => {}
                    _ = shutdown.as_mut() => return Ok(g),
                }
                continue;
            }
            read_after = events.last().map(|e| e.position).unwrap_or(read_after);
            if self.foreground.active() {
                // Requests are arriving: the write (PostgreSQL's index maintenance keeps a core busy)
                // and the next batch's embedding take turns instead of overlapping.
                if let Some(w) = writing.take() {
                    checkpoint = join(w).await?;
                }
            }
            let prepared = self.prepare(events).await?;
            if let Some(w) = writing.take() {
                checkpoint = join(w).await?;
            }
            let (prepared, stopped) = self.split_at_failure(prepared);
            if let Some(e) = stopped {
                if prepared.last_position > checkpoint {
                    self.write(g, checkpoint, prepared).await?;
                }
                return Err(e);
            }
            let this = self.clone();
            let expected = checkpoint;
            let last = prepared.last_position;
            writing = Some(tokio::spawn(async move {
                let n = this.write(g, expected, prepared).await?;
                Ok((last, n))
            }));
            if shutdown_ready(shutdown.as_mut()).await {
                if let Some(w) = writing.take() {
                    join(w).await?;
                }
                return Ok(g);
            }
        }
    }

    /// Replays parked failures of a generation in position order. An event that now applies is written
    /// (unless its document has changed since, in which case its effect is already superseded) and marked
    /// resolved; one that still fails stays parked with one more attempt.
    pub async fn retry_failures(&self, target: Target) -> Result<RetryReport, ProjectorError> {
        let generation = self.resolve(target).await?;
        let g = generation.generation;
        let parked: Vec<(i64,)> = sqlx::query_as(
            "SELECT position FROM projection_failures WHERE generation = $1 AND resolved_at IS NULL ORDER BY position",
        )
        .bind(g)
        .fetch_all(&self.pool)
        .await?;
        let mut report = RetryReport::default();
        for (position,) in parked {
            let events = self.store.read_all(position - 1, 1).await?;
            let prepared = self.prepare(events).await?;
            let mut tx = self.pool.begin().await?;
            let effect = prepared.effects.into_iter().next();
            let resolved = match &effect {
                Some(prepare::Effect::Failed { .. }) | None => false,
                Some(e @ (prepare::Effect::Upsert { scope, id, .. } | prepare::Effect::Remove { scope, id, .. })) => {
                    let later: Option<i64> = sqlx::query_scalar(
                        "SELECT position FROM documents WHERE generation = $1 AND scope = $2 AND id = $3 AND position > $4",
                    )
                    .bind(g)
                    .bind(scope)
                    .bind(id)
                    .bind(position)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if later.is_none() {
                        write::apply_effects(&mut tx, g, std::slice::from_ref(e)).await?;
                    }
                    true
                }
            };
            if resolved {
                sqlx::query("UPDATE projection_failures SET resolved_at = now(), attempts = attempts + 1 WHERE generation = $1 AND position = $2")
                    .bind(g)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                report.resolved.push(position);
            } else {
                if let Some(prepare::Effect::Failed { error, .. }) = &effect {
                    sqlx::query("UPDATE projection_failures SET attempts = attempts + 1, error = $3, last_failed_at = now() WHERE generation = $1 AND position = $2")
                        .bind(g)
                        .bind(position)
                        .bind(error)
                        .execute(&mut *tx)
                        .await?;
                }
                report.still_failing.push(position);
            }
            tx.commit().await?;
        }
        Ok(report)
    }

    /// Projects the whole log into a new generation while the active one keeps serving, then switches
    /// over once the new one has caught up with the head, and drops the old one.
    pub async fn rebuild(&self) -> Result<Generation, ProjectorError> {
        let building = create_building(&self.pool, self.backend.identity()).await?;
        let target = Target::Generation(building.generation);
        loop {
            self.run_with(target, true, std::future::pending()).await?;
            if activate_if_caught_up(self.store.pool(), &self.pool, building.generation).await? {
                break;
            }
        }
        drop_retired(&self.pool).await?;
        Ok(load(&self.pool, building.generation).await?)
    }
}

/// A projector running on a task of its own (as `recall serve` and the benchmarks run it).
pub struct RunningProjector {
    stop: tokio::sync::oneshot::Sender<()>,
    task: JoinHandle<Result<(), ProjectorError>>,
}

impl RunningProjector {
    /// Asks it to finish its current batch and stop; returns how its run ended.
    pub async fn stop(self) -> Result<(), ProjectorError> {
        let _ = self.stop.send(());
        self.task.await.map_err(|e| ProjectorError::Panicked(e.to_string()))?
    }
}

impl Projector {
    /// Starts `run` on a task of its own.
    pub fn spawn(&self, target: Target) -> RunningProjector {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let projector = self.clone();
        let task = tokio::spawn(async move {
            projector
                .run(target, async {
                    stopped.await.ok();
                })
                .await
        });
        RunningProjector { stop, task }
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct RetryReport {
    pub resolved: Vec<i64>,
    pub still_failing: Vec<i64>,
}

async fn join(handle: JoinHandle<Result<(i64, usize), ProjectorError>>) -> Result<i64, ProjectorError> {
    match handle.await {
        Ok(Ok((checkpoint, _))) => Ok(checkpoint),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ProjectorError::Panicked(e.to_string())),
    }
}

/// Whether shutdown has been requested, without waiting for it.
async fn shutdown_ready(shutdown: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
    tokio::select! {
        biased;
        _ = shutdown => true,
        _ = std::future::ready(()) => false,
    }
}
