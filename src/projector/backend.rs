//! What the projector needs from a model: its identity, a chunker and a batch embedder. The trait keeps
//! Candle out of the projector and lets tests put a failing model in front of it.

use std::sync::Arc;

use crate::embed::{Chunk, Chunker, EmbedError, Embedder, ModelIdentity};
use crate::runtime::ComputePool;

use super::Foreground;

/// Word pieces embedded between two looks at the foreground: about half a second of model work on two
/// cores, so a burst of requests finds a free core soon, while pieces stay large enough to batch well.
const PIECE_TOKENS: usize = 4096;

pub trait EmbedBackend: Send + Sync + 'static {
    fn identity(&self) -> &ModelIdentity;
    fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError>;
    /// One L2-normalised vector per input, in input order.
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError>;
    /// Where the model runs (`cpu`, `cuda`), for the roll of workers.
    fn device(&self) -> &str {
        "cpu"
    }
}

/// The real model with its token-aware chunker.
pub struct ModelBackend {
    embedder: Arc<Embedder>,
    chunker: Chunker,
    pool: Option<ComputePool>,
    /// A pool with a core fewer, used while the foreground is active.
    narrow: Option<(ComputePool, Foreground)>,
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
            narrow: None,
        }
    }

    /// While `foreground` is active, embeds on `narrow` (give it a thread fewer than the main pool) so
    /// that a core stays free for the requests; see [`Foreground`] for why.
    pub fn yielding_to(mut self, foreground: Foreground, narrow: ComputePool) -> Self {
        self.narrow = Some((narrow, foreground));
        self
    }

    /// The pool for work now: the narrow one while the foreground is active (then `true`), else the main
    /// one, if any. The foreground is read once, so the caller's choice and its count agree.
    fn current_pool(&self) -> (Option<&ComputePool>, bool) {
        match &self.narrow {
            Some((narrow, foreground)) if foreground.active() => (Some(narrow), true),
            _ => (self.pool.as_ref(), false),
        }
    }

    fn embed_on(&self, pool: Option<&ComputePool>, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        run_on(pool, || self.embedder.embed_inputs(inputs))
    }

    pub fn embedder(&self) -> &Arc<Embedder> {
        &self.embedder
    }
}

impl EmbedBackend for ModelBackend {
    fn identity(&self) -> &ModelIdentity {
        self.embedder.identity()
    }

    fn device(&self) -> &str {
        self.embedder.device_name()
    }

    fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        // Tokenising is the projector's other CPU work. On the caller's thread (the runtime's blocking
        // pool: normal priority, any CPU) it would take the CPU kept free for requests, so it runs on the
        // model's threads, as the embedding does.
        run_on(self.current_pool().0, || {
            self.chunker.chunk(title, text, section_starts)
        })
    }

    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let Some((_, foreground)) = &self.narrow else {
            return self.embed_on(self.pool.as_ref(), inputs);
        };
        let mut vectors = Vec::with_capacity(inputs.len());
        for piece in pieces(inputs, PIECE_TOKENS) {
            let (pool, narrowed) = self.current_pool();
            if narrowed {
                foreground.count_yielded();
            }
            vectors.extend(self.embed_on(pool, piece)?);
        }
        Ok(vectors)
    }
}

/// Runs `work` on `pool`'s threads, or on the caller's when there is no pool.
fn run_on<R: Send>(pool: Option<&ComputePool>, work: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// Consecutive runs of `inputs` of at most `budget` word pieces each (a longer input runs alone).
fn pieces(inputs: &[Vec<u32>], budget: usize) -> impl Iterator<Item = &[Vec<u32>]> {
    let mut rest = inputs;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut tokens = 0;
        let mut end = 0;
        while end < rest.len() && (end == 0 || tokens + rest[end].len() <= budget) {
            tokens += rest[end].len();
            end += 1;
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn pieces_keep_order_and_budget() {
        let inputs: Vec<Vec<u32>> = [3, 4, 2, 9, 1, 1, 5].iter().map(|&n| vec![7; n]).collect();
        let split: Vec<Vec<usize>> = pieces(&inputs, 6).map(|p| p.iter().map(Vec::len).collect()).collect();
        // 9 exceeds the budget alone and still gets a piece of its own.
        assert_eq!(split, vec![vec![3], vec![4, 2], vec![9], vec![1, 1], vec![5]]);
        assert_eq!(pieces(&[], 6).count(), 0);
    }
}
