//! Text to vectors: model files (a local folder or a Hugging Face repo through hf-hub), the tokenizer,
//! token-aware chunking with exact character offsets, token-budget batching, a Candle BERT forward pass
//! with masked mean pooling and L2 normalisation. The interface is small and synchronous; callers run it
//! on their own thread, never on the async runtime.

mod bert;
mod chunker;
mod files;
mod kernels;
mod matmul;
mod model;
mod quantized;

use thiserror::Error;

pub use chunker::{Chunk, ChunkOptions, Chunker, MAX_CHUNK_CHARS};
pub use files::{ModelFiles, ModelIdentity, ModelSource, DEFAULT_MODEL};
pub use model::{DevicePreference, Embedder, EmbedderOptions, EncoderKind};
pub use quantized::Precision;

#[derive(Debug, Error)]
pub enum EmbedError {
    #[error("model file {path} is missing; {hint}")]
    MissingFile { path: String, hint: String },
    #[error("model file {path} is invalid: {reason}")]
    InvalidFile { path: String, reason: String },
    #[error("cannot fetch {repo} from the Hugging Face hub: {reason}; download the model folder and pass it with --model DIR (see models/README.md)")]
    Hub { repo: String, reason: String },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("model error: {0}")]
    Model(#[from] candle_core::Error),
    #[error("precision {precision} runs on the packed CPU encoder only; use --device cpu --encoder packed, or --precision f32")]
    PrecisionNeedsPackedEncoder { precision: Precision },
    #[error(
        "this build has no CUDA support; rebuild with `cargo build --release --features cuda` or use --device cpu"
    )]
    NoCuda,
}
