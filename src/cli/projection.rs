//! `recall project|rebuild|wait|status|failures`: the read side's worker and its instruments.

use recall::event_store::EventStore;
use recall::read_model;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};

use recall::projector::{ModelBackend, Projector, ProjectorOptions, Target};

use super::values::OnErrorArg;

use super::embed::ModelArgs;
use super::{open_databases, open_projector_databases, open_store};

#[derive(Args)]
pub struct ProjectArgs {
    /// Exit once the log head (as of the last read) is projected.
    #[arg(long)]
    until_caught_up: bool,
    /// What to do with an event that cannot be applied.
    #[arg(long, value_enum, default_value = "park")]
    on_error: OnErrorArg,
    /// Events per batch.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Word pieces shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    overlap: usize,
    /// Shards of a generation this creates (the first one, or a rebuild's); fixed for its life
    /// [env: RECALL_SHARDS, default 16].
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1024))]
    shards: Option<i32>,
    /// Seconds a shard stays this worker's without a heartbeat; others take a crashed worker's shards
    /// over after it [env: RECALL_LEASE_SECONDS, default 10].
    #[arg(long)]
    lease_seconds: Option<f64>,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Subcommand)]
pub enum FailuresAction {
    /// Replay the parked events; those that now apply are resolved.
    Retry {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        model: ModelArgs,
    },
}

#[derive(Args)]
pub struct FailuresArgs {
    #[command(subcommand)]
    action: Option<FailuresAction>,
    /// Include resolved failures.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

async fn projector(model: &ModelArgs, overlap: usize, options: ProjectorOptions) -> anyhow::Result<Projector> {
    let databases = open_projector_databases().await?;
    let model = model.clone();
    let embedder = tokio::task::spawn_blocking(move || model.load()).await??;
    Ok(Projector::new(
        &databases,
        Arc::new(ModelBackend::new(embedder, overlap)),
        options,
    ))
}

/// A progress line on a terminal: documents/s, tokens/s and the ETA to the head.
fn spawn_progress(projector: &Projector, head: i64, start: i64) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() || head <= start {
        return None;
    }
    let stats = projector.stats();
    let bar = indicatif::ProgressBar::new((head - start) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} projecting [{elapsed_precise}] {wide_bar} {pos}/{len} events {msg}",
        )
        .expect("template"),
    );
    let started = Instant::now();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let events = stats.events.load(Ordering::Relaxed);
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            let rate = events as f64 / secs;
            let left = (head - start) as f64 - events as f64;
            bar.set_position(events);
            bar.set_message(format!(
                "{:.1} docs/s, {:.0} tokens/s, eta {:.0}s",
                rate,
                stats.tokens.load(Ordering::Relaxed) as f64 / secs,
                if rate > 0.0 { left.max(0.0) / rate } else { f64::NAN }
            ));
        }
    }))
}

impl ProjectArgs {
    async fn projector(&self) -> anyhow::Result<Projector> {
        let defaults = ProjectorOptions::from_env();
        let lease = match self.lease_seconds {
            Some(s) if s.is_finite() && s >= 0.5 => Duration::from_secs_f64(s),
            Some(s) => anyhow::bail!("--lease-seconds must be 0.5 or more, not {s}"),
            None => defaults.lease,
        };
        let options = ProjectorOptions {
            batch_events: self.batch.max(1),
            on_error: self.on_error.into(),
            shards: self.shards.unwrap_or(defaults.shards),
            lease,
            ..defaults
        };
        projector(&self.model, self.overlap, options).await
    }
}

/// Runs `work` with a progress line from `start` to `head`, removing the line afterwards.
async fn with_progress<T>(
    projector: &Projector,
    head: i64,
    start: i64,
    work: impl std::future::Future<Output = T>,
) -> T {
    let progress = spawn_progress(projector, head, start);
    let result = work.await;
    if let Some(p) = progress {
        p.abort();
    }
    result
}

pub async fn project(args: ProjectArgs) -> anyhow::Result<ExitCode> {
    let projector = args.projector().await?;
    let databases = open_databases().await?;
    let head = EventStore::new(databases.log().clone()).head().await?;
    let start = read_model::active(databases.read_model())
        .await?
        .map(|g| g.checkpoint)
        .unwrap_or(0);
    let work = async {
        if args.until_caught_up {
            projector.run_until_caught_up(Target::Active).await.map(|g| {
                eprintln!("caught up: generation {} at position {}", g.generation, g.checkpoint);
            })
        } else {
            projector.run(Target::Active, shutdown_signal()).await
        }
    };
    with_progress(&projector, head, start, work)
        .await
        .context("projecting")?;
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(args: ProjectArgs) -> anyhow::Result<ExitCode> {
    let projector = args.projector().await?;
    let head = open_store().await?.head().await?;
    let generation = with_progress(&projector, head, 0, projector.rebuild())
        .await
        .context("rebuilding")?;
    eprintln!(
        "generation {} is active, built with {} at {} up to position {}",
        generation.generation,
        generation.model(),
        generation.precision,
        generation.checkpoint
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn wait(position: Option<i64>, timeout_secs: f64) -> anyhow::Result<ExitCode> {
    let databases = open_databases().await?;
    let position = match position {
        Some(p) => p,
        None => EventStore::new(databases.log().clone()).head().await?,
    };
    let checkpoint = read_model::wait_for(
        databases.read_model(),
        position,
        Duration::from_secs_f64(timeout_secs.max(0.0)),
    )
    .await?;
    println!("projected through position {checkpoint}");
    Ok(ExitCode::SUCCESS)
}

pub async fn status(json: bool, prometheus: bool) -> anyhow::Result<ExitCode> {
    let databases = open_databases().await?;
    let report = read_model::status(&databases).await?;
    if prometheus {
        print!("{}", report.to_prometheus());
    } else if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("log head: position {}", report.head);
        if report.projections.is_empty() {
            println!("no read model yet: run `recall project`");
        }
        for p in &report.projections {
            println!(
                "generation {} ({}): {} at {} | watermark {} ({} shards, furthest at {}) | lag {} events, {:.1}s | {} documents, {} chunks | {} parked failures",
                p.generation, p.status, p.model, p.precision, p.checkpoint, p.shards, p.furthest_shard, p.lag_events, p.lag_seconds, p.documents, p.current_chunks, p.parked_failures
            );
            if let (Some(since), Some(error)) = (p.retrying_since, &p.last_error) {
                println!(
                    "  retrying at position {} since {since} ({} failed attempts): {error}",
                    p.checkpoint, p.retry_attempts
                );
            }
        }
        for w in &report.workers {
            println!(
                "worker {} ({}): {} shards of generation {}, heard from {:.1}s ago",
                w.name,
                w.device,
                w.shards,
                w.generation.map_or("-".to_owned(), |g| g.to_string()),
                w.heartbeat_age_seconds
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn failures(args: FailuresArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Some(FailuresAction::Retry { json, model }) => {
            let projector = projector(&model, 32, ProjectorOptions::default()).await?;
            let report = projector.retry_failures(Target::Active).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "resolved {:?}; still failing {:?}",
                    report.resolved, report.still_failing
                );
            }
            Ok(if report.still_failing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        None => {
            let list = read_model::failures(open_databases().await?.read_model(), args.all).await?;
            for f in &list {
                if args.json {
                    println!("{}", serde_json::to_string(f)?);
                } else {
                    println!(
                        "generation {} position {} {} {} attempts {} {}: {}",
                        f.generation,
                        f.position,
                        f.event_type,
                        f.stream_id,
                        f.attempts,
                        if f.resolved_at.is_some() { "resolved" } else { "parked" },
                        f.error
                    );
                }
            }
            if list.is_empty() && !args.json {
                println!("no parked failures");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
