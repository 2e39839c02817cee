//! `recall-bench append`: single-document commands from one and from many concurrent clients, and bulk
//! ingest, on whatever database the caller hands in (the CLI uses a scratch database).

use std::time::{Duration, Instant};

use recall::commands::{CommandContext, CommandError, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};

use crate::measure::Latency;

#[derive(Debug, Clone, Copy)]
pub struct AppendBenchConfig {
    pub single_commands: usize,
    pub clients: usize,
    pub commands_per_client: usize,
    pub bulk_documents: usize,
    pub bulk_batch: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientsReport {
    pub clients: usize,
    pub events_per_s: f64,
    pub latency: Latency,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AppendBenchReport {
    pub one_client: ClientsReport,
    pub many_clients: ClientsReport,
    pub bulk_events_per_s: f64,
    pub bulk_documents: usize,
    pub bulk_batch: usize,
}

/// A realistic small document: a few hundred bytes of text, a title and a little metadata.
fn document(prefix: &str, i: usize) -> (DocumentKey, DocumentCommand) {
    let key = DocumentKey::new(
        Scope::default(),
        DocumentId::parse(&format!("{prefix}-{i}")).expect("valid id"),
    );
    let text = format!(
        "Document {i} of the append benchmark. It stands for a typical passage an agent stores: a few sentences \
         about a topic, long enough to be realistic and short enough that the log, not the payload, is measured. {}",
        "lorem ipsum ".repeat(16)
    );
    let content = DocumentContent {
        title: Title::parse(&format!("Benchmark document {i}")).expect("short title"),
        text: Text::parse(text, &Limits::default()).expect("valid text"),
        metadata: Metadata::parse(serde_json::json!({"bench": true, "i": i})).expect("small object"),
        origin: None,
    };
    (key, DocumentCommand::Add { content })
}

async fn clients_run(
    handler: &CommandHandler,
    prefix: &str,
    clients: usize,
    per_client: usize,
) -> Result<ClientsReport, CommandError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let handler = handler.clone();
        let prefix = format!("{prefix}-c{c}");
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let (key, command) = document(&prefix, i);
                let t = Instant::now();
                handler.execute(&key, command, &CommandContext::default()).await?;
                samples.push(t.elapsed());
            }
            Ok::<Vec<Duration>, CommandError>(samples)
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.expect("bench client does not panic")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(ClientsReport {
        clients,
        events_per_s: samples.len() as f64 / elapsed,
        latency: Latency::from_samples(samples),
    })
}

pub async fn run_append_bench(
    handler: &CommandHandler,
    config: AppendBenchConfig,
) -> Result<AppendBenchReport, CommandError> {
    // Warm the pool and the plan cache so the first sample does not pay for connecting.
    clients_run(handler, "warmup", config.clients, 5).await?;
    let one_client = clients_run(handler, "single", 1, config.single_commands).await?;
    let many_clients = clients_run(handler, "concurrent", config.clients, config.commands_per_client).await?;

    let docs: Vec<_> = (0..config.bulk_documents).map(|i| document("bulk", i)).collect();
    let started = Instant::now();
    for chunk in docs.chunks(config.bulk_batch) {
        for outcome in handler
            .execute_batch(chunk.to_vec(), &CommandContext::default())
            .await?
        {
            outcome?;
        }
    }
    let bulk_events_per_s = config.bulk_documents as f64 / started.elapsed().as_secs_f64();
    Ok(AppendBenchReport {
        one_client,
        many_clients,
        bulk_events_per_s,
        bulk_documents: config.bulk_documents,
        bulk_batch: config.bulk_batch,
    })
}
