//! An inference-only BERT encoder forward for the CPU, on Candle tensors. Sequences are packed without
//! padding into one (tokens, hidden) matrix, so every matrix multiply works on real tokens only; Q, K and
//! V come from one fused projection; bias, GELU, residual and layer norm are fused kernels (`kernels`).
//! Mean pooling then needs no mask: each sequence averages its own rows.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

use super::kernels::{layer_norm_rows, BiasGelu, BiasResidualLayerNorm, UnpaddedAttention};
use super::matmul::Weight;
use super::quantized::Precision;
use super::EmbedError;

struct Norm {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

impl Norm {
    /// The fused `layer_norm(x + bias + residual)` with this norm's parameters.
    fn after<'a>(&'a self, bias: &'a [f32], eps: f32) -> BiasResidualLayerNorm<'a> {
        BiasResidualLayerNorm {
            bias,
            gamma: &self.gamma,
            beta: &self.beta,
            eps,
        }
    }
}

struct Layer {
    /// (hidden, 3 x hidden): the query, key and value weights side by side, transposed for `x @ w`.
    qkv_t: Weight,
    qkv_bias: Vec<f32>,
    attention_out_t: Weight,
    attention_out_bias: Vec<f32>,
    attention_norm: Norm,
    intermediate_t: Weight,
    intermediate_bias: Vec<f32>,
    output_t: Weight,
    output_bias: Vec<f32>,
    output_norm: Norm,
}

pub(crate) struct PackedBert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    eps: f32,
    max_positions: usize,
}

fn vector(vb: &VarBuilder, len: usize, name: &str) -> candle_core::Result<Vec<f32>> {
    vb.get(len, name)?.to_vec1::<f32>()
}

fn norm(vb: &VarBuilder, hidden: usize) -> candle_core::Result<Norm> {
    // Old checkpoints name the layer-norm parameters gamma/beta.
    let gamma = vector(vb, hidden, "weight").or_else(|_| vector(vb, hidden, "gamma"))?;
    let beta = vector(vb, hidden, "bias").or_else(|_| vector(vb, hidden, "beta"))?;
    Ok(Norm { gamma, beta })
}

fn transposed(vb: &VarBuilder, out: usize, input: usize, name: &str) -> candle_core::Result<Weight> {
    Weight::new(&vb.get((out, input), name)?.t()?.contiguous()?)
}

impl PackedBert {
    pub(crate) fn load(vb: VarBuilder, config: &Config) -> Result<Self, EmbedError> {
        if !matches!(config.hidden_act, HiddenAct::Gelu) {
            return Err(EmbedError::Model(candle_core::Error::Msg(format!(
                "the packed CPU encoder implements GELU only, not {:?}",
                config.hidden_act
            ))));
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let e = vb.pp("embeddings");
        let flat = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
        let word = flat(e.get((config.vocab_size, h), "word_embeddings.weight")?)?;
        let position = flat(e.get((config.max_position_embeddings, h), "position_embeddings.weight")?)?;
        let token_type = flat(e.get((config.type_vocab_size, h), "token_type_embeddings.weight")?)?;
        let embedding_norm = norm(&e.pp("LayerNorm"), h)?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let vb = vb.pp(format!("encoder.layer.{l}"));
            let a = vb.pp("attention");
            let s = a.pp("self");
            let qkv = Tensor::cat(
                &[
                    s.get((h, h), "query.weight")?,
                    s.get((h, h), "key.weight")?,
                    s.get((h, h), "value.weight")?,
                ],
                0,
            )?;
            let mut qkv_bias = vector(&s, h, "query.bias")?;
            qkv_bias.extend(vector(&s, h, "key.bias")?);
            qkv_bias.extend(vector(&s, h, "value.bias")?);
            layers.push(Layer {
                qkv_t: Weight::new(&qkv.t()?.contiguous()?)?,
                qkv_bias,
                attention_out_t: transposed(&a, h, h, "output.dense.weight")?,
                attention_out_bias: vector(&a, h, "output.dense.bias")?,
                attention_norm: norm(&a.pp("output.LayerNorm"), h)?,
                intermediate_t: transposed(&vb, i, h, "intermediate.dense.weight")?,
                intermediate_bias: vector(&vb, i, "intermediate.dense.bias")?,
                output_t: transposed(&vb, h, i, "output.dense.weight")?,
                output_bias: vector(&vb, h, "output.dense.bias")?,
                output_norm: norm(&vb.pp("output.LayerNorm"), h)?,
            });
        }
        Ok(PackedBert {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            hidden: h,
            heads: config.num_attention_heads,
            eps: config.layer_norm_eps as f32,
            max_positions: config.max_position_embeddings,
        })
    }

    /// Packs every layer's weights for `precision` now rather than on the first batch.
    pub(crate) fn prepare(&self, precision: Precision) {
        for layer in &self.layers {
            for weight in [
                &layer.qkv_t,
                &layer.attention_out_t,
                &layer.intermediate_t,
                &layer.output_t,
            ] {
                weight.prepare(precision);
            }
        }
    }

    /// Mean-pooled, L2-normalised embeddings of the given inputs (each with its special tokens), in order,
    /// with the matrix multiplies in `precision`.
    pub(crate) fn embed(&self, inputs: &[&[u32]], precision: Precision) -> Result<Vec<Vec<f32>>, EmbedError> {
        // Enter the thread pool once for the whole forward pass: every parallel kernel inside then runs
        // as worker-local work, instead of each of its ~50 calls handing a job to the pool and sleeping
        // until it is done (which costs a thread wake-up each, and dominates a short query).
        rayon::scope(|_| self.forward(inputs, precision))
    }

    fn forward(&self, inputs: &[&[u32]], precision: Precision) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = self.hidden;
        let mut offsets = Vec::with_capacity(inputs.len() + 1);
        offsets.push(0usize);
        for input in inputs {
            if input.len() > self.max_positions {
                return Err(EmbedError::Model(candle_core::Error::Msg(format!(
                    "an input of {} tokens is longer than the model's {} positions",
                    input.len(),
                    self.max_positions
                ))));
            }
            offsets.push(offsets.last().expect("non-empty") + input.len());
        }
        let tokens = *offsets.last().expect("non-empty");
        let vocab = self.word.len() / h;
        let mut x = Vec::with_capacity(tokens * h);
        for input in inputs {
            for (p, &id) in input.iter().enumerate() {
                let id = (id as usize).min(vocab - 1);
                let (w, pos) = (&self.word[id * h..(id + 1) * h], &self.position[p * h..(p + 1) * h]);
                x.extend(
                    w.iter()
                        .zip(pos)
                        .zip(&self.token_type[..h])
                        .map(|((a, b), c)| a + b + c),
                );
            }
        }
        layer_norm_rows(
            &mut x,
            h,
            &self.embedding_norm.gamma,
            &self.embedding_norm.beta,
            self.eps,
        );
        let mut x = Tensor::from_vec(x, (tokens, h), &Device::Cpu)?;
        for layer in &self.layers {
            let context = layer
                .qkv_t
                .apply(&x, Some(&layer.qkv_bias), precision)?
                .apply_op1_no_bwd(&UnpaddedAttention {
                    offsets: &offsets,
                    heads: self.heads,
                })?;
            // The fused kernels below work in place on the matmul outputs, which nothing else holds.
            let attended = layer.attention_out_t.apply(&context, None, precision)?;
            attended.inplace_op2(&x, &layer.attention_norm.after(&layer.attention_out_bias, self.eps))?;
            let intermediate = layer.intermediate_t.apply(&attended, None, precision)?;
            intermediate.inplace_op1(&BiasGelu {
                bias: &layer.intermediate_bias,
            })?;
            x = layer.output_t.apply(&intermediate, None, precision)?;
            x.inplace_op2(&attended, &layer.output_norm.after(&layer.output_bias, self.eps))?;
        }
        let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(offsets
            .windows(2)
            .map(|w| {
                let mut mean = vec![0.0f32; h];
                for row in x[w[0] * h..w[1] * h].chunks(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                let n = (w[1] - w[0]).max(1) as f32;
                mean.iter_mut().for_each(|m| *m /= n);
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect())
    }
}
