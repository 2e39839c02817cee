//! `recall-bench project`: end-to-end projection throughput beside the raw embedder on the same chunks,
//! and how soon a single new document becomes searchable on an idle system.

use recall::postgres::Databases;
use recall::read_model;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentKey};
use recall::event_store::EventStore;
use recall::projector::{EmbedBackend, ModelBackend, Projector, ProjectorError, ProjectorOptions, Target};

use crate::measure::{BenchError, Latency};

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProjectBenchReport {
    pub documents: usize,
    pub chunks: usize,
    pub tokens: usize,
    pub raw_embed_tokens_per_s: f64,
    pub projection_documents_per_s: f64,
    pub projection_tokens_per_s: f64,
    /// Projection throughput over raw embedder throughput.
    pub ratio: f64,
    /// Append to searchable (projector committed), one document at a time on an idle system.
    pub single_document_visible: Latency,
    /// The same documents' embedding time alone.
    pub single_document_embed: Latency,
}

/// `documents` go into the (scratch) database behind `store`, which must be empty.
pub async fn run_project_bench(
    databases: Databases,
    backend: Arc<ModelBackend>,
    documents: Vec<(DocumentKey, DocumentContent)>,
) -> Result<ProjectBenchReport, BenchError> {
    let store = EventStore::new(databases.log().clone());
    let n = documents.len();
    // Raw embedder on exactly the chunks the projector will embed.
    let prepared = {
        let backend = backend.clone();
        let docs = documents.clone();
        tokio::task::spawn_blocking(move || {
            let inputs: Vec<Vec<u32>> = docs
                .iter()
                .flat_map(|(_, c)| {
                    backend
                        .chunk(c.title.as_str(), c.text.as_str(), &[])
                        .expect("chunking")
                        .into_iter()
                        .map(|c| c.input_ids)
                })
                .collect();
            let tokens: usize = inputs.iter().map(Vec::len).sum();
            // One warm-up call first, as the projection below runs on a warm model: on a GPU the first
            // call also loads kernels and sets up cuBLAS (an H100 run measured raw at a third of projection).
            backend.embed(&inputs[..inputs.len().min(64)]).expect("embedding");
            let t = Instant::now();
            backend.embed(&inputs).expect("embedding");
            (inputs.len(), tokens, t.elapsed())
        })
        .await
        .map_err(|e| ProjectorError::Panicked(e.to_string()))?
    };
    let (chunks, tokens, raw) = prepared;

    let handler = CommandHandler::new(store.clone());
    handler.add_all(&documents).await?;
    let ctx = CommandContext::default();
    // Its own connections, as `recall project` opens them.
    let background = databases.background_beside(0, None).await?;
    let projector = Projector::new(&background, backend.clone(), ProjectorOptions::default());
    let t = Instant::now();
    projector.run_until_caught_up(Target::Active).await?;
    let projection = t.elapsed();

    // Single documents on an idle system, with the projector running and waiting on NOTIFY.
    let worker = projector.spawn(Target::Active);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut visible = Vec::new();
    let mut embed = Vec::new();
    for (i, (key, content)) in documents.iter().take(20).enumerate() {
        let key = DocumentKey::new(
            key.scope.clone(),
            recall::domain::DocumentId::parse(&format!("latency-{i}")).expect("valid id"),
        );
        let t = Instant::now();
        let outcome = handler
            .execute(
                &key,
                DocumentCommand::Add {
                    content: content.clone(),
                },
                &ctx,
            )
            .await
            .map_err(|e| ProjectorError::Panicked(e.to_string()))?;
        let recall::commands::CommandOutcome::Appended { position, .. } = outcome else {
            continue;
        };
        read_model::wait_for(databases.read_model(), position, Duration::from_secs(60)).await?;
        visible.push(t.elapsed());
        let backend = backend.clone();
        let content = content.clone();
        let e = tokio::task::spawn_blocking(move || {
            let inputs: Vec<Vec<u32>> = backend
                .chunk(content.title.as_str(), content.text.as_str(), &[])
                .expect("chunking")
                .into_iter()
                .map(|c| c.input_ids)
                .collect();
            let t = Instant::now();
            backend.embed(&inputs).expect("embedding");
            t.elapsed()
        })
        .await
        .map_err(|e| ProjectorError::Panicked(e.to_string()))?;
        embed.push(e);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await?;

    let raw_rate = tokens as f64 / raw.as_secs_f64();
    let projection_rate = tokens as f64 / projection.as_secs_f64();
    Ok(ProjectBenchReport {
        documents: n,
        chunks,
        tokens,
        raw_embed_tokens_per_s: raw_rate,
        projection_documents_per_s: n as f64 / projection.as_secs_f64(),
        projection_tokens_per_s: projection_rate,
        ratio: projection_rate / raw_rate,
        single_document_visible: Latency::from_samples(visible),
        single_document_embed: Latency::from_samples(embed),
    })
}
