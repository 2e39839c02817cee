//! `recall ingest|update|remove|history|log|verify`.

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use recall::commands::{CommandContext, CommandHandler, CommandOutcome};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Metadata, Scope, Text, Title};
use recall::event_store::{verify_chain, RecordedEvent};
use recall::extract::Extractor;
use recall::ingest::{self, IngestItem};

use super::{open_handler, open_store, read_input, WriteSettings};

/// Documents per ingest transaction: large enough to amortise the commit, small enough to report progress.
const INGEST_BATCH: usize = 1000;

#[derive(Args)]
pub struct IngestArgs {
    /// Files or directories (recursively: .pdf, .html/.htm, .md/.markdown, .txt; a file named here is
    /// read whatever its extension, by its content).
    #[arg(required_unless_present = "jsonl")]
    paths: Vec<PathBuf>,
    /// Read JSONL documents ({"id"|"_id", "title", "text", "metadata"}) from FILE, or stdin for `-`.
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    jsonl: Option<PathBuf>,
    /// The scope (tenant or collection) to add to.
    #[arg(long, default_value = Scope::DEFAULT)]
    scope: String,
    /// The id of a single ingested file (default: its path).
    #[arg(long)]
    id: Option<String>,
    /// Follow symlinked directories inside the given directories (loops are detected and not entered).
    #[arg(long)]
    follow_symlinks: bool,
    /// One JSON object per result line instead of a summary.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: WriteSettings,
}

#[derive(Args)]
pub struct UpdateArgs {
    id: String,
    /// The new text, from a file (`-` for stdin).
    #[arg(long)]
    file: PathBuf,
    /// A new title (default: keep the current one).
    #[arg(long)]
    title: Option<String>,
    /// New metadata as a JSON object (default: keep the current metadata).
    #[arg(long)]
    metadata: Option<String>,
    /// Refuse the update unless the document is at this version.
    #[arg(long)]
    expected_version: Option<u64>,
    #[arg(long, default_value = Scope::DEFAULT)]
    scope: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: WriteSettings,
}

#[derive(Args)]
pub struct RemoveArgs {
    id: String,
    #[arg(long)]
    expected_version: Option<u64>,
    #[arg(long, default_value = Scope::DEFAULT)]
    scope: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    settings: WriteSettings,
}

#[derive(Args)]
pub struct HistoryArgs {
    id: String,
    #[arg(long, default_value = Scope::DEFAULT)]
    scope: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LogArgs {
    /// Show events after this position.
    #[arg(long, default_value_t = 0)]
    from: i64,
    #[arg(long, default_value_t = 100)]
    limit: i64,
    #[arg(long)]
    json: bool,
}

#[derive(Default, serde::Serialize)]
struct IngestSummary {
    appended: u64,
    unchanged: u64,
    rejected: u64,
    /// Entries of directories that are not regular files (pipes, sockets, devices, unfollowed links).
    skipped: u64,
    /// Files read, by format (absent for JSONL).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    formats: std::collections::BTreeMap<&'static str, FormatCount>,
}

/// What the files of one format came to, and how fast they were extracted.
#[derive(Default, serde::Serialize)]
struct FormatCount {
    files: u64,
    pages: u64,
    bytes: u64,
    seconds: f64,
}

impl FormatCount {
    fn rate(&self) -> String {
        let seconds = self.seconds.max(1e-9);
        if self.pages > 0 {
            format!("{} pages, {:.0} pages/s", self.pages, self.pages as f64 / seconds)
        } else {
            format!("{:.1} MB/s", self.bytes as f64 / 1e6 / seconds)
        }
    }
}

/// Text held before a batch is appended: with documents of up to the text limit each, a count alone
/// would not bound the memory of an ingest.
const INGEST_BATCH_BYTES: usize = 32 * 1024 * 1024;

fn progress(total: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} docs ({per_sec}, eta {eta})",
        )
        .expect("a valid template"),
    );
    bar
}

fn report_rejection(json: bool, source: &str, reason: &str) {
    // Ingest errors already name their source; say it once.
    let prefix = format!("{source}: ");
    let reason = reason.strip_prefix(&prefix).unwrap_or(reason);
    if json {
        println!("{}", json!({"source": source, "status": "rejected", "error": reason}));
    } else {
        eprintln!("rejected {source}: {reason}");
    }
}

async fn flush(
    handler: &CommandHandler,
    batch: &mut Vec<IngestItem>,
    ctx: &CommandContext,
    summary: &mut IngestSummary,
    json: bool,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let items = std::mem::take(batch);
    let commands = items
        .iter()
        .map(|i| {
            (
                i.key.clone(),
                DocumentCommand::Add {
                    content: i.content.clone(),
                },
            )
        })
        .collect();
    let outcomes = handler
        .execute_batch(commands, ctx)
        .await
        .context("appending a batch")?;
    for (item, outcome) in items.iter().zip(outcomes) {
        match outcome {
            Ok(outcome) => {
                match outcome {
                    CommandOutcome::Appended { .. } => summary.appended += 1,
                    CommandOutcome::Unchanged { .. } => summary.unchanged += 1,
                }
                if json {
                    println!(
                        "{}",
                        json!({"source": item.source, "scope": item.key.scope, "id": item.key.id, "outcome": outcome})
                    );
                }
            }
            Err(e) => {
                summary.rejected += 1;
                report_rejection(json, &item.source, &e.to_string());
            }
        }
    }
    bar.inc(items.len() as u64);
    Ok(())
}

pub async fn ingest(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let scope = Scope::parse(&args.scope)?;
    let limits = args.settings.limits();
    let ctx = CommandContext {
        actor: args.settings.actor.clone(),
        correlation_id: Some(uuid::Uuid::now_v7()),
        ..Default::default()
    };
    let handler = open_handler().await?;
    let mut summary = IngestSummary::default();
    let mut batch = Vec::with_capacity(INGEST_BATCH);

    if let Some(jsonl) = &args.jsonl {
        let origin = jsonl.display().to_string();
        let reader: Box<dyn BufRead> = if jsonl.as_os_str() == "-" {
            Box::new(BufReader::new(std::io::stdin()))
        } else {
            Box::new(BufReader::new(
                recall::ingest::open_regular_file(jsonl).with_context(|| format!("cannot open {origin}"))?,
            ))
        };
        let bar = progress(None);
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.with_context(|| format!("reading {origin}"))?;
            let line_no = i + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let parsed = match std::str::from_utf8(&line) {
                Ok(text) => {
                    ingest::parse_jsonl_line(text, line_no, &origin, &scope, &limits).map_err(|e| e.to_string())
                }
                Err(e) => Err(format!(
                    "{origin}:{line_no}: the line is not valid UTF-8 (byte {})",
                    e.valid_up_to()
                )),
            };
            match parsed {
                Ok(item) => batch.push(item),
                Err(reason) => {
                    summary.rejected += 1;
                    report_rejection(args.json, &format!("{origin}:{line_no}"), &reason);
                }
            }
            if batch.len() >= INGEST_BATCH {
                flush(&handler, &mut batch, &ctx, &mut summary, args.json, &bar).await?;
            }
        }
        flush(&handler, &mut batch, &ctx, &mut summary, args.json, &bar).await?;
        bar.finish_and_clear();
    } else {
        let ingest::Discovered { files, errors, skipped } = ingest::discover_files(&args.paths, args.follow_symlinks);
        for note in skipped {
            summary.skipped += 1;
            if args.json {
                println!("{}", json!({"skipped": note}));
            } else {
                eprintln!("skipped {note}");
            }
        }
        if args.id.is_some() && files.len() != 1 {
            anyhow::bail!(
                "--id names one document, but the paths hold {} files; drop --id to use each path as its id",
                files.len()
            );
        }
        for error in errors {
            summary.rejected += 1;
            report_rejection(args.json, "path", &error.to_string());
        }
        let extractor = Extractor::from_env(limits).map_err(anyhow::Error::msg)?;
        let bar = progress(Some(files.len() as u64));
        let mut batch_bytes = 0usize;
        for file in &files {
            let started = std::time::Instant::now();
            match ingest::read_file_item(file, args.id.as_deref(), &scope, &extractor).await {
                Ok(read) => {
                    let count = summary.formats.entry(read.format.name()).or_default();
                    count.files += 1;
                    count.pages += read.pages as u64;
                    count.bytes += read.bytes;
                    count.seconds += started.elapsed().as_secs_f64();
                    batch_bytes += read.item.content.text.as_str().len();
                    batch.push(read.item);
                }
                Err(e) => {
                    summary.rejected += 1;
                    report_rejection(args.json, &file.display().to_string(), &e.to_string());
                    bar.inc(1);
                }
            }
            if batch.len() >= INGEST_BATCH || batch_bytes >= INGEST_BATCH_BYTES {
                flush(&handler, &mut batch, &ctx, &mut summary, args.json, &bar).await?;
                batch_bytes = 0;
            }
        }
        flush(&handler, &mut batch, &ctx, &mut summary, args.json, &bar).await?;
        bar.finish_and_clear();
    }

    if args.json {
        println!("{}", json!({"summary": summary}));
    } else {
        eprintln!(
            "appended {}, unchanged {}, rejected {}, skipped {}",
            summary.appended, summary.unchanged, summary.rejected, summary.skipped
        );
        for (format, count) in &summary.formats {
            eprintln!(
                "  {format}: {} files, {:.1} MB, {}",
                count.files,
                count.bytes as f64 / 1e6,
                count.rate()
            );
        }
    }
    Ok(if summary.rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_outcome(json: bool, key: &DocumentKey, outcome: &CommandOutcome) {
    if json {
        println!("{}", json!({"scope": key.scope, "id": key.id, "outcome": outcome}));
    } else {
        match outcome {
            CommandOutcome::Appended { version, position } => {
                println!("{}: version {version} at position {position}", key.id)
            }
            CommandOutcome::Unchanged { version } => {
                println!("{}: unchanged (still version {version}); nothing appended", key.id)
            }
        }
    }
}

pub async fn update(args: UpdateArgs) -> anyhow::Result<ExitCode> {
    let limits = args.settings.limits();
    let key = DocumentKey::new(Scope::parse(&args.scope)?, DocumentId::parse(&args.id)?);
    let text = Text::from_bytes(read_input(&args.file)?, &limits)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let handler = open_handler().await?;
    // Title and metadata default to the current ones, so `update --file` changes the text alone.
    let current = match handler.load(&key).await? {
        recall::domain::DocumentState::Live { content, .. } => Some(content),
        _ => None,
    };
    let title = match &args.title {
        Some(t) => Title::parse(t)?,
        None => current.as_ref().map(|c| c.title.clone()).unwrap_or_default(),
    };
    let metadata = match &args.metadata {
        Some(m) => Metadata::parse(serde_json::from_str(m).context("--metadata is not valid JSON")?)?,
        None => current.map(|c| c.metadata).unwrap_or_default(),
    };
    let command = DocumentCommand::Update {
        content: DocumentContent::plain(title, text, metadata),
        expected_version: args.expected_version,
    };
    let ctx = CommandContext {
        actor: args.settings.actor.clone(),
        ..Default::default()
    };
    let outcome = handler.execute(&key, command, &ctx).await?;
    print_outcome(args.json, &key, &outcome);
    Ok(ExitCode::SUCCESS)
}

pub async fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let key = DocumentKey::new(Scope::parse(&args.scope)?, DocumentId::parse(&args.id)?);
    let handler = open_handler().await?;
    let ctx = CommandContext {
        actor: args.settings.actor.clone(),
        ..Default::default()
    };
    let outcome = handler
        .execute(
            &key,
            DocumentCommand::Remove {
                expected_version: args.expected_version,
            },
            &ctx,
        )
        .await?;
    print_outcome(args.json, &key, &outcome);
    Ok(ExitCode::SUCCESS)
}

fn print_events(events: &[RecordedEvent], json: bool) -> anyhow::Result<()> {
    for e in events {
        if json {
            let mut value = serde_json::to_value(e)?;
            // Show payload and metadata as JSON, not as strings holding JSON.
            value["payload"] = serde_json::from_str(&e.payload)?;
            value["metadata"] = serde_json::from_str(&e.metadata)?;
            println!("{value}");
        } else {
            println!(
                "{:>8}  {}  {:<16} v{:<4} {}  {}",
                e.position,
                e.recorded_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                e.event_type,
                e.version,
                e.stream_id,
                e.actor.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let key = DocumentKey::new(Scope::parse(&args.scope)?, DocumentId::parse(&args.id)?);
    let store = open_store().await?;
    let events = store.read_stream(&key.stream_id(), 1).await?;
    if events.is_empty() {
        anyhow::bail!("document {:?} has no history in scope {:?}", args.id, args.scope);
    }
    print_events(&events, args.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn log(args: LogArgs) -> anyhow::Result<ExitCode> {
    let store = open_store().await?;
    let events = store.read_all(args.from, args.limit.clamp(1, 100_000)).await?;
    print_events(&events, args.json)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(json: bool) -> anyhow::Result<ExitCode> {
    let store = open_store().await?;
    let report = verify_chain(&store).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if let (Some(position), Some(problem)) = (report.first_bad_position, &report.problem) {
        println!(
            "FAILED at position {position}: {problem} ({} events verified before it)",
            report.checked
        );
    } else {
        println!(
            "ok: {} events, hash chain intact up to position {}",
            report.checked, report.head
        );
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
