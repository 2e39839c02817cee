//! `recall serve`: the HTTP API and, by default, the projector in one process. The listener is up at
//! once, so commands are taken while the model loads; searches and readiness wait for the model.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use recall::api::{self, ApiConfig};
use recall::embed::ChunkOptions;
use recall::postgres::{DatabaseTargets, Databases};
use recall::projector::ProjectorOptions;
use recall::server::{self, InProcessProjector, Model, ServerConfig};

use super::embed::ModelArgs;
use super::{QueryPriority, WriteSettings};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address requires RECALL_API_TOKEN.
    #[arg(long, env = "RECALL_LISTEN", default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Largest request body in bytes (default: twice the text limit plus 1 MiB).
    #[arg(long, env = "RECALL_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    #[command(flatten)]
    service: ServiceArgs,
}

/// What `recall serve` and `recall mcp` share: the service behind either front end.
#[derive(Args)]
pub struct ServiceArgs {
    /// Serve without the in-process projector (run `recall project` elsewhere).
    #[arg(long)]
    no_projector: bool,
    /// Longest a `wait_for` holds a request, in seconds, before it answers 504.
    #[arg(long, env = "RECALL_WAIT_TIMEOUT", default_value_t = 30.0)]
    wait_timeout: f64,
    /// Seconds within which every request answers (503 with Retry-After past it); a search's
    /// `wait_for` may add --wait-timeout.
    #[arg(long, env = "RECALL_REQUEST_DEADLINE", default_value_t = 5.0)]
    request_deadline: f64,
    /// Searches that may wait for a position (`wait_for`) at once; more get 429.
    #[arg(long, env = "RECALL_MAX_WAITERS", default_value_t = 1000)]
    max_waiters: usize,
    /// Seconds after an API request during which the in-process projector leaves a core to requests
    /// (embedding on one thread fewer, writing and embedding in turn); 0 never yields.
    #[arg(long, env = "RECALL_FOREGROUND_WINDOW", default_value_t = 2.0)]
    foreground_window: f64,
    /// Events per projector batch.
    #[arg(long, default_value_t = 64)]
    batch: i64,
    /// Word pieces shared by consecutive chunks.
    #[arg(long, default_value_t = 32)]
    overlap: usize,
    #[command(flatten)]
    settings: WriteSettings,
    /// Scheduling of the threads that embed questions: `realtime` (where permitted) keeps a search from
    /// waiting behind the projector's threads; `normal` leaves them to the usual scheduler.
    #[arg(long, env = "RECALL_QUERY_PRIORITY", value_enum, default_value = "realtime")]
    query_priority: QueryPriority,
    #[command(flatten)]
    model: ModelArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let tokens = api::parse_tokens(&std::env::var("RECALL_API_TOKEN").unwrap_or_default());
    if !args.listen.ip().is_loopback() && tokens.is_empty() {
        anyhow::bail!(
            "refusing to listen on {} without authentication: set RECALL_API_TOKEN (one or more tokens, comma-separated) \
             or listen on a loopback address such as 127.0.0.1:7878",
            args.listen
        );
    }
    let mut config = args.service.config(tokens)?;
    if let Some(max) = args.max_body_bytes {
        config.api.max_body_bytes = max;
    }
    let databases = open_with_deadline(config.api.request_deadline).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; is another recall serving there?", args.listen))?;
    eprintln!(
        "recall: serving http://{} (API under /v1, spec at /openapi.json, MCP at /mcp)",
        listener.local_addr()?
    );
    let model = args.service.model.clone();
    let server = server::start(
        config,
        databases,
        Some(listener),
        Model::Load(Box::new(move || model.embedder())),
    )
    .await?;
    server
        .run_until(async {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing in-flight requests");
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct McpArgs {
    #[command(flatten)]
    service: ServiceArgs,
}

/// `recall mcp`: the MCP server over stdin and stdout (what an agent host spawns), on the same service
/// as `recall serve` without its HTTP listener. Ends when the host closes stdin.
pub async fn mcp(args: McpArgs) -> anyhow::Result<ExitCode> {
    use rmcp::ServiceExt;
    let config = args.service.config(Vec::new())?;
    let databases = open_with_deadline(config.api.request_deadline).await?;
    let model = args.service.model.clone();
    let server = server::start(config, databases, None, Model::Load(Box::new(move || model.embedder()))).await?;
    let session = recall::mcp::RecallMcp::new(server.state().clone())
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    // Until the host closes stdin or signals; a model that cannot load ends it too, as it ends `serve`.
    server
        .run_until(async {
            tokio::select! {
                _ = session.waiting() => {}
                _ = shutdown_signal() => {}
            }
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

impl ServiceArgs {
    fn config(&self, tokens: Vec<String>) -> anyhow::Result<ServerConfig> {
        let limits = self.settings.limits();
        let api = ApiConfig {
            tokens,
            max_body_bytes: api::default_max_body_bytes(&limits),
            wait_timeout: seconds("--wait-timeout", self.wait_timeout)?,
            limits,
            actor: self.settings.actor.clone(),
            foreground_window: seconds("--foreground-window", self.foreground_window)?,
            request_deadline: seconds("--request-deadline", self.request_deadline)?,
            max_waiters: self.max_waiters,
            extractor: recall::extract::Extractor::from_env(limits).map_err(anyhow::Error::msg)?,
        };
        Ok(ServerConfig {
            api,
            projector: (!self.no_projector).then(|| InProcessProjector {
                chunking: ChunkOptions {
                    max_tokens: usize::MAX,
                    overlap: self.overlap,
                    title_prefix: true,
                },
                options: ProjectorOptions {
                    batch_events: self.batch.max(1),
                    ..ProjectorOptions::from_env()
                },
                yield_to_requests: true,
            }),
            cpu: recall::runtime::CpuPolicy::beside_api(self.model.threads(), self.query_priority.priority()),
        })
    }
}

/// The API's pools: a statement or lock wait longer than a request's deadline is cancelled by the server
/// itself, so that no connection stays busy for an answer nobody waits for any more.
async fn open_with_deadline(deadline: Duration) -> anyhow::Result<Databases> {
    // Migrations first, without the deadline: building an index on a large read model takes longer.
    super::open_databases().await?.close().await;
    let millis = |d: Duration| format!("{}", d.as_millis().max(1));
    Databases::open_with(&DatabaseTargets::from_env(), 16, |options| {
        options.options([
            ("statement_timeout", millis(deadline)),
            ("lock_timeout", millis(deadline)),
            ("idle_in_transaction_session_timeout", millis(deadline * 2)),
        ])
    })
    .await
    .context("opening the databases")
}

fn seconds(flag: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} takes a number of seconds, 0 or more (got {value})"))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
