//! `recall eval`: BEIR-style retrieval quality of the running pipeline on a corpus, its queries and qrels.

use recall::read_model;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::json;

use recall::commands::CommandHandler;
use recall::eval::{self, Qrels};
use recall::event_store::EventStore;
use recall::projector::{ModelBackend, Projector, ProjectorOptions, Target};
use recall::search::{search, Query, SearchMode, SearchRequest};

use super::values::Mode;

use super::embed::ModelArgs;
use super::read_corpus;
use super::search::{question_vectors, read_queries};
use super::{open_databases, open_projector_databases};

#[derive(Args)]
pub struct EvalArgs {
    /// BEIR corpus JSONL ({"_id", "title", "text"}).
    #[arg(long)]
    corpus: std::path::PathBuf,
    /// BEIR queries JSONL ({"_id", "text"}).
    #[arg(long)]
    queries: std::path::PathBuf,
    /// BEIR qrels TSV (query-id, corpus-id, score); graded scores are used as graded gains.
    #[arg(long)]
    qrels: std::path::PathBuf,
    #[arg(long, value_enum, default_value = "hybrid")]
    mode: Mode,
    /// The scope holding the corpus (default: eval-<the corpus's folder name>).
    #[arg(long)]
    scope: Option<String>,
    /// Rank documents by their first chunk only: the BEIR/MTEB protocol, which embeds each document
    /// truncated at the model's max_seq_length (use it to compare with published numbers).
    #[arg(long)]
    first_chunk_only: bool,
    /// Seconds to wait for the corpus to be projected.
    #[arg(long, default_value_t = 3600.0)]
    wait_timeout: f64,
    /// Also write each query's ranking to this file, in the TREC run format
    /// (`query-id Q0 document-id rank score recall`), for trec_eval or a comparison between builds.
    #[arg(long)]
    run: Option<std::path::PathBuf>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

pub async fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let mode = SearchMode::from(args.mode);
    let scope = match &args.scope {
        Some(s) => s.clone(),
        None => {
            let folder = args
                .corpus
                .canonicalize()
                .ok()
                .and_then(|p| p.parent()?.file_name()?.to_str().map(str::to_owned))
                .unwrap_or_else(|| "corpus".into());
            let clean: String = folder
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' })
                .collect();
            format!("eval-{clean}")
        }
    };
    let documents = read_corpus(&args.corpus, &scope)?;
    let qrels = Qrels::parse(
        &recall::ingest::read_text_file(&args.qrels)
            .with_context(|| format!("cannot read {}", args.qrels.display()))?,
    )?;
    let queries: Vec<(String, String)> = read_queries(&args.queries)?
        .into_iter()
        .filter_map(|(id, text)| id.filter(|id| qrels.judged(id).is_some()).map(|id| (id, text)))
        .collect();
    anyhow::ensure!(
        !queries.is_empty(),
        "no query of {} has a relevant document in {}",
        args.queries.display(),
        args.qrels.display()
    );

    let databases = open_databases().await?;
    let store = EventStore::new(databases.log().clone());
    let handler = CommandHandler::new(store.clone());
    let appended = handler.add_all(&documents).await?;
    eprintln!(
        "eval: {} documents in scope {scope} ({appended} newly added), {} judged queries",
        documents.len(),
        queries.len()
    );

    let model = args.model.clone();
    let embedder = Arc::new(tokio::task::spawn_blocking(move || model.load()).await??);
    // Wait for whichever projector gets there first: a running `recall serve`, or one started here.
    let head = store.head().await?;
    let local = Projector::new(
        &open_projector_databases().await?,
        Arc::new(ModelBackend::shared(embedder.clone(), embedder.chunker(32, true), None)),
        ProjectorOptions::default(),
    );
    let started = Instant::now();
    tokio::select! {
        waited = read_model::wait_for(databases.read_model(), head, Duration::from_secs_f64(args.wait_timeout.max(0.0))) => { waited?; }
        ran = local.run_until_caught_up(Target::Active) => { ran?; }
    }
    if started.elapsed() > Duration::from_secs(1) {
        eprintln!("eval: projected in {:.0} s", started.elapsed().as_secs_f64());
    }

    // A read model already caught up (by a server, or an earlier eval) lets the wait win before the local
    // projector's check: the questions must be embedded by the model and precision its vectors were.
    if let Some(generation) = read_model::active(databases.read_model()).await? {
        generation.admits(embedder.identity())?;
    }
    let questions: Vec<String> = queries.iter().map(|(_, q)| q.clone()).collect();
    let vectors = question_vectors(mode.needs_vector().then(|| embedder.clone()), questions).await?;
    // Documents rank by their best chunk: the search's own distinct-documents ranking, the very one an
    // agent gets, so that eval measures what users are served.
    let request = SearchRequest {
        k: 100,
        mode,
        scope: Some(recall::domain::Scope::parse(&scope)?),
        first_chunk_only: args.first_chunk_only,
        distinct_documents: true,
        ..SearchRequest::default()
    };
    let started = Instant::now();
    let mut scores = Vec::with_capacity(queries.len());
    let mut run = String::new();
    for ((id, text), vector) in queries.iter().zip(&vectors) {
        let query = Query {
            text,
            vector: vector.as_deref(),
        };
        let response = search(databases.read_model(), query, &request)
            .await
            .with_context(|| format!("query {id}"))?;
        for (rank, hit) in response.results.iter().enumerate() {
            run.push_str(&format!(
                "{id} Q0 {} {} {} recall\n",
                hit.document_id,
                rank + 1,
                hit.score
            ));
        }
        let ranking: Vec<String> = response.results.into_iter().map(|h| h.document_id).collect();
        scores.push(eval::score(&ranking, qrels.judged(id).expect("filtered above")));
    }
    if let Some(path) = &args.run {
        std::fs::write(path, run).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let mean = eval::mean(&scores);
    let per_query_ms = started.elapsed().as_secs_f64() * 1e3 / queries.len() as f64;
    if args.json {
        println!(
            "{}",
            json!({
                "corpus": args.corpus.display().to_string(), "scope": scope, "mode": mode,
                "first_chunk_only": args.first_chunk_only, "documents": documents.len(), "queries": queries.len(),
                "ndcg_at_10": mean.ndcg_at_10, "recall_at_100": mean.recall_at_100, "mrr_at_10": mean.mrr_at_10,
                "ms_per_query": per_query_ms,
            })
        );
    } else {
        println!(
            "{} ({} documents, {} queries), {:?}{}: nDCG@10 {:.4}  Recall@100 {:.4}  MRR@10 {:.4}  ({per_query_ms:.1} ms/query)",
            args.corpus.display(),
            documents.len(),
            queries.len(),
            mode,
            if args.first_chunk_only { ", first chunk only" } else { "" },
            mean.ndcg_at_10,
            mean.recall_at_100,
            mean.mrr_at_10
        );
    }
    Ok(ExitCode::SUCCESS)
}
