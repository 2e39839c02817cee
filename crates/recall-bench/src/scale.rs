//! `recall-bench scale`: projection past one worker. The write side alone (a stand-in model that costs
//! nothing, so the database's write rate is what is measured) with 1, 2 and 4 workers, beside the physical
//! limit: the same rows loaded by `COPY` into a plain pgvector table with the same HNSW index, from one
//! connection and from as many as the most workers. Then the real model: its raw speed, and projection
//! with 1 and 2 workers. Then reads: search throughput on the primary alone and with a streaming replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use recall::commands::CommandHandler;
use recall::domain::{DocumentContent, DocumentKey};
use recall::embed::{Chunk, Chunker, EmbedError, Embedder, ModelIdentity};
use recall::postgres::{Databases, EmbeddedServer};
use recall::projector::{EmbedBackend, ModelBackend, Projector, ProjectorOptions, Target};
use recall::read_model::{self, Readers};
use recall::search::{Query, SearchMode, SearchRequest, Snapshot};
use sqlx::PgPool;
use tokio::task::JoinSet;

use crate::measure::{BenchError, Latency};

/// The real tokenizer and chunker, and a vector made from the word pieces by a few multiplications: the
/// projector's every step but the model's.
pub struct StandIn {
    chunker: Chunker,
    identity: ModelIdentity,
}

impl StandIn {
    pub fn new(embedder: &Embedder) -> Self {
        StandIn {
            chunker: embedder.chunker(32, true),
            identity: ModelIdentity {
                name: "stand-in".into(),
                revision: "hash-of-word-pieces".into(),
                dimension: embedder.dimension(),
                precision: Default::default(),
            },
        }
    }
}

impl EmbedBackend for StandIn {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        self.chunker.chunk(title, text, section_starts)
    }

    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(inputs
            .iter()
            .map(|ids| stand_in_vector(ids, self.identity.dimension))
            .collect())
    }
}

/// A unit vector that depends on every word piece (xorshift seeded by their hash).
fn stand_in_vector(ids: &[u32], dimension: usize) -> Vec<f32> {
    let mut state = ids.iter().fold(0x9e37_79b9_7f4a_7c15u64, |h, &id| {
        (h ^ u64::from(id)).wrapping_mul(0x1000_0000_01b3)
    }) | 1;
    let mut v: Vec<f32> = (0..dimension)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkersRun {
    pub workers: usize,
    pub chunks: i64,
    pub tokens: i64,
    pub seconds: f64,
    pub chunks_per_s: f64,
    pub tokens_per_s: f64,
    /// Over the same run with one worker.
    pub ratio: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyRun {
    pub connections: usize,
    pub seconds: f64,
    pub rows_per_s: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadRun {
    pub replicas: usize,
    pub clients: usize,
    pub searches_per_s: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleReport {
    pub documents: usize,
    pub chunks: i64,
    pub tokens: i64,
    pub shards: i32,
    pub write_side: Vec<WorkersRun>,
    pub copy_limit: Vec<CopyRun>,
    /// The best write side over the best COPY.
    pub write_side_of_limit: f64,
    pub footprint: Footprint,
    pub model_documents: usize,
    pub model_raw_tokens_per_s: f64,
    pub model_projection: Vec<WorkersRun>,
    pub reads: Vec<ReadRun>,
}

pub struct ScaleConfig {
    pub workers: Vec<usize>,
    /// Documents the real model projects (a prefix of the corpus).
    pub model_documents: usize,
    pub model_workers: Vec<usize>,
    pub read_clients: usize,
    pub read_seconds: f64,
    /// The embedded server to copy for the read replica (`None`: no replica run).
    pub replica_of: Option<EmbeddedServer>,
    pub database: String,
}

/// Runs `workers` projectors of `backend` over a new generation of `databases`' read model until it has
/// caught up with the log; the generation's id and the seconds it took.
async fn project_with(
    databases: &Databases,
    backend: Arc<dyn EmbedBackend>,
    workers: usize,
    shards: i32,
) -> Result<(i64, f64), BenchError> {
    let generation = read_model::create_building(databases.read_model(), backend.identity(), shards).await?;
    let options = ProjectorOptions {
        // Short leases: the workers that start a moment after the first get their shares within a second.
        lease: Duration::from_secs(2),
        shards,
        ..ProjectorOptions::default()
    };
    let mut projectors = Vec::new();
    for _ in 0..workers {
        // Connections of its own, as a worker process on another machine would have.
        let own = databases.background_beside(0, None).await?;
        projectors.push(Projector::new(&own, backend.clone(), options));
    }
    let started = Instant::now();
    let mut running = JoinSet::new();
    for p in projectors {
        running.spawn(async move { p.run_until_caught_up(Target::Generation(generation.generation)).await });
    }
    while let Some(done) = running.join_next().await {
        done.map_err(|e| recall::projector::ProjectorError::Panicked(e.to_string()))??;
    }
    Ok((generation.generation, started.elapsed().as_secs_f64()))
}

/// `project_with`, measured against `first` (the one-worker run); the generation is left to the caller.
async fn measured_run(
    databases: &Databases,
    backend: Arc<dyn EmbedBackend>,
    workers: usize,
    shards: i32,
    first: Option<&WorkersRun>,
) -> Result<(i64, WorkersRun), BenchError> {
    let (generation, seconds) = project_with(databases, backend, workers, shards).await?;
    let (chunks, tokens) = sizes(databases.read_model(), generation).await?;
    eprintln!("{workers} workers: {chunks} chunks in {seconds:.1} s");
    let run = WorkersRun {
        workers,
        chunks,
        tokens,
        seconds,
        chunks_per_s: chunks as f64 / seconds,
        tokens_per_s: tokens as f64 / seconds,
        ratio: first.map_or(seconds, |r| r.seconds) / seconds,
    };
    Ok((generation, run))
}

async fn drop_generation(pool: &PgPool, generation: i64) -> Result<(), BenchError> {
    sqlx::query("DELETE FROM projections WHERE generation = $1")
        .bind(generation)
        .execute(pool)
        .await?;
    // The next run starts from a table and index without the dead rows.
    sqlx::raw_sql("VACUUM chunks").execute(pool).await?;
    Ok(())
}

async fn sizes(pool: &PgPool, generation: i64) -> Result<(i64, i64), BenchError> {
    Ok(
        sqlx::query_as("SELECT count(*), coalesce(sum(tokens), 0)::bigint FROM chunks WHERE generation = $1")
            .bind(generation)
            .fetch_one(pool)
            .await?,
    )
}

/// The rows of a generation's chunks (text and vector) as COPY text lines.
async fn copy_rows(pool: &PgPool, generation: i64) -> Result<Vec<Vec<u8>>, BenchError> {
    let mut conn = pool.acquire().await?;
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT text, embedding FROM chunks WHERE generation = {generation}) TO STDOUT"
        ))
        .await?;
    let mut bytes = Vec::new();
    use futures_util::StreamExt;
    while let Some(chunk) = out.next().await {
        bytes.extend_from_slice(&chunk?);
    }
    Ok(bytes.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect())
}

/// The physical limit: `rows` into a fresh plain table with the read model's HNSW index, by COPY from
/// `connections` connections at once, the vectors stored as `kind` (`vector` or `halfvec`). The seconds
/// it took and the index's bytes per row.
async fn copy_limit(
    pool: &PgPool,
    rows: &[Vec<u8>],
    connections: usize,
    dimension: usize,
    kind: &str,
) -> Result<(f64, f64), BenchError> {
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS bench_copy;
         CREATE TABLE bench_copy (text text NOT NULL, embedding {kind}({dimension}) NOT NULL);
         CREATE INDEX bench_copy_hnsw ON bench_copy USING hnsw (embedding {kind}_cosine_ops)
             WITH (m = 16, ef_construction = 128);"
    ))
    .execute(pool)
    .await?;
    let per = rows.len().div_ceil(connections.max(1));
    let started = Instant::now();
    let mut loading = JoinSet::new();
    for part in rows.chunks(per.max(1)) {
        let data: Vec<u8> = part.concat();
        let pool = pool.clone();
        loading.spawn(async move {
            let mut conn = pool.acquire().await?;
            let mut copy = conn.copy_in_raw("COPY bench_copy (text, embedding) FROM STDIN").await?;
            copy.send(data).await?;
            copy.finish().await?;
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = loading.join_next().await {
        done.map_err(|e| recall::projector::ProjectorError::Panicked(e.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let index: i64 = sqlx::query_scalar("SELECT pg_relation_size('bench_copy_hnsw')")
        .fetch_one(pool)
        .await?;
    sqlx::query("DROP TABLE bench_copy").execute(pool).await?;
    Ok((seconds, index as f64 / rows.len().max(1) as f64))
}

/// What a chunk costs on disk and in the WAL, measured after the first write-side run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Footprint {
    /// The chunks table's heap and TOAST (text, vector, tsvector, citations).
    pub table_bytes_per_chunk: f64,
    pub hnsw_bytes_per_chunk: f64,
    pub gin_bytes_per_chunk: f64,
    /// The other indexes (primary key, validity, documents' chunks).
    pub btree_bytes_per_chunk: f64,
    /// WAL the projector wrote per chunk (everything: chunks, indexes, versions, documents, statistics).
    pub wal_bytes_per_chunk: f64,
    pub halfvec_hnsw_bytes_per_chunk: f64,
    pub halfvec_copy_rows_per_s: f64,
}

async fn footprint(pool: &PgPool, chunks: i64, wal_bytes: f64) -> Result<Footprint, BenchError> {
    let (table, hnsw, gin, all): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT pg_table_size('chunks'), pg_relation_size('chunks_current_embedding_idx'),
                pg_relation_size('chunks_lexemes_idx'), pg_indexes_size('chunks')",
    )
    .fetch_one(pool)
    .await?;
    let per = |bytes: i64| bytes as f64 / chunks.max(1) as f64;
    Ok(Footprint {
        table_bytes_per_chunk: per(table),
        hnsw_bytes_per_chunk: per(hnsw),
        gin_bytes_per_chunk: per(gin),
        btree_bytes_per_chunk: per(all - hnsw - gin),
        wal_bytes_per_chunk: wal_bytes / chunks.max(1) as f64,
        ..Footprint::default()
    })
}

async fn wal_position(pool: &PgPool) -> Result<String, BenchError> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

async fn wal_since(pool: &PgPool, since: &str) -> Result<f64, BenchError> {
    Ok(
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(since)
            .fetch_one(pool)
            .await?,
    )
}

/// `clients` closed-loop dense searches (query vectors taken from the read model) for `seconds`.
async fn read_load(
    readers: &Readers,
    vectors: &[Vec<f32>],
    clients: usize,
    seconds: f64,
) -> Result<(f64, Latency), BenchError> {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let vectors = Arc::new(vectors.to_vec());
    let mut running = JoinSet::new();
    for c in 0..clients {
        let (readers, vectors) = (readers.clone(), vectors.clone());
        running.spawn(async move {
            let mut samples = Vec::new();
            let mut i = c;
            while Instant::now() < deadline {
                let vector = &vectors[i % vectors.len()];
                i += clients;
                let t = Instant::now();
                let (snapshot, _) = Snapshot::live_from(&readers, None).await?;
                let request = SearchRequest {
                    mode: SearchMode::Dense,
                    ..SearchRequest::default()
                };
                snapshot
                    .search(
                        Query {
                            text: "",
                            vector: Some(vector),
                        },
                        &request,
                    )
                    .await?;
                samples.push(t.elapsed());
            }
            Ok::<_, BenchError>(samples)
        });
    }
    let mut samples = Vec::new();
    while let Some(done) = running.join_next().await {
        samples.extend(done.map_err(|e| recall::projector::ProjectorError::Panicked(e.to_string()))??);
    }
    let rate = samples.len() as f64 / seconds;
    Ok((rate, Latency::from_samples(samples)))
}

async fn query_vectors(pool: &PgPool) -> Result<Vec<Vec<f32>>, BenchError> {
    let texts: Vec<String> =
        sqlx::query_scalar("SELECT embedding::text FROM chunks WHERE valid_to IS NULL ORDER BY random() LIMIT 500")
            .fetch_all(pool)
            .await?;
    Ok(texts
        .iter()
        .map(|t| {
            t.trim_matches(['[', ']'])
                .split(',')
                .filter_map(|x| x.parse::<f32>().ok())
                .collect()
        })
        .collect())
}

pub async fn run_scale_bench(
    databases: Databases,
    embedder: Arc<Embedder>,
    documents: Vec<(DocumentKey, DocumentContent)>,
    config: ScaleConfig,
) -> Result<ScaleReport, BenchError> {
    let pool = databases.read_model().clone();
    let handler = CommandHandler::new(recall::event_store::EventStore::new(databases.log().clone()));
    handler.add_all(&documents).await?;
    let shards = recall::projector::DEFAULT_SHARDS;

    // The write side alone.
    let stand_in: Arc<dyn EmbedBackend> = Arc::new(StandIn::new(&embedder));
    let mut write_side: Vec<WorkersRun> = Vec::new();
    let mut rows = Vec::new();
    let (mut chunks, mut tokens) = (0, 0);
    let mut measured = Footprint::default();
    for &workers in &config.workers {
        let wal = wal_position(&pool).await?;
        let (generation, run) = measured_run(&databases, stand_in.clone(), workers, shards, write_side.first()).await?;
        (chunks, tokens) = (run.chunks, run.tokens);
        if rows.is_empty() {
            measured = footprint(&pool, chunks, wal_since(&pool, &wal).await?).await?;
            rows = copy_rows(&pool, generation).await?;
        }
        drop_generation(&pool, generation).await?;
        write_side.push(run);
    }

    // The physical limit, from one connection and from as many as the most workers.
    let most = config.workers.iter().copied().max().unwrap_or(1);
    let mut copy_limit_runs = Vec::new();
    for connections in [1, most] {
        let (seconds, _) = copy_limit(&pool, &rows, connections, embedder.dimension(), "vector").await?;
        eprintln!("COPY, {connections} connections: {} rows in {seconds:.1} s", rows.len());
        copy_limit_runs.push(CopyRun {
            connections,
            seconds,
            rows_per_s: rows.len() as f64 / seconds,
        });
    }
    let (seconds, halfvec_index) = copy_limit(&pool, &rows, most, embedder.dimension(), "halfvec").await?;
    measured.halfvec_hnsw_bytes_per_chunk = halfvec_index;
    measured.halfvec_copy_rows_per_s = rows.len() as f64 / seconds;
    let best = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0f64, f64::max);
    let write_side_of_limit = best(&mut write_side.iter().map(|r| r.chunks_per_s))
        / best(&mut copy_limit_runs.iter().map(|r| r.rows_per_s)).max(f64::MIN_POSITIVE);

    // The real model on a prefix of the corpus: its own speed, then projection with 1 and 2 workers.
    let model_docs: Vec<_> = documents.iter().take(config.model_documents).cloned().collect();
    let (model_databases, model_raw_tokens_per_s, model_projection) = if model_docs.is_empty() {
        (None, 0.0, Vec::new())
    } else {
        let backend: Arc<dyn EmbedBackend> =
            Arc::new(ModelBackend::shared(embedder.clone(), embedder.chunker(32, true), None));
        let inputs: Vec<Vec<u32>> = model_docs
            .iter()
            .flat_map(|(_, c)| backend.chunk(c.title.as_str(), c.text.as_str(), &[]).expect("chunking"))
            .map(|c| c.input_ids)
            .collect();
        let raw = {
            let (backend, inputs) = (backend.clone(), inputs.clone());
            tokio::task::spawn_blocking(move || {
                backend.embed(&inputs[..inputs.len().min(32)]).expect("embedding");
                let t = Instant::now();
                backend.embed(&inputs).expect("embedding");
                inputs.iter().map(Vec::len).sum::<usize>() as f64 / t.elapsed().as_secs_f64()
            })
            .await
            .map_err(|e| recall::projector::ProjectorError::Panicked(e.to_string()))?
        };
        eprintln!("the model alone: {raw:.0} tokens/s");
        // A log of just these documents, so that the model's runs are short.
        let name = format!("{}_model", config.database);
        let (model_databases, admins) = crate::scratch_databases(&name)
            .await
            .map_err(|e| BenchError::Http(format!("{e:#}")))?;
        CommandHandler::new(recall::event_store::EventStore::new(model_databases.log().clone()))
            .add_all(&model_docs)
            .await?;
        let mut runs: Vec<WorkersRun> = Vec::new();
        for &workers in &config.model_workers {
            let (generation, run) =
                measured_run(&model_databases, backend.clone(), workers, shards, runs.first()).await?;
            drop_generation(model_databases.read_model(), generation).await?;
            runs.push(run);
        }
        (Some((name, model_databases, admins)), raw, runs)
    };
    if let Some((name, model_databases, admins)) = model_databases {
        model_databases.close().await;
        for admin in &admins {
            crate::drop_database(admin, &name)
                .await
                .map_err(|e| BenchError::Http(format!("{e:#}")))?;
        }
    }

    // Reads: a generation to search, then the primary alone and with a replica.
    let mut reads = Vec::new();
    if config.read_seconds > 0.0 {
        let (generation, _) = project_with(&databases, stand_in.clone(), 1, shards).await?;
        recall::read_model::activate_if_caught_up(databases.log(), &pool, generation).await?;
        sqlx::query("CHECKPOINT").execute(&pool).await?;
        let vectors = query_vectors(&pool).await?;
        let alone = Readers::new(&databases);
        let (rate, latency) = read_load(&alone, &vectors, config.read_clients, config.read_seconds).await?;
        eprintln!("reads on the primary: {rate:.0}/s, p99 {:.1} ms", latency.p99_ms);
        reads.push(ReadRun {
            replicas: 0,
            clients: config.read_clients,
            searches_per_s: rate,
            latency,
        });
        if let Some(primary) = config.replica_of.clone() {
            let replica = replica_beside(primary).await?;
            let replica_pool = recall::postgres::open_replica(replica.connect_options(&config.database), 16);
            // Until it has replayed the generation.
            let position = read_model::watermark(&pool, generation).await?;
            let with = Readers::new(&databases.clone().with_replicas(vec![replica_pool.clone()]));
            let deadline = Instant::now() + Duration::from_secs(120);
            while with.pick(Some(position)).await.1 == recall::read_model::ReadSource::Primary {
                if Instant::now() > deadline {
                    return Err(BenchError::Http("the replica did not catch up in 120 s".into()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (rate, latency) = read_load(&with, &vectors, config.read_clients, config.read_seconds).await?;
            eprintln!(
                "reads on the primary and a replica: {rate:.0}/s, p99 {:.1} ms",
                latency.p99_ms
            );
            reads.push(ReadRun {
                replicas: 1,
                clients: config.read_clients,
                searches_per_s: rate,
                latency,
            });
            replica_pool.close().await;
            let stopping = replica.clone();
            let _ = tokio::task::spawn_blocking(move || stopping.stop()).await;
            let _ = std::fs::remove_dir_all(replica.home());
        }
    }

    Ok(ScaleReport {
        documents: documents.len(),
        chunks,
        tokens,
        shards,
        write_side,
        copy_limit: copy_limit_runs,
        write_side_of_limit,
        footprint: measured,
        model_documents: model_docs.len(),
        model_raw_tokens_per_s,
        model_projection,
        reads,
    })
}

/// A hot standby of `primary` in a temporary home, started.
async fn replica_beside(primary: EmbeddedServer) -> Result<EmbeddedServer, BenchError> {
    let home = std::env::temp_dir().join(format!("recall-bench-replica-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let replica = EmbeddedServer::locate(home).map_err(recall::postgres::PostgresError::from)?;
    let starting = replica.clone();
    tokio::task::spawn_blocking(move || {
        starting.make_standby_of(&primary)?;
        starting.ensure_running()
    })
    .await
    .map_err(|e| recall::projector::ProjectorError::Panicked(e.to_string()))?
    .map_err(recall::postgres::PostgresError::from)?;
    Ok(replica)
}
