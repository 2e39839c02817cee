//! The model and scheduling options every measurement shares, spelled as `recall serve` spells them.

use clap::{Args, ValueEnum};

use recall::embed::{DevicePreference, Embedder, EmbedderOptions, EncoderKind, ModelSource, Precision};
use recall::runtime::Priority;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A local model folder, or a Hugging Face repo id (optionally `repo@revision`).
    #[arg(long, env = "RECALL_MODEL")]
    model: Option<String>,
    /// Largest batch, counted as rows x padded length in word pieces.
    #[arg(long, env = "RECALL_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    #[arg(long, value_enum, env = "RECALL_DEVICE", default_value = "auto")]
    device: Device,
    /// packed: recall's CPU forward; padded: candle-transformers' BertModel (what a GPU uses).
    #[arg(long, value_enum, env = "RECALL_ENCODER", default_value = "packed")]
    encoder: Encoder,
    /// CPU threads for the model (default: all cores).
    #[arg(long, env = "RECALL_THREADS")]
    threads: Option<usize>,
    /// The matrix multiplies' arithmetic: f32, bf16 or int8.
    #[arg(long, env = "RECALL_PRECISION", default_value = "f32")]
    precision: Precision,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Device {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Encoder {
    Packed,
    Padded,
}

impl ModelArgs {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(recall::runtime::available_threads)
    }

    /// The model loaded on a blocking thread, to share between the service and the driver, with the
    /// thread count it embeds with.
    pub async fn load_shared(self) -> anyhow::Result<(usize, std::sync::Arc<Embedder>)> {
        let threads = self.threads();
        let embedder = tokio::task::spawn_blocking(move || self.load()).await??;
        Ok((threads, std::sync::Arc::new(embedder)))
    }

    pub fn load(&self) -> anyhow::Result<Embedder> {
        if let Some(threads) = self.threads {
            // Candle's CPU kernels size their pool from this variable when the model first runs.
            std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
        }
        let options = EmbedderOptions {
            device: match self.device {
                Device::Auto => DevicePreference::Auto,
                Device::Cpu => DevicePreference::Cpu,
                Device::Cuda => DevicePreference::Cuda,
            },
            max_batch_tokens: self.max_batch_tokens,
            encoder: match self.encoder {
                Encoder::Packed => EncoderKind::Packed,
                Encoder::Padded => EncoderKind::Padded,
            },
            precision: self.precision,
        };
        let source = ModelSource::parse(self.model.as_deref());
        Ok(Embedder::load(&source, options)?)
    }
}

/// Scheduling of the threads that embed questions, as `recall serve --query-priority`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum QueryPriority {
    Realtime,
    Normal,
}

impl QueryPriority {
    pub fn priority(self) -> Priority {
        match self {
            QueryPriority::Realtime => Priority::Realtime,
            QueryPriority::Normal => Priority::Normal,
        }
    }
}
