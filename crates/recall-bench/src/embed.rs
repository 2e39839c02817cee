//! `recall-bench embed`: embedder throughput on a passage corpus (whole passages truncated at
//! max_seq_length, as sentence-transformers encodes them) and the latency of one query (a short one unless given).

use std::time::{Duration, Instant};

use recall::embed::{EmbedError, Embedder};

use crate::measure::Latency;

#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbedBenchReport {
    pub passages: usize,
    pub tokens: usize,
    pub passes: usize,
    /// Median pass.
    pub passages_per_s: f64,
    pub tokens_per_s: f64,
    pub query_latency: Latency,
    /// Word pieces of the timed query, with its special tokens.
    pub query_tokens: usize,
    /// Idle time before each timed query.
    pub query_pause_ms: u64,
    pub device: &'static str,
    pub threads: usize,
    pub max_batch_tokens: usize,
}

pub fn run_embed_bench(
    embedder: &Embedder,
    texts: &[String],
    passes: usize,
    max_batch_tokens: usize,
    query: &str,
    query_pause: Duration,
) -> Result<EmbedBenchReport, EmbedError> {
    let inputs = texts
        .iter()
        .map(|t| embedder.truncated_input(t))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    // One warm-up pass over a slice, so page faults of first use are not measured.
    embedder.embed_inputs(&inputs[..inputs.len().min(64)])?;
    let mut times = Vec::with_capacity(passes);
    for _ in 0..passes.max(1) {
        let t = Instant::now();
        let vectors = embedder.embed_inputs(&inputs)?;
        times.push(t.elapsed());
        assert_eq!(vectors.len(), inputs.len());
    }
    times.sort();
    let median = times[times.len() / 2].as_secs_f64();
    let query_tokens = embedder.truncated_input(query)?.len();
    let mut samples: Vec<Duration> = Vec::new();
    for _ in 0..100 {
        // Left idle for a while, this VM's cores take the next query markedly slower (see the README).
        std::thread::sleep(query_pause);
        let t = Instant::now();
        embedder.encode(&[query])?;
        samples.push(t.elapsed());
    }
    Ok(EmbedBenchReport {
        passages: inputs.len(),
        tokens,
        passes: times.len(),
        passages_per_s: inputs.len() as f64 / median,
        tokens_per_s: tokens as f64 / median,
        query_latency: Latency::from_samples(samples),
        query_tokens,
        query_pause_ms: query_pause.as_millis() as u64,
        device: embedder.device_name(),
        threads: embedder.cpu_threads(),
        max_batch_tokens,
    })
}
