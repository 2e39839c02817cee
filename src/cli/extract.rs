//! `recall extract FILE`: what ingest would store for a file (its text, pages and sections), and the
//! hidden `--worker` mode in which recall parses PDF and HTML for another recall process, bounded.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use recall::domain::{Limits, Metadata};
use recall::extract::{Extractor, Format, Hint, WorkerArgs};

use super::read_input;

#[derive(Args)]
pub struct ExtractArgs {
    /// The file (`-` for stdin).
    #[arg(required_unless_present = "worker")]
    path: Option<PathBuf>,
    /// The media type of stdin (`application/pdf`, `text/html`, `text/markdown`, `text/plain`), when the
    /// content alone does not say.
    #[arg(long)]
    media_type: Option<String>,
    /// Print the document as JSON (title, text and its origin: media type, size, SHA-256, pages, sections).
    #[arg(long)]
    json: bool,
    #[arg(long, env = "RECALL_MAX_TEXT_BYTES", default_value_t = Limits::DEFAULT_MAX_TEXT_BYTES)]
    max_text_bytes: usize,
    /// Parse one file of this format from stdin for another recall process (see `Extractor`).
    #[arg(long, hide = true, value_parser = ["pdf", "html", "markdown", "text"])]
    worker: Option<String>,
    #[arg(long, hide = true, default_value_t = 1 << 30)]
    memory_bytes: u64,
    #[arg(long, hide = true, default_value_t = 61)]
    cpu_seconds: u64,
}

/// The worker runs before any async runtime or thread starts: its limits bound one parse, nothing else.
pub fn worker(args: &ExtractArgs) -> Option<ExitCode> {
    let name = args.worker.as_deref()?;
    let format = Format::ALL.into_iter().find(|f| f.name() == name)?;
    Some(recall::extract::run_worker(WorkerArgs {
        format,
        memory_bytes: args.memory_bytes,
        cpu_seconds: args.cpu_seconds,
        max_text_bytes: args.max_text_bytes,
    }))
}

pub async fn run(args: ExtractArgs) -> anyhow::Result<ExitCode> {
    let path = args.path.expect("clap requires a path outside worker mode");
    let text_limits = Limits {
        max_text_bytes: args.max_text_bytes,
    };
    let extractor = Extractor::from_env(text_limits).map_err(anyhow::Error::msg)?;
    let bytes = read_input(&path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let hint = Hint {
        name: name.clone().filter(|n| n != "-"),
        media_type: args.media_type,
    };
    let (format, content) = extractor
        .document(&bytes, &hint, name.as_deref().unwrap_or(""), Metadata::default())
        .await
        .with_context(|| format!("{}", path.display()))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"format": format, "title": content.title, "text": content.text, "origin": content.origin})
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("format:   {}", format.name());
    println!("title:    {}", content.title.as_str());
    if let Some(origin) = &content.origin {
        println!("original: {} bytes, sha256 {}", origin.bytes, origin.sha256);
        if !origin.pages.is_empty() {
            println!("pages:    {}", origin.pages.len());
        }
        for section in &origin.sections {
            println!(
                "section:  {} [{}..{})",
                section.path.join(" > "),
                section.start,
                section.end
            );
        }
    }
    println!("text:     {} characters\n", content.text.as_str().chars().count());
    println!("{}", content.text.as_str());
    Ok(ExitCode::SUCCESS)
}
