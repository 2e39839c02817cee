//! `recall-bench search`: the query API measured as agents use it, over HTTP on loopback against an
//! in-process `recall serve`: search latency with 100k+ chunks loaded (a corpus cut into short chunks,
//! every one a real embedding), the HNSW index's recall@10 against an exact scan, and command and
//! search latency on an idle system beside the same while the projector saturates the CPU with a
//! backlog.

use recall::postgres::Databases;
use recall::read_model;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use recall::api::{ApiConfig, AppState};
use recall::commands::CommandHandler;
use recall::domain::{DocumentContent, DocumentKey};
use recall::embed::{ChunkOptions, Embedder};
use recall::event_store::EventStore;
use recall::projector::{ModelBackend, Projector, ProjectorError, ProjectorOptions, Target};
use recall::runtime::ComputePool;
use recall::runtime::{CpuPolicy, Priority};
use recall::search::{self, Query, QueryEncoder, SearchMode, SearchRequest};
use recall::server::{self, InProcessProjector, Model, ServerConfig};

use crate::measure::{BenchError, Latency};

#[derive(Debug, Clone)]
pub struct SearchBenchConfig {
    /// Chunk length in word pieces (special tokens included): shorter chunks make more of them from
    /// the same corpus, each a real embedding of real text.
    pub chunk_tokens: usize,
    /// Requests of each kind per phase.
    pub requests: usize,
    /// Think time between a client's requests, as an agent would leave.
    pub pause: Duration,
    /// Queries whose HNSW top 10 is compared with the exact top 10.
    pub recall_queries: usize,
    pub threads: usize,
    /// As `recall serve` does by default: while requests arrive, the projector leaves a core free.
    pub yield_to_requests: bool,
    /// Scheduling of the query pool's threads.
    pub query_priority: Priority,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub dense_search: Latency,
    pub hybrid_search: Latency,
    pub command: Latency,
    /// The share of CPU time the host took from this machine during the phase, where it tells
    /// (a virtual machine's steal time; `None` where /proc/stat is unreadable).
    pub steal_percent: Option<f64>,
    /// Mean time to embed a question, from the server's own histogram (dense and hybrid searches alike).
    pub query_embedding_mean_ms: f64,
    /// Events the projector applied during the phase (0 when idle).
    pub projected_during: u64,
    /// Whether the projector still had a backlog when the phase ended.
    pub backlog_throughout: bool,
    /// The server's own timing of the phase's commands, stage by stage: where their tail waited.
    pub command_stages: Vec<Stage>,
    /// What PostgreSQL's active backends were doing, sampled from `pg_stat_activity` every 2 ms during
    /// the phase (`CPU` when running): the most frequent, with their share of the samples.
    pub wait_events: Vec<(String, f64)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Stage {
    pub stage: &'static str,
    pub count: u64,
    pub mean_ms: f64,
    /// The upper bound of the histogram bucket holding the 99th percentile.
    pub p99_at_most_ms: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SearchBenchReport {
    pub documents: usize,
    pub chunks: i64,
    pub recall_at_10: f64,
    pub recall_queries: usize,
    pub idle: Phase,
    pub under_projection: Phase,
}

/// `base` is projected and multiplied up to `config.chunks`; `backlog` is appended afterwards to keep the
/// projector busy while the loaded phase is measured. `queries` are questions (reused round-robin).
pub async fn run_search_bench(
    databases: Databases,
    embedder: Arc<Embedder>,
    base: Vec<(DocumentKey, DocumentContent)>,
    backlog: Vec<(DocumentKey, DocumentContent)>,
    queries: Vec<String>,
    config: SearchBenchConfig,
) -> Result<SearchBenchReport, BenchError> {
    let pool = databases.read_model().clone();
    let handler = CommandHandler::new(EventStore::new(databases.log().clone()));
    handler.add_all(&base).await?;
    let chunking = ChunkOptions {
        max_tokens: config.chunk_tokens,
        overlap: 0,
        title_prefix: false,
    };
    // The base corpus is projected before the service starts, as by a `recall serve` that ran earlier.
    let background = databases.background_beside(0, None).await?;
    let loader = Projector::new(
        &background,
        Arc::new(ModelBackend::shared(
            embedder.clone(),
            embedder.chunker_with(chunking),
            None,
        )),
        ProjectorOptions::default(),
    );
    tracing::info!(documents = base.len(), "projecting the base corpus");
    loader.run_until_caught_up(Target::Active).await?;
    background.close().await;
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks WHERE valid_to IS NULL")
        .fetch_one(&pool)
        .await?;
    sqlx::query("VACUUM ANALYZE chunks").execute(&pool).await?;
    let encoder = Arc::new(QueryEncoder::new(
        embedder.clone(),
        ComputePool::new("bench-recall", config.threads, Priority::Normal, None)?,
    ));
    let (recall_at_10, recall_queries) = hnsw_recall(&pool, &encoder, &queries, config.recall_queries).await?;
    drop(encoder);

    // The service as `recall serve` runs it, on a free loopback port; its projector has nothing to do
    // in the idle phase but the phase's own commands.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let mut server = server::start(
        ServerConfig {
            api: ApiConfig::default(),
            projector: Some(InProcessProjector {
                chunking,
                options: ProjectorOptions {
                    batch_events: 64,
                    ..Default::default()
                },
                yield_to_requests: config.yield_to_requests,
            }),
            cpu: CpuPolicy::beside_api(config.threads, config.query_priority),
        },
        databases.clone(),
        Some(listener),
        Model::Loaded(embedder),
    )
    .await?;
    server.ready().await?;
    let (state, address) = (server.state().clone(), server.address().expect("listening"));
    let idle = phase(&databases, &state, address, &queries, &config).await?;
    handler.add_all(&backlog).await?;
    // Let the projector reach full speed on the backlog before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let under_projection = phase(&databases, &state, address, &queries, &config).await?;
    server.shutdown().await?;
    Ok(SearchBenchReport {
        documents: base.len(),
        chunks,
        recall_at_10,
        recall_queries,
        idle,
        under_projection,
    })
}

/// Mean overlap of the index's top 10 with the exact top 10.
async fn hnsw_recall(
    pool: &sqlx::PgPool,
    encoder: &Arc<QueryEncoder>,
    queries: &[String],
    n: usize,
) -> Result<(f64, usize), BenchError> {
    let request = SearchRequest {
        k: 10,
        mode: SearchMode::Dense,
        ..SearchRequest::default()
    };
    let mut total = 0.0;
    let n = n.min(queries.len());
    for query in &queries[..n] {
        let vector = {
            let (encoder, query) = (encoder.clone(), query.clone());
            tokio::task::spawn_blocking(move || encoder.encode(&query))
                .await
                .map_err(|e| ProjectorError::Panicked(e.to_string()))??
        };
        let key = |h: &search::SearchHit| (h.scope.clone(), h.document_id.clone(), h.chunk_index);
        let q = Query {
            text: query,
            vector: Some(&vector),
        };
        let approximate: Vec<_> = search::search(pool, q, &request)
            .await?
            .results
            .iter()
            .map(key)
            .collect();
        let exact: Vec<_> = search::search_exact(pool, q, &request)
            .await?
            .results
            .iter()
            .map(key)
            .collect();
        total += exact.iter().filter(|e| approximate.contains(e)).count() as f64 / exact.len().max(1) as f64;
    }
    Ok((total / n.max(1) as f64, n))
}

/// One client alternating a search and a command with think time between, over HTTP.
async fn phase(
    databases: &Databases,
    state: &AppState,
    address: SocketAddr,
    queries: &[String],
    config: &SearchBenchConfig,
) -> Result<Phase, BenchError> {
    let before = read_model::status(databases).await?;
    let embedded_before = state.metrics().query_embed_latency.totals();
    let cpu_before = crate::measure::CpuTimes::now();
    // The server's own store: its commands' timings.
    let stages_before = state.command_timings().stages().map(|(name, h)| (name, h.snapshot()));
    let (stop_sampling, sampled) = tokio::sync::oneshot::channel();
    // Where the commands run: the log's database (which may also be the read model's).
    let sampler = tokio::spawn(sample_wait_events(databases.log().clone(), sampled));
    let base = format!("http://{address}");
    let (queries, requests, pause) = (queries.to_vec(), config.requests, config.pause);
    let (dense, hybrid, command) = tokio::task::spawn_blocking(move || -> Result<_, BenchError> {
        let agent = ureq::AgentBuilder::new().build();
        let tag = format!("{:016x}", rand::random::<u64>());
        let timed = |path: &str, body: serde_json::Value| -> Result<Duration, BenchError> {
            let started = Instant::now();
            agent
                .post(&format!("{base}{path}"))
                .send_json(body)
                .map_err(|e| BenchError::Http(e.to_string()))?;
            let elapsed = started.elapsed();
            std::thread::sleep(pause);
            Ok(elapsed)
        };
        // Warm the caches and connections first, as a running service would be.
        for question in queries.iter().take(20) {
            timed("/v1/search", json!({"query": question, "k": 10}))?;
        }
        let (mut dense, mut hybrid, mut commands) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..requests {
            let question = &queries[i % queries.len()];
            dense.push(timed(
                "/v1/search",
                json!({"query": question, "k": 10, "mode": "dense"}),
            )?);
            hybrid.push(timed(
                "/v1/search",
                json!({"query": question, "k": 10, "mode": "hybrid"}),
            )?);
            commands.push(timed(
                "/v1/documents",
                json!({"scope": "bench-commands", "id": format!("{tag}-{i}"),
                       "text": format!("A note written by the benchmark's agent, number {i}.")}),
            )?);
        }
        Ok((dense, hybrid, commands))
    })
    .await
    .map_err(|e| ProjectorError::Panicked(e.to_string()))??;
    let _ = stop_sampling.send(());
    let wait_events = sampler.await.map_err(|e| ProjectorError::Panicked(e.to_string()))??;
    let command_stages = state
        .command_timings()
        .stages()
        .iter()
        .zip(&stages_before)
        .map(|((stage, histogram), (_, before))| {
            let during = histogram.snapshot().since(before);
            Stage {
                stage,
                count: during.count(),
                mean_ms: during.mean().as_secs_f64() * 1e3,
                p99_at_most_ms: during.quantile_bound(0.99) * 1e3,
            }
        })
        .collect();
    let after = read_model::status(databases).await?;
    let embedded_after = state.metrics().query_embed_latency.totals();
    let steal_percent = cpu_before
        .zip(crate::measure::CpuTimes::now())
        .map(|(a, b)| b.steal_percent_since(&a));
    let queries_embedded = embedded_after.0.saturating_sub(embedded_before.0).max(1);
    let embedding = embedded_after.1.saturating_sub(embedded_before.1);
    let checkpoint = |r: &read_model::StatusReport| r.active().map_or(0, |p| p.checkpoint);
    let still_behind = after.active().is_some_and(|p| p.lag_events > 0);
    Ok(Phase {
        dense_search: Latency::from_samples(dense),
        hybrid_search: Latency::from_samples(hybrid),
        command: Latency::from_samples(command),
        steal_percent,
        query_embedding_mean_ms: embedding.as_secs_f64() * 1000.0 / queries_embedded as f64,
        projected_during: (checkpoint(&after) - checkpoint(&before)).max(0) as u64,
        backlog_throughout: still_behind,
        command_stages,
        wait_events,
    })
}

/// Counts what the database's active backends wait on until `stop`, every 2 ms; the eight most
/// frequent with their shares.
async fn sample_wait_events(
    pool: sqlx::PgPool,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<Vec<(String, f64)>, BenchError> {
    let mut connection = pool.acquire().await?;
    let mut counts: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let events: Vec<String> = sqlx::query_scalar(
            "SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity
             WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut *connection)
        .await?;
        for event in events {
            *counts.entry(event).or_default() += 1;
        }
    }
    let total = counts.values().sum::<u64>().max(1) as f64;
    let mut shares: Vec<(String, f64)> = counts.into_iter().map(|(e, n)| (e, n as f64 / total)).collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    shares.truncate(8);
    Ok(shares)
}
