//! The Candle BERT encoder with masked mean pooling and L2 normalisation, fed in batches that are
//! filled up to a token budget from length-sorted inputs, so padding stays small.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::BertModel;
use tokenizers::Tokenizer;

use super::bert::PackedBert;
use super::{ChunkOptions, Chunker, EmbedError, ModelFiles, ModelIdentity, ModelSource, Precision};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePreference {
    /// A GPU when this build has CUDA and one is present, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

/// Which encoder implementation runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderKind {
    /// recall's CPU forward: unpadded sequences, fused QKV, fused kernels (CPU only).
    Packed,
    /// candle-transformers' BertModel on padded batches with an attention mask (any device).
    Padded,
}

#[derive(Debug, Clone, Copy)]
pub struct EmbedderOptions {
    pub device: DevicePreference,
    /// Largest batch, counted as rows x padded length.
    pub max_batch_tokens: usize,
    /// On a GPU the padded encoder is used whatever this says.
    pub encoder: EncoderKind,
    /// The matrix multiplies' arithmetic; int8 and bf16 need the packed CPU encoder.
    pub precision: Precision,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            device: DevicePreference::Auto,
            max_batch_tokens: 8192,
            encoder: EncoderKind::Packed,
            precision: Precision::F32,
        }
    }
}

enum Encoder {
    Packed(PackedBert),
    Padded(BertModel),
}

pub struct Embedder {
    encoder: Encoder,
    device: Device,
    files: ModelFiles,
    /// The files' identity at this embedder's precision.
    identity: ModelIdentity,
    tokenizer: Arc<Tokenizer>,
    cls: u32,
    sep: u32,
    pad: u32,
    options: EmbedderOptions,
}

fn select_device(preference: DevicePreference) -> Result<Device, EmbedError> {
    match preference {
        DevicePreference::Cpu => Ok(Device::Cpu),
        DevicePreference::Auto => {
            if !cfg!(feature = "cuda") {
                return Ok(Device::Cpu);
            }
            // candle's `cuda_if_available` only asks whether the build has CUDA, so a CUDA build on a
            // machine without a GPU (or driver) would fail; auto means the CPU there.
            match Device::new_cuda(0) {
                Ok(device) => Ok(device),
                Err(e) => {
                    tracing::info!(error = %e, "no usable CUDA device; embedding on the CPU");
                    Ok(Device::Cpu)
                }
            }
        }
        DevicePreference::Cuda => {
            if cfg!(feature = "cuda") {
                Ok(Device::new_cuda(0)?)
            } else {
                Err(EmbedError::NoCuda)
            }
        }
    }
}

impl Embedder {
    #[tracing::instrument(skip_all)]
    pub fn load(source: &ModelSource, options: EmbedderOptions) -> Result<Self, EmbedError> {
        let files = ModelFiles::resolve(source)?;
        let device = select_device(options.device)?;
        let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| EmbedError::InvalidFile {
            path: files.tokenizer.display().to_string(),
            reason: e.to_string(),
        })?;
        // The shipped tokenizer.json truncates at 128 and pads to 128; sentence-transformers truncates at
        // max_seq_length and pads per batch. We do both ourselves, so switch the file's settings off.
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let special = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| EmbedError::InvalidFile {
                path: files.tokenizer.display().to_string(),
                reason: format!("the vocabulary has no {token} token"),
            })
        };
        let (cls, sep, pad) = (special("[CLS]")?, special("[SEP]")?, special("[PAD]")?);
        // SAFETY: the weights file is memory-mapped read-only and not modified while the model lives.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[&files.weights], DType::F32, &device) }.map_err(|e| {
                EmbedError::InvalidFile {
                    path: files.weights.display().to_string(),
                    reason: e.to_string(),
                }
            })?;
        let mismatch = |e: &dyn std::fmt::Display| EmbedError::InvalidFile {
            path: files.weights.display().to_string(),
            reason: format!("does not match config.json: {e}"),
        };
        let encoder = if device.is_cpu() && options.encoder == EncoderKind::Packed {
            let model = PackedBert::load(vb, &files.config).map_err(|e| mismatch(&e))?;
            model.prepare(options.precision);
            Encoder::Packed(model)
        } else if options.precision != Precision::F32 {
            return Err(EmbedError::PrecisionNeedsPackedEncoder {
                precision: options.precision,
            });
        } else {
            Encoder::Padded(BertModel::load(vb, &files.config).map_err(|e| mismatch(&e))?)
        };
        let identity = ModelIdentity {
            precision: options.precision,
            ..files.identity.clone()
        };
        if !options.precision.accelerated() {
            tracing::warn!(precision = %options.precision, "this CPU lacks the instructions for this precision; its kernels run portably (slowly)");
        }
        tracing::info!(model = %identity, device = ?device, "embedding model loaded");
        Ok(Embedder {
            encoder,
            device,
            files,
            identity,
            tokenizer: Arc::new(tokenizer),
            cls,
            sep,
            pad,
            options,
        })
    }

    /// The model and the precision its vectors are computed in.
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    pub fn precision(&self) -> Precision {
        self.identity.precision
    }

    pub fn dimension(&self) -> usize {
        self.files.identity.dimension
    }

    pub fn max_seq_length(&self) -> usize {
        self.files.max_seq_length
    }

    /// The CPU threads the model's kernels run on (Candle's pool: `RAYON_NUM_THREADS`, else every core).
    pub fn cpu_threads(&self) -> usize {
        candle_core::utils::get_num_threads()
    }

    pub fn device_name(&self) -> &'static str {
        if self.device.is_cuda() {
            "cuda"
        } else {
            "cpu"
        }
    }

    /// A chunker for this model; `overlap` is in word pieces.
    pub fn chunker(&self, overlap: usize, title_prefix: bool) -> Chunker {
        self.chunker_with(ChunkOptions {
            max_tokens: self.max_seq_length(),
            overlap,
            title_prefix,
        })
    }

    /// A chunker with other settings (chunks shorter than the model's sequence length, say); a
    /// `max_tokens` over max_seq_length is cut down to it.
    pub fn chunker_with(&self, options: ChunkOptions) -> Chunker {
        let max_tokens = options.max_tokens.min(self.max_seq_length());
        Chunker::new(
            self.tokenizer.clone(),
            self.cls,
            self.sep,
            ChunkOptions { max_tokens, ..options },
        )
    }

    /// One model input for a whole text, truncated at max_seq_length as sentence-transformers does.
    pub fn truncated_input(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        let keep = ids.len().min(self.max_seq_length() - 2);
        let mut input = Vec::with_capacity(keep + 2);
        input.push(self.cls);
        input.extend_from_slice(&ids[..keep]);
        input.push(self.sep);
        Ok(input)
    }

    /// Embeds whole texts (truncated), in input order.
    pub fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.encode_at(texts, self.precision())
    }

    /// Embeds whole texts at another precision than the embedder's own (a query against a generation
    /// built at that precision); the weights are packed for it on first use.
    pub fn encode_at(&self, texts: &[&str], precision: Precision) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inputs = texts
            .iter()
            .map(|t| self.truncated_input(t))
            .collect::<Result<Vec<_>, _>>()?;
        self.embed_inputs_at(&inputs, precision)
    }

    /// Embeds prepared model inputs, in input order, batching by the token budget over length-sorted inputs.
    pub fn embed_inputs(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.embed_inputs_at(inputs, self.precision())
    }

    #[tracing::instrument(skip_all, fields(inputs = inputs.len(), precision = %precision))]
    pub fn embed_inputs_at(&self, inputs: &[Vec<u32>], precision: Precision) -> Result<Vec<Vec<f32>>, EmbedError> {
        if precision != Precision::F32 && !matches!(self.encoder, Encoder::Packed(_)) {
            return Err(EmbedError::PrecisionNeedsPackedEncoder { precision });
        }
        let mut order: Vec<usize> = (0..inputs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(inputs[i].len()));
        let mut out = vec![Vec::new(); inputs.len()];
        let mut at = 0;
        while at < order.len() {
            // Sorted longest first, so the first row of a batch sets its padded length.
            let longest = inputs[order[at]].len().max(1);
            let rows = (self.options.max_batch_tokens / longest).max(1).min(order.len() - at);
            let batch: Vec<&[u32]> = order[at..at + rows].iter().map(|&i| inputs[i].as_slice()).collect();
            for (k, vector) in self.forward(&batch, precision)?.into_iter().enumerate() {
                out[order[at + k]] = vector;
            }
            at += rows;
        }
        Ok(out)
    }

    fn forward(&self, batch: &[&[u32]], precision: Precision) -> Result<Vec<Vec<f32>>, EmbedError> {
        match &self.encoder {
            Encoder::Packed(model) => model.embed(batch, precision),
            Encoder::Padded(model) => self.forward_padded(model, batch),
        }
    }

    fn forward_padded(&self, model: &BertModel, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let rows = batch.len();
        let len = batch.iter().map(|b| b.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        for input in batch {
            ids.extend_from_slice(input);
            ids.extend(std::iter::repeat_n(self.pad, len - input.len()));
            mask.extend(std::iter::repeat_n(1u32, input.len()));
            mask.extend(std::iter::repeat_n(0u32, len - input.len()));
        }
        let ids = Tensor::from_vec(ids, (rows, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, len), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over real tokens only: padded rows would otherwise drag every short text's vector.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f32::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}
