//! `recall-bench`: the end-to-end measurements of recall, each on a scratch database beside the user's
//! (created, then dropped), driving the library's public paths exactly as users do. Timing lives here,
//! never in the tests; the README's performance table names the command behind each figure.

mod agents;
mod append;
mod embed;
mod extract;
mod measure;
mod model;
mod project;
mod scale;
mod search;
mod soak;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use recall::event_store::EventStore;
use recall::postgres::{self, DatabaseTargets, Databases};

use append::{run_append_bench, AppendBenchConfig};
use embed::run_embed_bench;
use model::{ModelArgs, QueryPriority};
use project::run_project_bench;
use search::{run_search_bench, SearchBenchConfig};
use soak::{run_soak, SoakConfig};

#[derive(Parser)]
#[command(name = "recall-bench", version, about = "Measure recall's throughput and latency", long_about = None)]
struct Cli {
    /// Leave glibc's allocator at its defaults (`recall` keeps large blocks in the heap: see
    /// `recall::runtime::keep_large_allocations_in_the_heap`), to measure what that setting buys.
    #[arg(long, global = true)]
    default_allocator: bool,
    #[command(subcommand)]
    what: BenchCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.default_allocator {
        recall::runtime::keep_large_allocations_in_the_heap();
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RECALL_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(cli.what)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Embedder throughput on a passage corpus (JSONL with "text") and one-query latency.
    Embed {
        #[arg(long)]
        corpus: std::path::PathBuf,
        /// Use only the first N passages.
        #[arg(long)]
        limit: Option<usize>,
        /// Timed passes; the median is reported.
        #[arg(long, default_value_t = 3)]
        passes: usize,
        /// Idle time before each of the 100 timed queries, like an agent's think time (0: back to back).
        #[arg(long, default_value_t = 0)]
        query_pause_ms: u64,
        /// The timed query (a SciFact question is about twice as long as the default).
        #[arg(long, default_value = "how do I sort a list of dictionaries by a key")]
        query: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Extraction throughput (pages/s for PDF, MB/s for HTML and Markdown) beside the embedder's on the
    /// same text: which side bounds an ingest of such files.
    Extract {
        /// A folder of PDF, HTML, Markdown and text files (`benches/documents`).
        #[arg(long, default_value = "benches/documents")]
        corpus: std::path::PathBuf,
        /// Passes over each file; the fastest counts.
        #[arg(long, default_value_t = 3)]
        passes: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// End-to-end projection throughput beside the raw embedder, and single-document visibility latency.
    Project {
        /// BEIR-style JSONL ({"_id", "title", "text"}).
        #[arg(long)]
        corpus: std::path::PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Projection past one worker: the write side alone (a stand-in model) with 1, 2 and 4 workers beside
    /// the same rows COPYed into a plain pgvector table with HNSW; the real model with 1 and 2 workers;
    /// search throughput on the primary alone and with a streaming replica.
    Scale {
        /// BEIR-style JSONL ({"_id", "title", "text"}).
        #[arg(long)]
        corpus: std::path::PathBuf,
        #[arg(long)]
        limit: Option<usize>,
        /// Worker counts for the write side.
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        workers: Vec<usize>,
        /// Documents the real model projects (0: skip).
        #[arg(long, default_value_t = 400)]
        model_documents: usize,
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        model_workers: Vec<usize>,
        /// Concurrent searching clients, and for how long (0: skip the read runs).
        #[arg(long, default_value_t = 8)]
        read_clients: usize,
        #[arg(long, default_value_t = 20.0)]
        read_seconds: f64,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Search over HTTP with 100k+ chunks: latency, HNSW recall@10 against exact search, and command and
    /// search latency idle beside the same while the projector works through a backlog.
    Search {
        /// BEIR-style corpus JSONL ({"_id", "title", "text"}).
        #[arg(long)]
        corpus: std::path::PathBuf,
        /// BEIR-style queries JSONL ({"_id", "text"}).
        #[arg(long)]
        queries: std::path::PathBuf,
        /// Corpus documents to project (default: all but the backlog).
        #[arg(long)]
        limit: Option<usize>,
        /// Chunk length in word pieces, special tokens included (SciFact at 14 gives over 100k chunks).
        #[arg(long, default_value_t = 14)]
        chunk_tokens: usize,
        /// Further documents appended to keep the projector busy during the loaded phase.
        #[arg(long, default_value_t = 1000)]
        backlog: usize,
        /// Searches and commands per phase. A p99 is only as steady as its sample: at 1,000 it is the
        /// 10th slowest request, which one stray scheduler hiccup cannot set on its own.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Milliseconds between a client's requests.
        #[arg(long, default_value_t = 20)]
        pause_ms: u64,
        #[arg(long, default_value_t = 200)]
        recall_queries: usize,
        /// Let the projector run on every core even while requests arrive (`recall serve
        /// --foreground-window 0`), to compare with the default.
        #[arg(long)]
        no_yield: bool,
        /// Keep the scratch database afterwards (its name is printed), to inspect the index and plans.
        #[arg(long)]
        keep_database: bool,
        /// Scheduling of the threads that embed questions, as `recall serve --query-priority`.
        #[arg(long, value_enum, default_value = "realtime")]
        query_priority: QueryPriority,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// A bounded soak of the HTTP API: concurrent clients add, update, remove and search, then every
    /// acknowledged command is checked against the log and the read model.
    Soak {
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Scheduling of the threads that embed questions, as `recall serve --query-priority`.
        #[arg(long, value_enum, default_value = "realtime")]
        query_priority: QueryPriority,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// The agent-facing protocols against the REST API on one service: an MCP `search` over Streamable
    /// HTTP beside the same `POST /v1/search`, and `/v1/embeddings` (batches of 32) beside the raw embedder.
    Agents {
        /// BEIR-style corpus JSONL ({"_id", "title", "text"}).
        #[arg(long)]
        corpus: std::path::PathBuf,
        /// BEIR-style queries JSONL ({"_id", "text"}).
        #[arg(long)]
        queries: std::path::PathBuf,
        /// Corpus documents to add and project.
        #[arg(long, default_value_t = 500)]
        limit: usize,
        /// Searches through each front end.
        #[arg(long, default_value_t = 300)]
        searches: usize,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Event-log throughput and latency: one client, many clients, bulk ingest.
    Append {
        #[arg(long, default_value_t = 2000)]
        single: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value_t = 250)]
        per_client: usize,
        #[arg(long, default_value_t = 100_000)]
        bulk: usize,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long)]
        json: bool,
    },
}

/// Fresh databases beside the user's (the log's, and the read model's where `RECALL_READ_MODEL_URL` puts
/// it apart), so a benchmark never writes into the real ones; dropped afterwards.
async fn scratch_databases(name: &str) -> anyhow::Result<(Databases, Vec<sqlx::postgres::PgConnectOptions>)> {
    let targets = DatabaseTargets::from_env();
    let mut admins = vec![postgres::connect_options(&targets.log).await?];
    if let Some(target) = &targets.read_model {
        admins.push(postgres::connect_options(target).await?);
    }
    let mut pools = Vec::new();
    for admin in &admins {
        postgres::create_database_if_missing(admin, name).await?;
        pools.push(postgres::open_with(admin.clone().database(name), 32).await?);
    }
    let log = pools.remove(0);
    let databases = match pools.pop() {
        Some(read_model) => Databases::split(log, read_model),
        None => Databases::one(log),
    };
    Ok((databases, admins))
}

/// The scratch database's name for this run.
fn scratch_name() -> String {
    format!("recall_bench_{}", std::process::id())
}

/// Runs `work` on fresh scratch databases and drops them afterwards (unless `keep`), whatever `work`
/// returned.
async fn on_scratch_database<T, F, Fut>(keep: bool, work: F) -> anyhow::Result<T>
where
    F: FnOnce(Databases) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let name = scratch_name();
    let (databases, admins) = scratch_databases(&name)
        .await
        .context("creating the scratch database")?;
    if databases.is_split() {
        eprintln!(
            "the read model in a database of its own (RECALL_READ_MODEL_URL, or the embedded home's second cluster)"
        );
    }
    let result = work(databases.clone()).await;
    databases.close().await;
    if keep {
        eprintln!("kept the scratch database {name}");
    } else {
        for admin in &admins {
            drop_database(admin, &name).await?;
        }
    }
    result
}

async fn drop_database(admin: &sqlx::postgres::PgConnectOptions, name: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect_with(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// The questions of a BEIR-style queries file; at least one.
fn read_questions(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let questions: Vec<String> = recall::eval::read_queries(path)?.into_iter().map(|(_, q)| q).collect();
    anyhow::ensure!(!questions.is_empty(), "{} holds no queries", path.display());
    Ok(questions)
}

/// A BEIR-style corpus as documents of one scope; the lines recall refuses are reported and skipped.
fn read_corpus(
    corpus: &std::path::Path,
    scope: &str,
) -> anyhow::Result<Vec<(recall::domain::DocumentKey, recall::domain::DocumentContent)>> {
    let read = recall::eval::read_corpus(corpus, &recall::domain::Scope::parse(scope)?)?;
    for error in &read.skipped {
        eprintln!("skipped {error}");
    }
    Ok(read.documents)
}

async fn run(what: BenchCommand) -> anyhow::Result<ExitCode> {
    match what {
        BenchCommand::Soak {
            clients,
            seconds,
            query_priority,
            json,
            model,
        } => {
            let (threads, embedder) = model.load_shared().await?;
            let config = SoakConfig {
                clients,
                duration: std::time::Duration::from_secs(seconds),
                threads,
                query_priority: query_priority.priority(),
            };
            let report = on_scratch_database(false, |databases| async move {
                Ok(run_soak(databases, embedder, config).await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} clients for {:.0} s: {} requests ({:.0}/s), {} documents",
                    report.clients, report.seconds, report.requests, report.requests_per_s, report.documents
                );
                for (name, l) in [
                    ("add", &report.add),
                    ("update", &report.update),
                    ("remove", &report.remove),
                    ("search", &report.search),
                ] {
                    println!(
                        "  {name:>6}: {:>6} ok, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
                        l.count, l.p50_ms, l.p99_ms, l.max_ms
                    );
                }
                println!(
                    "  errors: {} lost acknowledged, {} 5xx (besides {} deliberate 503), {} 4xx, {} transport",
                    report.lost,
                    report.server_errors,
                    report.unavailable,
                    report.client_errors,
                    report.transport_errors
                );
                println!(
                    "  memory: peak {:.0} MiB, {:.0} MiB at a third, {:.0} MiB at the end; projector lag max {} events, drained {:.1} s after the load",
                    report.peak_rss_mib, report.rss_third_mib, report.rss_end_mib, report.max_lag_events, report.drain_seconds
                );
            }
            let clean = report.lost == 0
                && report.server_errors == 0
                && report.client_errors == 0
                && report.transport_errors == 0;
            Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        BenchCommand::Search {
            corpus,
            queries,
            limit,
            chunk_tokens,
            backlog,
            requests,
            pause_ms,
            recall_queries,
            no_yield,
            keep_database,
            query_priority,
            json,
            model,
        } => {
            let mut base = read_corpus(&corpus, "bench")?;
            let keep = limit.unwrap_or(base.len().saturating_sub(backlog)).min(base.len());
            let mut extra = base.split_off(keep);
            if extra.len() < backlog {
                // A short corpus: the backlog re-adds the same texts under a scope of their own.
                let again = read_corpus(&corpus, "bench-backlog")?;
                extra.extend(again.into_iter().cycle().take(backlog - extra.len()));
            }
            extra.truncate(backlog);
            let questions = read_questions(&queries)?;
            let (threads, embedder) = model.load_shared().await?;
            let config = SearchBenchConfig {
                chunk_tokens,
                requests,
                pause: std::time::Duration::from_millis(pause_ms),
                recall_queries,
                threads,
                yield_to_requests: !no_yield,
                query_priority: query_priority.priority(),
            };
            let report = on_scratch_database(keep_database, |databases| async move {
                Ok(run_search_bench(databases, embedder, base, extra, questions, config).await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} documents projected, {} current chunks; HNSW recall@10 {:.4} over {} queries",
                    report.documents, report.chunks, report.recall_at_10, report.recall_queries
                );
                for (name, phase) in [("idle", &report.idle), ("projector busy", &report.under_projection)] {
                    println!(
                        "{name:>15}: dense search p50 {:.1} ms p99 {:.1} ms (question's embedding: mean {:.1} ms) | hybrid search p50 {:.1} ms p99 {:.1} ms | command p50 {:.2} ms p99 {:.2} ms | {} events projected meanwhile{}{}",
                        phase.dense_search.p50_ms, phase.dense_search.p99_ms, phase.query_embedding_mean_ms, phase.hybrid_search.p50_ms, phase.hybrid_search.p99_ms, phase.command.p50_ms, phase.command.p99_ms,
                        phase.projected_during, if phase.backlog_throughout { ", backlog left at the end" } else { "" },
                        phase.steal_percent.map(|p| format!(" | CPU steal {p:.1}%")).unwrap_or_default()
                    );
                    let stages: Vec<String> = phase
                        .command_stages
                        .iter()
                        .map(|s| match s.count {
                            0 => format!("{} none", s.stage),
                            _ => format!("{} mean {:.2} ms, p99 <= {} ms", s.stage, s.mean_ms, s.p99_at_most_ms),
                        })
                        .collect();
                    println!("{:>15}  command stages: {}", "", stages.join("; "));
                    let waits: Vec<String> = phase
                        .wait_events
                        .iter()
                        .map(|(e, share)| format!("{e} {:.0}%", share * 100.0))
                        .collect();
                    println!("{:>15}  database backends: {}", "", waits.join(", "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Embed {
            corpus,
            limit,
            passes,
            query_pause_ms,
            query,
            json,
            model,
        } => {
            let text =
                recall::ingest::read_text_file(&corpus).with_context(|| format!("cannot read {}", corpus.display()))?;
            let mut texts = Vec::new();
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let value: serde_json::Value =
                    serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", corpus.display(), i + 1))?;
                let passage = value["text"]
                    .as_str()
                    .with_context(|| format!("{}:{}: no \"text\"", corpus.display(), i + 1))?;
                texts.push(passage.to_owned());
            }
            texts.truncate(limit.unwrap_or(usize::MAX));
            let report = tokio::task::spawn_blocking(move || {
                let embedder = model.load()?;
                anyhow::Ok(run_embed_bench(
                    &embedder,
                    &texts,
                    passes,
                    model.max_batch_tokens,
                    &query,
                    std::time::Duration::from_millis(query_pause_ms),
                )?)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} passages, {} tokens, {} threads on {}: {:.1} passages/s, {:.0} tokens/s (median of {} passes); one query of {} word pieces p50 {:.2} ms, p99 {:.2} ms ({} ms idle before each)",
                    report.passages, report.tokens, report.threads, report.device, report.passages_per_s, report.tokens_per_s, report.passes, report.query_tokens, report.query_latency.p50_ms, report.query_latency.p99_ms, report.query_pause_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Extract {
            corpus,
            passes,
            json,
            model,
        } => {
            let (_, embedder) = model.load_shared().await?;
            let report = extract::run_extract_bench(&corpus, embedder, passes).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for line in report.lines() {
                    println!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Scale {
            corpus,
            limit,
            workers,
            model_documents,
            model_workers,
            read_clients,
            read_seconds,
            json,
            model,
        } => {
            let mut documents = read_corpus(&corpus, "bench")?;
            documents.truncate(limit.unwrap_or(usize::MAX));
            let embedder = std::sync::Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
            let targets = DatabaseTargets::from_env();
            // The replica copies the cluster that holds the read model, when recall runs it.
            let replica_of = match (&targets.read_model, &targets.log) {
                (Some(postgres::DatabaseTarget::Embedded { home, .. }), _)
                | (None, postgres::DatabaseTarget::Embedded { home, .. }) => {
                    Some(postgres::EmbeddedServer::locate(home.clone())?)
                }
                _ => None,
            };
            let config = scale::ScaleConfig {
                workers,
                model_documents,
                model_workers,
                read_clients,
                read_seconds,
                replica_of,
                database: scratch_name(),
            };
            let report = on_scratch_database(false, |databases| async move {
                Ok(scale::run_scale_bench(databases, embedder, documents, config).await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} documents, {} chunks, {} tokens, {} shards",
                    report.documents, report.chunks, report.tokens, report.shards
                );
                for r in &report.write_side {
                    println!(
                        "write side (stand-in model), {} workers: {:.0} chunks/s ({:.2}x one worker)",
                        r.workers, r.chunks_per_s, r.ratio
                    );
                }
                for r in &report.copy_limit {
                    println!(
                        "COPY into a plain pgvector table with HNSW, {} connections: {:.0} rows/s",
                        r.connections, r.rows_per_s
                    );
                }
                println!(
                    "best write side / best COPY: {:.0}%",
                    report.write_side_of_limit * 100.0
                );
                let f = &report.footprint;
                println!(
                    "per chunk: table {:.0} B, HNSW {:.0} B (halfvec {:.0} B), GIN {:.0} B, b-trees {:.0} B, WAL {:.0} B; halfvec COPY {:.0} rows/s",
                    f.table_bytes_per_chunk, f.hnsw_bytes_per_chunk, f.halfvec_hnsw_bytes_per_chunk, f.gin_bytes_per_chunk,
                    f.btree_bytes_per_chunk, f.wal_bytes_per_chunk, f.halfvec_copy_rows_per_s
                );
                println!(
                    "the model alone ({} documents): {:.0} tokens/s",
                    report.model_documents, report.model_raw_tokens_per_s
                );
                for r in &report.model_projection {
                    println!(
                        "projection with the model, {} workers: {:.0} tokens/s, {:.1} chunks/s ({:.2}x one worker)",
                        r.workers, r.tokens_per_s, r.chunks_per_s, r.ratio
                    );
                }
                for r in &report.reads {
                    println!(
                        "dense searches, {} clients, primary + {} replicas: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms",
                        r.clients, r.replicas, r.searches_per_s, r.latency.p50_ms, r.latency.p99_ms
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Project {
            corpus,
            limit,
            json,
            model,
        } => {
            let mut documents = read_corpus(&corpus, "bench")?;
            documents.truncate(limit.unwrap_or(usize::MAX));
            let embedder = tokio::task::spawn_blocking(move || model.load()).await??;
            let backend = std::sync::Arc::new(recall::projector::ModelBackend::new(embedder, 32));
            let report = on_scratch_database(false, |databases| async move {
                Ok(run_project_bench(databases, backend, documents).await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} documents, {} chunks, {} tokens: raw embedder {:.0} tokens/s; projection {:.1} docs/s, {:.0} tokens/s ({:.0}% of raw)",
                    report.documents, report.chunks, report.tokens, report.raw_embed_tokens_per_s, report.projection_documents_per_s,
                    report.projection_tokens_per_s, report.ratio * 100.0
                );
                println!(
                    "single new document searchable after p50 {:.1} ms (p99 {:.1} ms); its embedding alone p50 {:.1} ms",
                    report.single_document_visible.p50_ms, report.single_document_visible.p99_ms, report.single_document_embed.p50_ms
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Agents {
            corpus,
            queries,
            limit,
            searches,
            json,
            model,
        } => {
            let mut documents = read_corpus(&corpus, "bench")?;
            documents.truncate(limit);
            let questions = read_questions(&queries)?;
            let (threads, embedder) = model.load_shared().await?;
            let report = on_scratch_database(false, |databases| async move {
                Ok(agents::run_agents_bench(databases, embedder, documents, questions, searches, threads).await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "{} documents; {} searches each: REST p50 {:.2} ms p99 {:.2} ms, MCP p50 {:.2} ms p99 {:.2} ms (MCP adds {:.2} ms at p50)",
                    report.documents, report.searches, report.rest_search.p50_ms, report.rest_search.p99_ms,
                    report.mcp_search.p50_ms, report.mcp_search.p99_ms, report.mcp_overhead_p50_ms
                );
                println!(
                    "/v1/embeddings, batches of 32: {:.0} tokens/s; raw embedder on the same batches {:.0} tokens/s ({:.0}%)",
                    report.embeddings_api_tokens_per_s, report.raw_embedder_tokens_per_s, report.embeddings_api_ratio * 100.0
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Append {
            single,
            clients,
            per_client,
            bulk,
            batch,
            json,
        } => {
            let config = AppendBenchConfig {
                single_commands: single,
                clients,
                commands_per_client: per_client,
                bulk_documents: bulk,
                bulk_batch: batch,
            };
            let report = on_scratch_database(false, |databases| async move {
                Ok(run_append_bench(
                    &recall::commands::CommandHandler::new(EventStore::new(databases.log().clone())),
                    config,
                )
                .await?)
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                for r in [&report.one_client, &report.many_clients] {
                    println!(
                        "{:>2} client(s): {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  ({} commands)",
                        r.clients, r.events_per_s, r.latency.p50_ms, r.latency.p99_ms, r.latency.count
                    );
                }
                println!(
                    "bulk ingest: {:>8.0} events/s  ({} documents in batches of {})",
                    report.bulk_events_per_s, report.bulk_documents, report.bulk_batch
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
