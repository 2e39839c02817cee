//! `recall-bench extract`: how fast files become text (pages/s for PDF, MB/s for HTML and Markdown),
//! through the bounded worker processes an ingest uses and in-process beside it, and how fast the model
//! embeds that text, in the same unit: whichever is slower bounds an ingest of such files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use recall::domain::Limits;
use recall::embed::Embedder;
use recall::extract::{extract_in_process, ExtractLimits, Extractor, Hint};

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FormatReport {
    pub files: usize,
    pub pages: usize,
    pub bytes: u64,
    pub tokens: usize,
    /// Extraction through the worker processes (what ingest and uploads do), best of the passes.
    pub worker_seconds: f64,
    /// The same parsers in this process, without the process boundary.
    pub in_process_seconds: f64,
    /// Chunking and embedding the extracted text.
    pub embed_seconds: f64,
}

impl FormatReport {
    /// Pages (PDF) or MB of originals per second, for a duration.
    fn rate(&self, seconds: f64) -> f64 {
        let amount = if self.pages > 0 {
            self.pages as f64
        } else {
            self.bytes as f64 / 1e6
        };
        amount / seconds.max(1e-9)
    }

    pub fn unit(&self) -> &'static str {
        if self.pages > 0 {
            "pages/s"
        } else {
            "MB/s"
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractBenchReport {
    pub formats: BTreeMap<&'static str, FormatReport>,
    pub passes: usize,
}

impl ExtractBenchReport {
    pub fn lines(&self) -> Vec<String> {
        self.formats
            .iter()
            .map(|(name, f)| {
                format!(
                    "{name}: {} files, {} pages, {:.2} MB: extraction {} {unit} in workers ({} in-process), embedding {} {unit}; bound by {}",
                    f.files,
                    f.pages,
                    f.bytes as f64 / 1e6,
                    figure(f.rate(f.worker_seconds)),
                    figure(f.rate(f.in_process_seconds)),
                    figure(f.rate(f.embed_seconds)),
                    if f.worker_seconds > f.embed_seconds { "extraction" } else { "embedding" },
                    unit = f.unit(),
                )
            })
            .collect()
    }
}

/// Three significant figures or so, whatever the magnitude.
fn figure(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.3}"),
    }
}

/// The recall binary beside this one (both are built into the same target folder).
pub fn sibling_recall() -> Option<PathBuf> {
    let path = std::env::current_exe().ok()?.with_file_name("recall");
    path.exists().then_some(path)
}

pub async fn run_extract_bench(
    corpus: &Path,
    embedder: std::sync::Arc<Embedder>,
    passes: usize,
) -> anyhow::Result<ExtractBenchReport> {
    let program = std::env::var_os("RECALL_EXTRACT_PROGRAM")
        .map(PathBuf::from)
        .or_else(sibling_recall);
    anyhow::ensure!(
        program.is_some(),
        "no recall binary beside recall-bench: build it (cargo build --release) or set RECALL_EXTRACT_PROGRAM"
    );
    // One worker at a time: the timings are per file, not a measure of parallelism.
    let limits = ExtractLimits {
        max_workers: 1,
        ..ExtractLimits::default()
    };
    let extractor = Extractor::new(program, limits, Limits::default());
    let found = recall::ingest::discover_files(&[corpus.to_path_buf()], false);
    anyhow::ensure!(
        !found.files.is_empty(),
        "no PDF, HTML, Markdown or text files under {}",
        corpus.display()
    );
    let mut formats: BTreeMap<&'static str, FormatReport> = BTreeMap::new();
    let mut texts: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for path in &found.files {
        let bytes = std::fs::read(path)?;
        let hint = Hint {
            name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            media_type: None,
        };
        let mut best_worker = f64::MAX;
        let mut best_in_process = f64::MAX;
        let mut extracted = None;
        for _ in 0..passes.max(1) {
            let t = Instant::now();
            let e = extractor.extract(&bytes, &hint).await?;
            best_worker = best_worker.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            extract_in_process(&bytes, e.format, &Limits::default())?;
            best_in_process = best_in_process.min(t.elapsed().as_secs_f64());
            extracted = Some(e);
        }
        let extracted = extracted.expect("at least one pass");
        let name = extracted.format.name();
        let report = formats.entry(name).or_default();
        report.files += 1;
        report.pages += extracted.pages.len();
        report.bytes += bytes.len() as u64;
        report.worker_seconds += best_worker;
        report.in_process_seconds += best_in_process;
        texts.entry(name).or_default().push(extracted.text);
    }
    for (name, texts) in texts {
        let embedder = embedder.clone();
        let (tokens, seconds) = tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, f64)> {
            let chunker = embedder.chunker(32, true);
            let t = Instant::now();
            let mut inputs = Vec::new();
            for text in &texts {
                inputs.extend(chunker.chunk("", text, &[])?.into_iter().map(|c| c.input_ids));
            }
            embedder.embed_inputs(&inputs)?;
            Ok((inputs.iter().map(Vec::len).sum(), t.elapsed().as_secs_f64()))
        })
        .await??;
        let report = formats.get_mut(name).expect("extracted above");
        report.tokens = tokens;
        report.embed_seconds = seconds;
    }
    Ok(ExtractBenchReport { formats, passes })
}
