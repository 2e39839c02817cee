//! `recall embed`: JSONL or plain lines in, one JSON embedding a line out, in input order.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use recall::embed::{Embedder, EmbedderOptions, ModelSource, Precision};

use super::values::{Device, Encoder};

/// Settings shared by everything that loads the model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A local model folder, or a Hugging Face repo id (optionally `repo@revision`).
    /// Default: models/all-MiniLM-L6-v2 when present, else sentence-transformers/all-MiniLM-L6-v2.
    #[arg(long, env = "RECALL_MODEL")]
    pub model: Option<String>,
    /// Largest batch, counted as rows x padded length in word pieces.
    #[arg(long, env = "RECALL_MAX_BATCH_TOKENS", default_value_t = 8192)]
    pub max_batch_tokens: usize,
    #[arg(long, value_enum, env = "RECALL_DEVICE", default_value = "auto")]
    pub device: Device,
    /// The encoder implementation (packed is CPU only; a GPU always uses padded).
    #[arg(long, value_enum, env = "RECALL_ENCODER", default_value = "packed")]
    pub encoder: Encoder,
    /// CPU threads for the model (default: all cores).
    #[arg(long, env = "RECALL_THREADS")]
    pub threads: Option<usize>,
    /// The matrix multiplies' arithmetic: f32, bf16 (AVX512_BF16) or int8 (AVX512_VNNI). Part of a
    /// read model's identity: workers must match its generation; `recall rebuild --precision` switches.
    #[arg(long, env = "RECALL_PRECISION", default_value = "f32")]
    pub precision: Precision,
}

impl ModelArgs {
    /// The CPU threads the model gets: --threads, else every core.
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(recall::runtime::available_threads)
    }

    pub fn load(&self) -> anyhow::Result<Embedder> {
        let source = ModelSource::parse(self.model.as_deref());
        self.embedder()
            .with_context(|| format!("loading the embedding model from {source:?}"))
    }

    /// The model, with its error as the library gives it.
    pub fn embedder(&self) -> Result<Embedder, recall::embed::EmbedError> {
        if let Some(threads) = self.threads {
            // Candle's CPU kernels size their pool from this variable when the model first runs.
            std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
        }
        let source = ModelSource::parse(self.model.as_deref());
        Embedder::load(
            &source,
            EmbedderOptions {
                device: self.device.into(),
                max_batch_tokens: self.max_batch_tokens,
                encoder: self.encoder.into(),
                precision: self.precision,
            },
        )
    }
}

#[derive(Args)]
pub struct EmbedArgs {
    /// JSONL ({"id"?, "title"?, "text"}) or plain lines; `-` or nothing for stdin.
    input: Option<PathBuf>,
    /// Emit one object per chunk (with offsets) instead of one truncated embedding per input.
    #[arg(long)]
    chunk: bool,
    /// Word pieces shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    overlap: usize,
    /// Embed the chunk text alone, without the title in front.
    #[arg(long)]
    no_title: bool,
    #[command(flatten)]
    model: ModelArgs,
}

struct Input {
    id: Option<Value>,
    title: String,
    text: String,
}

fn parse_line(line: &str, line_no: usize) -> anyhow::Result<Input> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') {
        let value: Value = serde_json::from_str(line).with_context(|| format!("line {line_no}: not valid JSON"))?;
        let text = value
            .get("text")
            .and_then(Value::as_str)
            .with_context(|| format!("line {line_no}: no \"text\" string field"))?;
        let title = value.get("title").and_then(Value::as_str).unwrap_or("");
        let id = value.get("id").or_else(|| value.get("_id")).cloned();
        Ok(Input {
            id,
            title: title.to_owned(),
            text: text.to_owned(),
        })
    } else {
        Ok(Input {
            id: None,
            title: String::new(),
            text: line.to_owned(),
        })
    }
}

/// Inputs embedded per block: big enough for full batches, small enough to stream output.
const BLOCK: usize = 512;

pub fn run(args: EmbedArgs) -> anyhow::Result<ExitCode> {
    let embedder = args.model.load()?;
    let reader: Box<dyn BufRead> = match &args.input {
        None => Box::new(BufReader::new(std::io::stdin())),
        Some(p) if p.as_os_str() == "-" => Box::new(BufReader::new(std::io::stdin())),
        Some(p) => Box::new(BufReader::new(
            recall::ingest::open_regular_file(p).with_context(|| format!("cannot open {}", p.display()))?,
        )),
    };
    let chunker = embedder.chunker(args.overlap, !args.no_title);
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut block: Vec<Input> = Vec::with_capacity(BLOCK);
    let flush = |block: &mut Vec<Input>, out: &mut BufWriter<_>| -> anyhow::Result<()> {
        if args.chunk {
            let mut rows = Vec::new();
            let mut inputs = Vec::new();
            for input in block.iter() {
                for chunk in chunker.chunk(&input.title, &input.text, &[])? {
                    inputs.push(chunk.input_ids.clone());
                    rows.push((input.id.clone(), chunk));
                }
            }
            for ((id, chunk), embedding) in rows.into_iter().zip(embedder.embed_inputs(&inputs)?) {
                let mut obj = json!({"chunk_index": chunk.index, "char_start": chunk.char_start, "char_end": chunk.char_end, "tokens": chunk.text_tokens, "embedding": embedding});
                if let Some(id) = id {
                    obj["id"] = id;
                }
                writeln!(out, "{obj}")?;
            }
        } else {
            let texts: Vec<String> = block
                .iter()
                .map(|i| {
                    if i.title.is_empty() {
                        i.text.clone()
                    } else {
                        format!("{} {}", i.title, i.text)
                    }
                })
                .collect();
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for (input, embedding) in block.iter().zip(embedder.encode(&refs)?) {
                let mut obj = json!({"embedding": embedding});
                if let Some(id) = &input.id {
                    obj["id"] = id.clone();
                }
                writeln!(out, "{obj}")?;
            }
        }
        block.clear();
        Ok(())
    };
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading line {}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        block.push(parse_line(&line, i + 1)?);
        if block.len() >= BLOCK {
            flush(&mut block, &mut out)?;
        }
    }
    flush(&mut block, &mut out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
