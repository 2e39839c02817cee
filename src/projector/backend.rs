//! What the projector needs from a model: its identity, a chunker and a batch embedder. The trait keeps
//! Candle out of the projector and lets tests put a failing model in front of it.

use crate::embed::{Chunk, Chunker, EmbedError, Embedder, ModelIdentity};

pub trait EmbedBackend: Send + Sync + 'static {
    fn identity(&self) -> &ModelIdentity;
    fn chunk(&self, title: &str, text: &str) -> Result<Vec<Chunk>, EmbedError>;
    /// One L2-normalised vector per input, in input order.
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// The real model with its token-aware chunker.
pub struct ModelBackend {
    embedder: Embedder,
    chunker: Chunker,
}

impl ModelBackend {
    /// `overlap` is in word pieces; chunks embed as "title text".
    pub fn new(embedder: Embedder, overlap: usize) -> Self {
        let chunker = embedder.chunker(overlap, true);
        ModelBackend { embedder, chunker }
    }

    pub fn embedder(&self) -> &Embedder {
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
        self.embedder.embed_inputs(inputs)
    }
}
