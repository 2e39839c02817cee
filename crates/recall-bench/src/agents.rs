//! `recall-bench agents`: what the agent-facing protocols cost over the REST API, on one running service:
//! an MCP `search` tool call over Streamable HTTP against the same `POST /v1/search`, in turn, and
//! `/v1/embeddings` throughput in batches of 32 passages against the raw embedder on the same batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use recall::commands::CommandHandler;
use recall::domain::{DocumentContent, DocumentKey};
use recall::embed::Embedder;
use recall::event_store::EventStore;
use recall::postgres::Databases;
use recall::read_model;
use recall::runtime::{CpuPolicy, Priority};
use recall::server::{self, Model, ServerConfig};

use crate::measure::{BenchError, Latency};

/// Passages per `/v1/embeddings` request.
const EMBED_BATCH: usize = 32;

#[derive(Debug, Clone, serde::Serialize)]
pub struct AgentsReport {
    pub documents: usize,
    pub searches: usize,
    pub rest_search: Latency,
    pub mcp_search: Latency,
    /// MCP p50 minus REST p50, in milliseconds.
    pub mcp_overhead_p50_ms: f64,
    pub embed_passages: usize,
    pub embed_tokens: usize,
    pub embeddings_api_tokens_per_s: f64,
    pub raw_embedder_tokens_per_s: f64,
    /// The API's throughput over the raw embedder's.
    pub embeddings_api_ratio: f64,
}

pub async fn run_agents_bench(
    databases: Databases,
    embedder: Arc<Embedder>,
    documents: Vec<(DocumentKey, DocumentContent)>,
    questions: Vec<String>,
    searches: usize,
    threads: usize,
) -> Result<AgentsReport, BenchError> {
    let passages: Vec<String> = documents.iter().map(|(_, c)| c.text.as_str().to_owned()).collect();
    let store = EventStore::new(databases.log().clone());
    let head = CommandHandler::new(store.clone()).add_all(&documents).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| BenchError::Http(e.to_string()))?;
    let mut server = server::start(
        ServerConfig {
            cpu: CpuPolicy::beside_api(threads, Priority::Normal),
            ..ServerConfig::default()
        },
        databases.clone(),
        Some(listener),
        Model::Loaded(embedder.clone()),
    )
    .await?;
    server.ready().await?;
    tracing::info!(documents = head, "projecting the corpus");
    let position = store.head().await.map_err(recall::projector::ProjectorError::from)?;
    read_model::wait_for(databases.read_model(), position, Duration::from_secs(3600)).await?;
    let base = format!("http://{}", server.address().expect("listening"));

    let raw = {
        let (embedder, passages) = (embedder.clone(), passages.clone());
        tokio::task::spawn_blocking(move || raw_tokens_per_s(&embedder, &passages))
            .await
            .map_err(join)??
    };
    let (rest, mcp, api_tokens, api_seconds) = tokio::task::spawn_blocking(move || {
        let (rest, mcp) = searches_in_turn(&base, &questions, searches)?;
        let (tokens, seconds) = embeddings_api(&base, &passages)?;
        Ok::<_, BenchError>((rest, mcp, tokens, seconds))
    })
    .await
    .map_err(join)??;
    server.shutdown().await?;
    let (rest_search, mcp_search) = (Latency::from_samples(rest), Latency::from_samples(mcp));
    let embeddings_api_tokens_per_s = api_tokens as f64 / api_seconds;
    Ok(AgentsReport {
        documents: documents.len(),
        searches,
        mcp_overhead_p50_ms: mcp_search.p50_ms - rest_search.p50_ms,
        rest_search,
        mcp_search,
        embed_passages: documents.len(),
        embed_tokens: api_tokens,
        embeddings_api_tokens_per_s,
        raw_embedder_tokens_per_s: raw.0,
        embeddings_api_ratio: embeddings_api_tokens_per_s / raw.0,
    })
}

fn join(error: tokio::task::JoinError) -> BenchError {
    BenchError::Http(format!("a measuring thread failed: {error}"))
}

fn http(error: ureq::Error) -> BenchError {
    BenchError::Http(error.to_string())
}

/// The same searches through both front ends, alternating, so that both see the same machine.
fn searches_in_turn(base: &str, questions: &[String], n: usize) -> Result<(Vec<Duration>, Vec<Duration>), BenchError> {
    let agent = ureq::AgentBuilder::new().build();
    let session = McpSession::open(&agent, base)?;
    let (mut rest, mut mcp) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let question = &questions[i % questions.len()];
        let arguments = json!({"query": question, "k": 10});
        let started = Instant::now();
        agent
            .post(&format!("{base}/v1/search"))
            .send_json(arguments.clone())
            .map_err(http)?
            .into_string()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        rest.push(started.elapsed());
        let started = Instant::now();
        let answer = session.call(&agent, "tools/call", json!({"name": "search", "arguments": arguments}))?;
        mcp.push(started.elapsed());
        if answer["result"]["isError"] == json!(true) || answer["result"]["structuredContent"].is_null() {
            return Err(BenchError::Http(format!("the MCP search failed: {answer}")));
        }
    }
    Ok((rest, mcp))
}

/// An MCP session over Streamable HTTP, spoken by hand: the JSON-RPC calls an agent host makes.
struct McpSession {
    url: String,
    id: String,
    next: std::cell::Cell<u64>,
}

impl McpSession {
    fn open(agent: &ureq::Agent, base: &str) -> Result<Self, BenchError> {
        let url = format!("{base}/mcp");
        let response = agent
            .post(&url)
            .set("Accept", "application/json, text/event-stream")
            .send_json(json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "recall-bench", "version": "0"}}}))
            .map_err(http)?;
        let id = response
            .header("mcp-session-id")
            .ok_or_else(|| BenchError::Http("no Mcp-Session-Id".into()))?
            .to_owned();
        response.into_string().map_err(|e| BenchError::Http(e.to_string()))?;
        let session = McpSession {
            url,
            id,
            next: std::cell::Cell::new(1),
        };
        agent
            .post(&session.url)
            .set("Accept", "application/json, text/event-stream")
            .set("Mcp-Session-Id", &session.id)
            .set("MCP-Protocol-Version", "2025-06-18")
            .send_json(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .map_err(http)?;
        Ok(session)
    }

    fn call(&self, agent: &ureq::Agent, method: &str, params: Value) -> Result<Value, BenchError> {
        let id = self.next.replace(self.next.get() + 1);
        let body = agent
            .post(&self.url)
            .set("Accept", "application/json, text/event-stream")
            .set("Mcp-Session-Id", &self.id)
            .set("MCP-Protocol-Version", "2025-06-18")
            .send_json(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .map_err(http)?
            .into_string()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        // One server-sent event carries the answer (after an empty priming one).
        let data = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find(|d| !d.trim().is_empty())
            .unwrap_or(&body);
        serde_json::from_str(data.trim()).map_err(|e| BenchError::Http(format!("{e}: {body}")))
    }
}

/// Word pieces per second through `/v1/embeddings`, batches of EMBED_BATCH in turn: (tokens, seconds).
fn embeddings_api(base: &str, passages: &[String]) -> Result<(usize, f64), BenchError> {
    let agent = ureq::AgentBuilder::new().build();
    let (mut tokens, started) = (0, Instant::now());
    for batch in passages.chunks(EMBED_BATCH) {
        let answer: Value = agent
            .post(&format!("{base}/v1/embeddings"))
            .send_json(json!({"model": "recall", "input": batch}))
            .map_err(http)?
            .into_json()
            .map_err(|e| BenchError::Http(e.to_string()))?;
        tokens += answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as usize;
    }
    Ok((tokens, started.elapsed().as_secs_f64()))
}

/// The raw embedder on the same batches (each text truncated as the API does): (tokens/s, tokens).
fn raw_tokens_per_s(embedder: &Embedder, passages: &[String]) -> Result<(f64, usize), BenchError> {
    let (mut tokens, started) = (0, Instant::now());
    for batch in passages.chunks(EMBED_BATCH) {
        let inputs = batch
            .iter()
            .map(|p| embedder.truncated_input(p))
            .collect::<Result<Vec<_>, _>>()?;
        tokens += inputs.iter().map(Vec::len).sum::<usize>();
        embedder.embed_inputs(&inputs)?;
    }
    Ok((tokens as f64 / started.elapsed().as_secs_f64(), tokens))
}
