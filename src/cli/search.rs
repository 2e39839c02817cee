//! `recall search`: one question, or a BEIR-style queries file, against the read model.

use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use serde_json::json;

use recall::domain::Scope;
use recall::embed::Embedder;
use recall::search::{search_on, Query, SearchRequest};

use super::values::Mode;

use super::embed::ModelArgs;
use super::open_databases;

#[derive(Args)]
pub struct SearchArgs {
    /// The question.
    #[arg(required_unless_present = "queries")]
    query: Option<String>,
    /// A JSONL file of queries ({"_id", "text"} a line); one JSON line of results per query.
    #[arg(long, conflicts_with = "query")]
    queries: Option<std::path::PathBuf>,
    #[arg(short, long, default_value_t = 10)]
    k: usize,
    /// dense (embeddings), lexical (BM25) or hybrid (both, fused by reciprocal rank).
    #[arg(long, value_enum, default_value = "hybrid")]
    mode: Mode,
    #[arg(long)]
    scope: Option<String>,
    /// Metadata the documents must contain, as a JSON object.
    #[arg(long)]
    filter: Option<String>,
    /// Replay a search as of this log position (a receipt).
    #[arg(long)]
    as_of: Option<i64>,
    /// Each document once, at its best chunk: up to k distinct documents.
    #[arg(long)]
    distinct_documents: bool,
    /// With --distinct-documents: list each document's other matching chunks.
    #[arg(long, requires = "distinct_documents")]
    other_chunks: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// BEIR-style queries: `{"_id", "text"}` a line.
pub(super) fn read_queries(path: &std::path::Path) -> anyhow::Result<Vec<(Option<String>, String)>> {
    Ok(recall::eval::read_queries(path)?)
}

/// Each question's vector, or none when there is no model (lexical search). Each question is embedded
/// on its own, as the HTTP API embeds one: a batch pads its rows and takes other kernels, whose rounding
/// could swap near-ties, and the same request must rank alike through every interface.
pub(super) async fn question_vectors(
    embedder: Option<Arc<Embedder>>,
    questions: Vec<String>,
) -> anyhow::Result<Vec<Option<Vec<f32>>>> {
    let Some(embedder) = embedder else {
        return Ok(vec![None; questions.len()]);
    };
    let vectors = tokio::task::spawn_blocking(move || {
        questions
            .iter()
            .map(|q| Ok(embedder.encode(&[q.as_str()])?.remove(0)))
            .collect::<Result<Vec<_>, recall::embed::EmbedError>>()
    })
    .await??;
    Ok(vectors.into_iter().map(Some).collect())
}

pub async fn run(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let request = SearchRequest {
        k: args.k,
        scope: args.scope.as_deref().map(Scope::parse).transpose()?,
        filter: args
            .filter
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .context("--filter is not valid JSON")?,
        as_of: args.as_of,
        mode: args.mode.into(),
        first_chunk_only: false,
        distinct_documents: args.distinct_documents,
        other_chunks: args.other_chunks,
    };
    let queries: Vec<(Option<String>, String)> = match (&args.query, &args.queries) {
        (Some(q), _) => vec![(None, q.clone())],
        (None, Some(path)) => read_queries(path)?,
        (None, None) => unreachable!("clap requires one"),
    };
    // The same checks as the HTTP API's, before any database or model work.
    for (i, (id, text)) in queries.iter().enumerate() {
        request
            .validate(Query { text, vector: None })
            .with_context(|| match (id, &args.queries) {
                (Some(id), Some(path)) => format!("{}: query {id}", path.display()),
                (None, Some(path)) => format!("{}: query {}", path.display(), i + 1),
                _ => "the question".to_owned(),
            })?;
    }
    let databases = open_databases().await?;
    let readers = recall::read_model::Readers::new(&databases);
    // Lexical search needs no model; the others embed every question in one go, at the precision the
    // active generation's vectors were computed in.
    let embedder = if request.mode.needs_vector() {
        let mut model = args.model.clone();
        if let Some(generation) = recall::read_model::active(databases.read_model()).await? {
            model.precision = generation.precision;
        }
        Some(Arc::new(tokio::task::spawn_blocking(move || model.load()).await??))
    } else {
        None
    };
    let questions: Vec<String> = queries.iter().map(|(_, q)| q.clone()).collect();
    let vectors = question_vectors(embedder, questions).await?;
    for ((id, text), vector) in queries.iter().zip(vectors) {
        let query = Query {
            text,
            vector: vector.as_deref(),
        };
        let response = search_on(&readers, query, &request).await?;
        if args.json || args.queries.is_some() {
            let mut line = serde_json::to_value(&response)?;
            if let Some(id) = id {
                line["query_id"] = json!(id);
            }
            println!("{line}");
        } else {
            println!(
                "receipt: position {} (replay with --as-of {})",
                response.position, response.position
            );
            for (rank, hit) in response.results.iter().enumerate() {
                let snippet: String = hit.text.chars().take(160).collect();
                let cited = hit.citation().map(|c| format!("  [{c}]")).unwrap_or_default();
                println!(
                    "{:>2}. {:.4}  {}:{} #{}  {}{cited}\n    {}",
                    rank + 1,
                    hit.score,
                    hit.scope,
                    hit.document_id,
                    hit.chunk_index,
                    hit.title,
                    snippet.replace('\n', " ")
                );
                if let Some(others) = hit.other_chunks.as_ref().filter(|o| !o.is_empty()) {
                    let spans: Vec<String> = others
                        .iter()
                        .map(|m| format!("#{} [{}..{}] {:.4}", m.chunk_index, m.char_start, m.char_end, m.score))
                        .collect();
                    println!("    also: {}", spans.join(", "));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
