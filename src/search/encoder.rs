//! The query side's own path to the model: the same weights as the projector, but a thread pool of its
//! own at normal priority, so a question is embedded at once even while the projector is busy.

use std::sync::Arc;

use crate::embed::{EmbedError, Embedder, Precision};
use crate::runtime::ComputePool;

pub struct QueryEncoder {
    embedder: Arc<Embedder>,
    pool: ComputePool,
}

impl QueryEncoder {
    pub fn new(embedder: Arc<Embedder>, pool: ComputePool) -> Self {
        QueryEncoder { embedder, pool }
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }

    /// One query's vector (the text truncated at the model's max_seq_length, as sentence-transformers
    /// does). Blocking: call it from a blocking thread.
    pub fn encode(&self, query: &str) -> Result<Vec<f32>, EmbedError> {
        self.encode_at(query, self.embedder.precision())
    }

    /// One query's vector at `precision` (a generation's that differs from the embedder's own).
    pub fn encode_at(&self, query: &str, precision: Precision) -> Result<Vec<f32>, EmbedError> {
        let mut vectors = self.pool.install(|| self.embedder.encode_at(&[query], precision))?;
        Ok(vectors.remove(0))
    }

    /// Several texts' vectors (each truncated at max_seq_length) and the word pieces read, on this
    /// pool. Blocking.
    pub fn encode_many(&self, texts: &[String]) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        let inputs = texts
            .iter()
            .map(|text| self.embedder.truncated_input(text))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens = inputs.iter().map(Vec::len).sum();
        let vectors = self.pool.install(|| self.embedder.embed_inputs(&inputs))?;
        Ok((vectors, tokens))
    }
}
