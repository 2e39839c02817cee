//! What the projector needs from a model: its identity, a chunker and a batch embedder. The trait keeps
//! Candle out of the projector and lets tests put a failing model in front of it.

use std::sync::Arc;

use crate::embed::{Chunk, Chunker, ComputePool, EmbedError, Embedder, ModelIdentity};

pub trait EmbedBackend: Send + Sync + 'static {
    fn identity(&self) -> &ModelIdentity;
    fn chunk(&self, title: &str, text: &str) -> Result<Vec<Chunk>, EmbedError>;
    /// One L2-normalised vector per input, in input order.
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// The real model with its token-aware chunker.
pub struct ModelBackend {
    embedder: Arc<Embedder>,
    chunker: Chunker,
    pool: Option<ComputePool>,
}

impl ModelBackend {
    /// `overlap` is in word pieces; chunks embed as "title text".
    pub fn new(embedder: Embedder, overlap: usize) -> Self {
        let chunker = embedder.chunker(overlap, true);
        Self::shared(Arc::new(embedder), chunker, None)
    }

    /// A backend over a model that others (the query path) also use, embedding on its own `pool` when
    /// given one so that its batches and their work do not share threads.
    pub fn shared(embedder: Arc<Embedder>, chunker: Chunker, pool: Option<ComputePool>) -> Self {
        ModelBackend {
            embedder,
            chunker,
            pool,
        }
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }
}

impl EmbedBackend for ModelBackend {
    fn identity(&self) -> &ModelIdentity {
        self.embedder.identity()
    }

    fn chunk(&self, title: &str, text: &str) -> Result<Vec<Chunk>, EmbedError> {
        self.chunker.chunk(title, text)
    }

    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.pool {
            Some(pool) => pool.install(|| self.embedder.embed_inputs(inputs)),
            None => self.embedder.embed_inputs(inputs),
        }
    }
}
