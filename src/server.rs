//! The running service, assembled once: the HTTP API over the event store, the query path's model, and
//! (unless it runs elsewhere) the projector beside it. `recall serve`, the benchmarks and the tests all
//! start it here, so that what they run is what users run.
//!
//! The listener is the caller's: it is serving before the model has loaded, so commands are taken at once
//! while searches and readiness wait for the model.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::{self, ApiConfig, AppState, ProjectorState};
use crate::embed::{ChunkOptions, EmbedError, Embedder};
use crate::postgres::Databases;
use crate::projector::{Foreground, Projector, ProjectorError, ProjectorOptions, Target};
use crate::runtime::{self, CpuPolicy, PoolError, Priority};
use crate::search::QueryEncoder;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot serve HTTP: {0}")]
    Io(#[from] std::io::Error),
    #[error("loading the embedding model: {0}")]
    Model(#[from] EmbedError),
    #[error("connecting the projector: {0}")]
    Postgres(#[from] crate::postgres::PostgresError),
    #[error("the projector stopped: {0}")]
    Projector(#[from] ProjectorError),
    #[error(transparent)]
    Threads(#[from] PoolError),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

/// Where the model comes from.
pub enum Model {
    /// Loaded on a blocking thread after the listener is up.
    Load(Box<dyn FnOnce() -> Result<Embedder, EmbedError> + Send>),
    /// Already loaded (the benchmarks and tests share one).
    Loaded(Arc<Embedder>),
}

/// The projector inside the server.
#[derive(Debug, Clone)]
pub struct InProcessProjector {
    pub chunking: ChunkOptions,
    pub options: ProjectorOptions,
    /// Leave a core to arriving requests (see `projector::Foreground`); false keeps every core busy.
    pub yield_to_requests: bool,
}

impl Default for InProcessProjector {
    fn default() -> Self {
        InProcessProjector {
            // Clamped to the model's sequence length.
            chunking: ChunkOptions {
                max_tokens: usize::MAX,
                overlap: 32,
                title_prefix: true,
            },
            options: ProjectorOptions {
                batch_events: 64,
                ..ProjectorOptions::default()
            },
            yield_to_requests: true,
        }
    }
}

pub struct ServerConfig {
    pub api: ApiConfig,
    /// `None`: the projector runs elsewhere (`recall serve --no-projector`, `recall project`).
    pub projector: Option<InProcessProjector>,
    /// Where the query path's model threads and the projector's run.
    pub cpu: CpuPolicy,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api: ApiConfig::default(),
            projector: Some(InProcessProjector::default()),
            cpu: CpuPolicy::beside_api(runtime::available_threads(), Priority::Realtime),
        }
    }
}

/// A started server: its address and state, until it is shut down.
pub struct RunningServer {
    /// `None` without a listener (`recall mcp` serves stdio only).
    address: Option<SocketAddr>,
    state: AppState,
    stop: watch::Sender<bool>,
    ready: watch::Receiver<bool>,
    failed: oneshot::Receiver<ServerError>,
    http: JoinHandle<std::io::Result<()>>,
    background: JoinHandle<()>,
}

/// Starts serving on `listener` over `databases`, then loads the model and starts the projector.
pub async fn start(
    config: ServerConfig,
    databases: Databases,
    listener: Option<TcpListener>,
    model: Model,
) -> Result<RunningServer, ServerError> {
    let address = listener.as_ref().map(TcpListener::local_addr).transpose()?;
    let state = AppState::new(&databases, config.api.clone());
    let (stop, stopped) = watch::channel(false);
    let (ready_tx, ready) = watch::channel(false);
    let (fail, failed) = oneshot::channel();
    let mut http_stop = stopped.clone();
    let mcp = axum::Router::new().nest_service("/mcp", crate::mcp::http_service(state.clone()));
    let router = api::router_with(state.clone(), mcp);
    let http = tokio::spawn(async move {
        let Some(listener) = listener else {
            return Ok(());
        };
        // Responses written in pieces (an MCP answer is a stream of server-sent events) must not wait
        // for the client's delayed ACK: `recall-bench agents` measured +20 ms at p50 for an MCP search
        // over a kept-alive connection without it, and +0.3 ms on a fresh one.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let background = tokio::spawn(model_and_projector(
        state.clone(),
        databases,
        config,
        model,
        stopped,
        ready_tx,
        fail,
    ));
    Ok(RunningServer {
        address,
        state,
        stop,
        ready,
        failed,
        http,
        background,
    })
}

impl RunningServer {
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Waits until the model is loaded (searches are open) and the projector, if any, has started.
    pub async fn ready(&mut self) -> Result<(), ServerError> {
        tokio::select! {
            r = self.ready.wait_for(|r| *r) => { r.map_err(|_| ServerError::Panicked("the model loader"))?; Ok(()) }
            Ok(error) = &mut self.failed => Err(error),
        }
    }

    /// Serves until `signal` resolves or the server fails (the model cannot load, the projector stops
    /// for good), then stops gracefully: in-flight requests finish, the projector ends its batch.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        let failure = tokio::select! {
            _ = signal => None,
            Ok(error) = &mut self.failed => Some(error),
        };
        let _ = self.stop.send(true);
        // Long-lived streams (MCP sessions) end here, so that the graceful shutdown can finish.
        self.state.shutdown().cancel();
        let served = self.http.await.map_err(|_| ServerError::Panicked("the HTTP server"))?;
        self.background
            .await
            .map_err(|_| ServerError::Panicked("the projector task"))?;
        served?;
        failure.map_or(Ok(()), Err)
    }

    /// Stops now, gracefully.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.run_until(std::future::ready(())).await
    }
}

async fn model_and_projector(
    state: AppState,
    databases: Databases,
    config: ServerConfig,
    model: Model,
    mut stop: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    fail: oneshot::Sender<ServerError>,
) {
    if config.projector.is_some() {
        state.set_projector(ProjectorState::Starting);
    }
    let cpu = config.cpu.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let embedder = match model {
            Model::Load(load) => Arc::new(load()?),
            Model::Loaded(embedder) => embedder,
        };
        let queries = QueryEncoder::new(embedder.clone(), cpu.query_pool()?);
        Ok((embedder, queries))
    })
    .await;
    let (embedder, queries) = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(error)) => return drop(fail.send(error)),
        Err(_) => return drop(fail.send(ServerError::Panicked("loading the model"))),
    };
    state.set_query_encoder(Arc::new(queries));
    tracing::info!("model loaded; searches are open");
    let Some(settings) = config.projector else {
        let _ = ready.send(true);
        return;
    };
    let projector = match projector(&state, &databases, embedder, &config.cpu, &settings).await {
        Ok(projector) => projector,
        Err(error) => return drop(fail.send(error)),
    };
    state.set_projector(ProjectorState::Running(projector.stats()));
    let _ = ready.send(true);
    let result = projector
        .run(Target::Active, async move {
            let _ = stop.wait_for(|stopped| *stopped).await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "the projector stopped; commands are still taken, but the read model is not updated");
        state.set_projector(ProjectorState::Failed(error.to_string()));
    }
}

/// The projector on connections of its own, its model threads and database processes yielding to the
/// API's (see `crate::runtime`).
async fn projector(
    state: &AppState,
    databases: &Databases,
    embedder: Arc<Embedder>,
    cpu: &CpuPolicy,
    settings: &InProcessProjector,
) -> Result<Projector, ServerError> {
    let background = databases
        .background_beside(cpu.projector_database_niceness, cpu.background_cpus.clone())
        .await?;
    let foreground = match settings.yield_to_requests {
        true => state.foreground().clone(),
        false => Foreground::never(),
    };
    Ok(Projector::beside_api(
        &background,
        (embedder.clone(), embedder.chunker_with(settings.chunking)),
        cpu,
        foreground,
        settings.options,
    )?)
}
