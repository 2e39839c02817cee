//! The projector: tails the event log from its checkpoint and keeps the pgvector read model of document
//! chunks up to date. Embedding happens outside any transaction, on a blocking thread; each batch's
//! read-model changes and its checkpoint commit together, so every event's effect lands exactly once.
//! While batch N embeds, batch N-1 is written. A generation's log is split into shards (by the hash of
//! each document's stream) that any number of projectors, on this machine or others, share through leases
//! in PostgreSQL (`shards`); one projector alone holds them all. Each wakes on the append NOTIFY, polls as
//! a fallback, and starts over from its shards' checkpoints after errors.

mod backend;
mod foreground;
mod prepare;
mod shards;
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
    activate_if_caught_up, active, active_for, claim_for_log, create_building, drop_retired, load, watermark,
    Generation, GenerationStatus, ReadModelError,
};
use shards::{Advance, Worker};

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
        "generation {generation}: a shard moved past checkpoint {expected} under this projector, or its lease passed to another"
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
    /// How long a shard stays this projector's without a heartbeat: after a crash, others take its
    /// shards over within this.
    pub lease: Duration,
    /// Shards of a generation this projector creates (fixed for the generation's life).
    pub shards: i32,
}

/// Shards a new generation gets unless `RECALL_SHARDS` says otherwise: enough for 16 workers.
pub const DEFAULT_SHARDS: i32 = 16;

impl ProjectorOptions {
    /// `RECALL_SHARDS` (for generations created from now on) and `RECALL_LEASE_SECONDS` over the defaults.
    pub fn from_env() -> Self {
        let mut options = ProjectorOptions::default();
        if let Some(n) = env_number("RECALL_SHARDS", 1.0..=1024.0) {
            options.shards = n as i32;
        }
        if let Some(s) = env_number("RECALL_LEASE_SECONDS", 0.5..=3600.0) {
            options.lease = Duration::from_secs_f64(s);
        }
        options
    }
}

/// A number from the environment within `range`; anything else is said and the default kept.
fn env_number(name: &str, range: std::ops::RangeInclusive<f64>) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<f64>() {
        Ok(n) if range.contains(&n) => Some(n),
        _ => {
            tracing::warn!(%name, %value, "not a number from {} to {}; using the default", range.start(), range.end());
            None
        }
    }
}

impl Default for ProjectorOptions {
    fn default() -> Self {
        ProjectorOptions {
            batch_events: 256,
            on_error: OnError::Park,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            shards: DEFAULT_SHARDS,
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
    /// This projector as a worker holding shards; clones are the same worker.
    worker: Arc<Worker>,
}

/// Which generation a projector serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The active one, following it across rebuilds.
    Active,
    Generation(i64),
}

impl Projector {
    /// Tails `databases`' log into its read model (the same database or another).
    pub fn new(databases: &Databases, backend: Arc<dyn EmbedBackend>, options: ProjectorOptions) -> Self {
        let worker = Arc::new(Worker::new(backend.device(), options.lease));
        Projector {
            pool: databases.read_model().clone(),
            store: EventStore::new(databases.log().clone()),
            backend,
            options,
            stats: Arc::default(),
            foreground: Foreground::never(),
            worker,
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
            Target::Active => active_for(&self.pool, self.backend.identity(), self.options.shards).await?,
            Target::Generation(g) => load(&self.pool, g).await?,
        };
        generation.admits(self.backend.identity())?;
        claim_for_log(self.store.pool(), &self.pool, generation.generation).await?;
        Ok(generation)
    }

    /// One batch, synchronously: takes every shard no other projector holds, reads after their
    /// checkpoints, prepares, writes, and gives them back. Returns how many events it projected (0 when
    /// caught up). Tests drive the projector with this.
    pub async fn step(&self, target: Target) -> Result<usize, ProjectorError> {
        let generation = self.resolve(target).await?;
        let g = generation.generation;
        let held = self.worker.balance(&self.pool, g, generation.shards, true).await?;
        let result = self.step_held(&generation, &held).await;
        self.worker.release(&self.pool, g, &held).await?;
        result
    }

    async fn step_held(&self, generation: &Generation, held: &[i32]) -> Result<usize, ProjectorError> {
        let g = generation.generation;
        let checkpoints = shards::checkpoints(&self.pool, g, generation.shards, held).await?;
        let (events, advance) = self.read(checkpoints).await?;
        if events.is_empty() {
            if advance.moves() {
                self.write_once(g, &advance, &prepare::PreparedBatch::default()).await?;
            }
            return Ok(0);
        }
        let batch = self.prepare(events).await?;
        let (batch, advance, stopped) = self.split_at_failure(batch, advance);
        let n = if advance.moves() {
            self.write(g, &advance, batch).await?
        } else {
            0
        };
        match stopped {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// The next batch of the held shards (their checkpoints in `checkpoints`, `i64::MAX` for the rest),
    /// up to the head, and where writing it moves the checkpoints.
    async fn read(
        &self,
        checkpoints: Vec<i64>,
    ) -> Result<(Vec<crate::event_store::RecordedEvent>, Advance), ProjectorError> {
        let after = checkpoints.iter().copied().min().unwrap_or(i64::MAX);
        if after == i64::MAX {
            return Ok((Vec::new(), Advance::after_read(checkpoints, 0, 0, 1, None)));
        }
        let head = self.store.head().await?;
        let events = if after < head {
            self.store
                .read_shards(after, head, &checkpoints, self.options.batch_events)
                .await?
        } else {
            Vec::new()
        };
        let last = events.last().map(|e| e.position);
        let advance = Advance::after_read(
            checkpoints,
            head,
            events.len(),
            self.options.batch_events as usize,
            last,
        );
        Ok((events, advance))
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
    /// is still written, and the checkpoints stop just before it.
    fn split_at_failure(
        &self,
        mut batch: prepare::PreparedBatch,
        advance: Advance,
    ) -> (prepare::PreparedBatch, Advance, Option<ProjectorError>) {
        if self.options.on_error == OnError::Park {
            return (batch, advance, None);
        }
        let Some(i) = batch
            .effects
            .iter()
            .position(|e| matches!(e, prepare::Effect::Failed { .. }))
        else {
            return (batch, advance, None);
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
            advance.cut(position - 1),
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
        advance: &Advance,
        batch: prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        match self.write_once(generation, advance, &batch).await {
            Err(e) if e.is_caused_by_the_events() => {
                tracing::warn!(error = %e, effects = batch.effects.len(), "a batch was refused; writing its events one by one");
                self.write_isolating(generation, advance, batch).await
            }
            other => other,
        }
    }

    async fn write_once(
        &self,
        generation: i64,
        advance: &Advance,
        batch: &prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        let n = batch.effects.len();
        let parked = batch
            .effects
            .iter()
            .filter(|e| matches!(e, prepare::Effect::Failed { .. }))
            .count();
        let checkpoint = write::write_batch(&self.pool, generation, self.worker.id, advance, batch).await?;
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
        advance: &Advance,
        batch: prepare::PreparedBatch,
    ) -> Result<usize, ProjectorError> {
        let n = batch.effects.len();
        let mut written = advance.from.clone();
        for effect in batch.effects {
            let position = effect.position();
            let step = Advance {
                from: written.clone(),
                to: advance.cut(position).to,
            };
            let single = prepare::PreparedBatch {
                tokens: effect.tokens(),
                last_position: position,
                effects: vec![effect],
            };
            let mut attempt = 1;
            loop {
                match self.write_once(generation, &step, &single).await {
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
                        if let (_, _, Some(stopped)) = self.split_at_failure(parked.clone(), step.clone()) {
                            return Err(stopped);
                        }
                        self.write_once(generation, &step, &parked).await?;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            written = step.to;
        }
        let rest = Advance {
            from: written,
            to: advance.to.clone(),
        };
        if rest.moves() {
            // Nothing left to apply (a batch cut short), but the checkpoints still move to its end.
            self.write_once(generation, &rest, &prepare::PreparedBatch::default())
                .await?;
        }
        Ok(n)
    }

    /// Projects until the generation's watermark reaches the head that was current when it started
    /// (with other projectors, if any, doing their shards).
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
        // Leases are renewed beside the work, so that a long batch (a large document on a slow CPU)
        // does not lose them; they are given back when the run ends.
        let renewing = AbortOnDrop(tokio::spawn(renew_leases(self.worker.clone(), self.pool.clone())));
        let result = self.run_retrying(target, until_caught_up, shutdown).await;
        drop(renewing);
        if let Err(e) = self.worker.leave(&self.pool).await {
            tracing::debug!(error = %e, "could not give the leases back; they expire by themselves");
        }
        result
    }

    async fn run_retrying(
        &self,
        target: Target,
        until_caught_up: bool,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ProjectorError> {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        let goal = match until_caught_up {
            true => Some(self.store.head().await?),
            false => None,
        };
        loop {
            let attempt = self.pipeline(target, goal, shutdown.as_mut());
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => {
                    let position = self.stats.checkpoint.load(Ordering::Relaxed) as i64;
                    let retrying = self.stats.record_failure(position, e.to_string());
                    tracing::warn!(error = %e, retry_in = ?backoff, attempts = retrying.attempts, "projector error; starting over from the checkpoints");
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

    /// The overlapped loop over the shards this projector holds: read batch N and embed it while batch
    /// N-1 is being written. Every half lease (with the write in flight finished first) it takes or
    /// gives back shards towards a fair share, and looks whether its generation is still the one to
    /// serve. With a `goal`, it returns once the generation's watermark has reached it.
    async fn pipeline(
        &self,
        target: Target,
        goal: Option<i64>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<(), ProjectorError> {
        let generation = self.resolve(target).await?;
        let g = generation.generation;
        // Appends notify on the log's database.
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        let rebalance_every = self.options.lease / 2;
        let mut rebalance_at = tokio::time::Instant::now();
        let mut held: Vec<i32> = Vec::new();
        let mut checkpoints: Vec<i64> = Vec::new();
        let mut writing: Option<JoinHandle<Result<usize, ProjectorError>>> = None;
        loop {
            if tokio::time::Instant::now() >= rebalance_at {
                if let Some(w) = writing.take() {
                    join(w).await?;
                }
                if target == Target::Active && active(&self.pool).await?.map(|a| a.generation) != Some(g) {
                    // A rebuild switched generations: start over on the new active one.
                    return Err(ProjectorError::LostCheckpoint {
                        generation: g,
                        expected: self.stats.checkpoint.load(Ordering::Relaxed) as i64,
                    });
                }
                let now_held = self.worker.balance(&self.pool, g, generation.shards, false).await?;
                if now_held != held {
                    tracing::info!(generation = g, shards = ?now_held, "projecting these shards");
                    held = now_held;
                }
                // Read again after the write has finished: the checkpoints of what is held now.
                checkpoints = shards::checkpoints(&self.pool, g, generation.shards, &held).await?;
                rebalance_at = tokio::time::Instant::now() + rebalance_every;
            }
            let (events, advance) = self.read(checkpoints.clone()).await?;
            if events.is_empty() {
                if let Some(w) = writing.take() {
                    join(w).await?;
                }
                if advance.moves() {
                    // Other shards' events only: this projector's shards have passed them too.
                    self.write_once(g, &advance, &prepare::PreparedBatch::default()).await?;
                    checkpoints = advance.to;
                    continue;
                }
                if let Some(goal) = goal {
                    if watermark(&self.pool, g).await? >= goal {
                        return Ok(());
                    }
                }
                let wait = rebalance_at
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(self.options.poll_interval);
                tokio::select! {
                    _ = listener.recv() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.as_mut() => return Ok(()),
                }
                continue;
            }
            checkpoints = advance.to.clone();
            if self.foreground.active() {
                // Requests are arriving: the write (PostgreSQL's index maintenance keeps a core busy)
                // and the next batch's embedding take turns instead of overlapping.
                if let Some(w) = writing.take() {
                    join(w).await?;
                }
            }
            let prepared = self.prepare(events).await?;
            if let Some(w) = writing.take() {
                join(w).await?;
            }
            let (prepared, advance, stopped) = self.split_at_failure(prepared, advance);
            if let Some(e) = stopped {
                if advance.moves() {
                    self.write(g, &advance, prepared).await?;
                }
                return Err(e);
            }
            let this = self.clone();
            writing = Some(tokio::spawn(async move { this.write(g, &advance, prepared).await }));
            if shutdown_ready(shutdown.as_mut()).await {
                if let Some(w) = writing.take() {
                    join(w).await?;
                }
                return Ok(());
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
        let building = create_building(&self.pool, self.backend.identity(), self.options.shards).await?;
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

async fn join(handle: JoinHandle<Result<usize, ProjectorError>>) -> Result<usize, ProjectorError> {
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(ProjectorError::Panicked(e.to_string())),
    }
}

/// Renews the worker's leases every quarter lease, for as long as it runs.
async fn renew_leases(worker: Arc<Worker>, pool: PgPool) {
    loop {
        tokio::time::sleep(worker.lease / 4).await;
        if let Err(e) = worker.renew(&pool).await {
            tracing::warn!(error = %e, "could not renew the shard leases; they expire unless renewed in time");
        }
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
