//! Command-line glue: argument types and the handlers that wire them to the library. `anyhow` lives
//! here and in main.rs only.

mod documents;
mod embed;
mod eval;
mod extract;
mod projection;
mod search;
mod serve;
mod values;

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use recall::commands::CommandHandler;
use recall::domain::Limits;
use recall::event_store::EventStore;
use recall::postgres::{self, DatabaseTarget, DatabaseTargets, Databases};

#[derive(Parser)]
#[command(name = "recall", version, about = "A searchable, auditable memory for AI agents", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add files (PDF, HTML, Markdown, text; directories recursively) or JSONL documents to the log.
    Ingest(documents::IngestArgs),
    /// Replace a document's text (and optionally title and metadata).
    Update(documents::UpdateArgs),
    /// Remove a document.
    Remove(documents::RemoveArgs),
    /// Show a document's events.
    History(documents::HistoryArgs),
    /// Show the global event log.
    Log(documents::LogArgs),
    /// Project the event log into the pgvector read model (a long-running worker; run one per machine
    /// or GPU, with the same DATABASE_URL, and they share the generation's shards).
    #[command(visible_alias = "worker")]
    Project(projection::ProjectArgs),
    /// Re-embed the whole log into a new read-model generation, then switch to it.
    Rebuild(projection::ProjectArgs),
    /// Wait until the projector has passed a log position (default: the log's current head).
    Wait {
        position: Option<i64>,
        /// Seconds to wait before giving up.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
    /// The log head, each read-model generation's checkpoint and lag, counts and parked failures.
    Status {
        #[arg(long)]
        json: bool,
        /// Print Prometheus text-format gauges instead.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
    },
    /// List the events the projector parked, or retry them.
    Failures(projection::FailuresArgs),
    /// Serve the HTTP API (and MCP at /mcp), with the projector in the same process unless --no-projector.
    Serve(serve::ServeArgs),
    /// Serve MCP over stdin/stdout for an agent host, with the projector in-process unless --no-projector.
    Mcp(serve::McpArgs),
    /// Search the read model for the chunks nearest a question (or each query of a JSONL file).
    Search(search::SearchArgs),
    /// Retrieval quality on a BEIR dataset (corpus, queries, qrels): nDCG@10, Recall@100, MRR@10.
    Eval(eval::EvalArgs),
    /// Show what ingest would store for a file: its text, PDF pages and heading sections.
    Extract(extract::ExtractArgs),
    /// Embed JSONL or plain lines with the model; one JSON object a line out.
    Embed(embed::EmbedArgs),
    /// Recompute the hash chain and name the first position that does not match.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Manage the embedded PostgreSQL server.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
}

#[derive(Subcommand)]
enum DbAction {
    /// Say whether the embedded server is initialised and running.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Initialise (on first use) and start the embedded server.
    Start,
    /// Stop the embedded server.
    Stop,
    /// Print a connection string for psql: the log's database (where commands append).
    Url {
        /// The read model's database instead (the same one when the home has a single cluster).
        #[arg(long)]
        read_model: bool,
    },
    /// Make HOME a streaming replica (hot standby) of the read model's cluster and start it; give the
    /// URL it prints to searching processes as RECALL_READ_DATABASE_URL.
    Replica { home: std::path::PathBuf },
}

/// Settings shared by the commands that write documents.
#[derive(Args, Clone)]
struct WriteSettings {
    /// Largest accepted document text, in bytes.
    #[arg(long, env = "RECALL_MAX_TEXT_BYTES", default_value_t = Limits::DEFAULT_MAX_TEXT_BYTES)]
    max_text_bytes: usize,
    /// Who is acting; stored with each event.
    #[arg(long, env = "RECALL_ACTOR")]
    actor: Option<String>,
}

impl WriteSettings {
    fn limits(&self) -> Limits {
        Limits {
            max_text_bytes: self.max_text_bytes,
        }
    }
}

/// The event log alone, for commands.
async fn open_store() -> anyhow::Result<EventStore> {
    let target = DatabaseTarget::from_env();
    let pool = postgres::open(&target, 16).await.context("opening the event store")?;
    Ok(EventStore::new(pool))
}

/// The log and the read model, where `DATABASE_URL` and `RECALL_READ_MODEL_URL` say.
async fn open_databases() -> anyhow::Result<Databases> {
    Databases::open(&DatabaseTargets::from_env(), 16)
        .await
        .context("opening the databases")
}

/// Both on the projector's own kind of connections (see `postgres::open_background`).
async fn open_projector_databases() -> anyhow::Result<Databases> {
    Databases::open_background(&DatabaseTargets::from_env(), 16)
        .await
        .context("opening the databases")
}

async fn open_handler() -> anyhow::Result<CommandHandler> {
    Ok(CommandHandler::new(open_store().await?))
}

fn embedded_server() -> anyhow::Result<postgres::EmbeddedServer> {
    if std::env::var("DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        anyhow::bail!("DATABASE_URL is set, so recall uses that server and not its embedded one; unset it to manage the embedded server");
    }
    Ok(postgres::EmbeddedServer::locate(postgres::default_home())?)
}

/// Scheduling of the threads that embed questions (see `recall::runtime::Priority::Realtime`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum QueryPriority {
    Realtime,
    Normal,
}

impl QueryPriority {
    fn priority(self) -> recall::runtime::Priority {
        match self {
            QueryPriority::Realtime => recall::runtime::Priority::Realtime,
            QueryPriority::Normal => recall::runtime::Priority::Normal,
        }
    }
}

/// What runs before the async runtime starts: the extraction worker, bounded on its own.
pub fn run_without_runtime(cli: &Cli) -> Option<ExitCode> {
    match &cli.command {
        Command::Extract(args) => extract::worker(args),
        _ => None,
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingest(args) => documents::ingest(args).await,
        Command::Update(args) => documents::update(args).await,
        Command::Remove(args) => documents::remove(args).await,
        Command::History(args) => documents::history(args).await,
        Command::Log(args) => documents::log(args).await,
        Command::Project(args) => projection::project(args).await,
        Command::Rebuild(args) => projection::rebuild(args).await,
        Command::Wait { position, timeout } => projection::wait(position, timeout).await,
        Command::Status { json, prometheus } => projection::status(json, prometheus).await,
        Command::Failures(args) => projection::failures(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Mcp(args) => serve::mcp(args).await,
        Command::Search(args) => search::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::Extract(args) => extract::run(args).await,
        Command::Embed(args) => tokio::task::spawn_blocking(move || embed::run(args)).await?,
        Command::Verify { json } => documents::verify(json).await,
        Command::Db { action } => db(action).await,
    }
}

async fn db(action: DbAction) -> anyhow::Result<ExitCode> {
    let server = embedded_server()?;
    // The home's second cluster, for its read model, where it has one.
    let read_model = match postgres::EmbeddedServer::read_model_apart(server.home()) {
        Some(home) => Some(postgres::EmbeddedServer::locate(home)?),
        None => None,
    };
    let clusters = std::iter::once(("log", &server)).chain(read_model.as_ref().map(|r| ("read model", r)));
    match action {
        DbAction::Status { json } => {
            let statuses: Vec<_> = clusters.map(|(role, s)| (role, s.status())).collect();
            if json {
                // The log's cluster as before, and the read model's beside it.
                let mut value = serde_json::to_value(&statuses[0].1)?;
                value["read_model"] = serde_json::to_value(statuses.get(1).map(|s| &s.1))?;
                println!("{value}");
            } else {
                for (role, status) in &statuses {
                    println!("{role}:");
                    println!("  home:        {}", status.home.display());
                    println!("  binaries:    {}", status.bin_dir.display());
                    println!("  initialised: {}", status.initialised);
                    println!(
                        "  running:     {}{}",
                        status.running,
                        status.pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                    );
                }
            }
        }
        DbAction::Start => {
            Databases::open(&DatabaseTargets::from_env(), 1)
                .await
                .context("starting the embedded server")?;
            for (role, s) in clusters {
                println!("running ({role}): {}", s.url("recall"));
            }
        }
        DbAction::Stop => {
            for (role, s) in clusters {
                let s = s.clone();
                let stopped = tokio::task::spawn_blocking(move || s.stop()).await??;
                println!("{role}: {}", if stopped { "stopped" } else { "not running" });
            }
        }
        DbAction::Url { read_model: false } => println!("{}", server.url("recall")),
        DbAction::Url { read_model: true } => match &read_model {
            Some(s) => println!("{}", s.url("recall")),
            None => println!("{}", server.url("recall")),
        },
        DbAction::Replica { home } => {
            // The primary must be up, with the schema, before it is copied.
            Databases::open(&DatabaseTargets::from_env(), 1)
                .await
                .context("starting the embedded server")?;
            let primary = read_model.unwrap_or(server);
            let replica = postgres::EmbeddedServer::locate(home)?;
            let started = replica.clone();
            tokio::task::spawn_blocking(move || {
                started.make_standby_of(&primary)?;
                started.ensure_running()
            })
            .await?
            .context("making the replica")?;
            println!("{}", replica.url("recall"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads a path argument, or stdin for `-`.
fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("reading stdin")?;
        Ok(buf)
    } else {
        let mut buf = Vec::new();
        recall::ingest::open_regular_file(path)
            .and_then(|mut file| file.read_to_end(&mut buf))
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(buf)
    }
}

/// A BEIR-style corpus as documents of one scope; the lines recall refuses are reported and skipped.
fn read_corpus(
    corpus: &std::path::Path,
    scope: &str,
) -> anyhow::Result<Vec<(recall::domain::DocumentKey, recall::domain::DocumentContent)>> {
    let read = recall::eval::read_corpus(corpus, &recall::domain::Scope::parse(scope)?)?;
    for error in &read.skipped {
        eprintln!("skipped {error}");
    }
    Ok(read.documents)
}
