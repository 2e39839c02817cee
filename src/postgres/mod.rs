//! Where the data lives: a private, embedded PostgreSQL cluster under `RECALL_HOME` by default, or any
//! PostgreSQL 14+ with pgvector 0.8+ named by `DATABASE_URL`. Either way the pool comes back migrated.
//!
//! The event log and the read model may share that database or not ([`Databases`]): with
//! `RECALL_READ_MODEL_URL` the read model (what the projector writes and searches read) lives in a database
//! of its own, so that the projector's writes, WAL, vacuum and the searches' SQL share no commit flush,
//! buffer pool, lock or connection pool with the commands.

mod embedded;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::runtime::{self, CpuSet};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use thiserror::Error;

pub use embedded::{EmbeddedError, EmbeddedServer, ServerStatus};

/// The migrations under `migrations/`, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Error)]
pub enum PostgresError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("invalid DATABASE_URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    #[error("cannot connect to PostgreSQL at {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot create database {name:?}: {source}")]
    CreateDatabase {
        name: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("applying migrations failed: {0}; the server needs PostgreSQL 14+ with the pgvector extension (0.8 or later) available")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Which PostgreSQL to use.
#[derive(Debug, Clone)]
pub enum DatabaseTarget {
    /// A server someone else runs.
    Url(String),
    /// recall's own cluster under this home, and the database name inside it.
    Embedded { home: PathBuf, database: String },
}

impl DatabaseTarget {
    /// `DATABASE_URL` if set, else the embedded cluster under `RECALL_HOME` (or its default).
    pub fn from_env() -> Self {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => DatabaseTarget::Url(url),
            _ => DatabaseTarget::Embedded {
                home: default_home(),
                database: "recall".into(),
            },
        }
    }
}

/// Where the log and the read model live.
#[derive(Debug, Clone)]
pub struct DatabaseTargets {
    pub log: DatabaseTarget,
    /// `None`: in the log's database.
    pub read_model: Option<DatabaseTarget>,
    /// Streaming replicas of the read model's server that searches and document reads may use
    /// (`RECALL_READ_DATABASE_URL`, comma-separated).
    pub replicas: Vec<String>,
}

impl DatabaseTargets {
    /// The log where [`DatabaseTarget::from_env`] says; the read model in `RECALL_READ_MODEL_URL` if set,
    /// else, for the embedded server, in the home's second cluster when the home has one (see
    /// [`EmbeddedServer::read_model_apart`]), else beside the log.
    pub fn from_env() -> Self {
        let log = DatabaseTarget::from_env();
        let read_model = match std::env::var("RECALL_READ_MODEL_URL") {
            Ok(url) if !url.is_empty() => Some(DatabaseTarget::Url(url)),
            _ => match &log {
                DatabaseTarget::Embedded { home, database } => {
                    EmbeddedServer::read_model_apart(home).map(|home| DatabaseTarget::Embedded {
                        home,
                        database: database.clone(),
                    })
                }
                DatabaseTarget::Url(_) => None,
            },
        };
        let replicas = std::env::var("RECALL_READ_DATABASE_URL")
            .map(|urls| {
                urls.split([',', ' ', '\n'])
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        DatabaseTargets {
            log,
            read_model,
            replicas,
        }
    }
}

/// `RECALL_HOME`, else `/var/lib/recall` for root (a place the unprivileged server user can reach), else
/// `$XDG_DATA_HOME/recall`, else `~/.local/share/recall`.
pub fn default_home() -> PathBuf {
    if let Some(home) = std::env::var_os("RECALL_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/recall");
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(xdg).join("recall");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/recall")
}

/// Whether an error means the server cannot be reached or cannot take writes right now (as opposed to
/// a problem with the statement), so that the caller may answer "retry later".
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        // 08: connection exceptions, 57P: admin shutdown, 53: insufficient resources (disk full, memory).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")),
        _ => false,
    }
}

/// Whether the server gave a statement up for a reason of the moment rather than of the statement: its own
/// timeouts (`statement_timeout`, `lock_timeout`: too slow for the caller's deadline, or another transaction
/// held what it needed) or a conflict with a concurrent transaction (serialization failure, deadlock).
/// Nothing the statement's transaction did is kept, and a retry may well succeed. (The projector, which runs
/// without these timeouts, treats a cancelled statement as caused by its events instead.)
pub fn is_transient(error: &sqlx::Error) -> bool {
    // 57014: query_canceled, 55P03: lock_not_available, 40: transaction rollback.
    matches!(error, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c == "57014" || c == "55P03" || c.starts_with("40")))
}

/// Connection options for a target, starting the embedded server (and creating its database) if needed.
pub async fn connect_options(target: &DatabaseTarget) -> Result<PgConnectOptions, PostgresError> {
    match target {
        DatabaseTarget::Url(url) => PgConnectOptions::from_str(url).map_err(PostgresError::InvalidUrl),
        DatabaseTarget::Embedded { home, database } => {
            let server = EmbeddedServer::locate(home.clone())?;
            let started = server.clone();
            tokio::task::spawn_blocking(move || started.ensure_running())
                .await
                .expect("the embedded server start does not panic")?;
            create_database_if_missing(&server.connect_options("postgres"), database).await?;
            Ok(server.connect_options(database))
        }
    }
}

/// Creates `name` on the server unless it exists; concurrent callers are fine.
pub async fn create_database_if_missing(admin: &PgConnectOptions, name: &str) -> Result<(), PostgresError> {
    use sqlx::Connection;
    let fail = |source| PostgresError::CreateDatabase {
        name: name.to_owned(),
        source,
    };
    let mut conn = sqlx::PgConnection::connect_with(admin)
        .await
        .map_err(|source| PostgresError::Connect {
            target: "the embedded server".into(),
            source,
        })?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .map_err(fail)?;
    if !exists {
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => {}
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

/// The event log's pool and the read model's: one pool when they share a database, two otherwise. Each
/// database carries the whole schema (so that either layout migrates alike and one database can be split
/// later by pointing the read model elsewhere, after which `recall project` fills it from the log); in two
/// databases, the log's read-model tables and the read model's log tables stay empty.
#[derive(Debug, Clone)]
pub struct Databases {
    log: PgPool,
    read_model: PgPool,
    split: bool,
    /// Read-only replicas of the read model (hot standbys): never migrated, connected on first use.
    replicas: Vec<PgPool>,
}

impl Databases {
    /// Log and read model in one database.
    pub fn one(pool: PgPool) -> Self {
        Databases {
            read_model: pool.clone(),
            log: pool,
            split: false,
            replicas: Vec::new(),
        }
    }

    /// The read model in a database of its own.
    pub fn split(log: PgPool, read_model: PgPool) -> Self {
        Databases {
            log,
            read_model,
            split: true,
            replicas: Vec::new(),
        }
    }

    /// Reads (searches, documents) may go to these replicas of the read model.
    pub fn with_replicas(mut self, replicas: Vec<PgPool>) -> Self {
        self.replicas = replicas;
        self
    }

    /// The read model's replicas, if any.
    pub fn replicas(&self) -> &[PgPool] {
        &self.replicas
    }

    /// Opens (and migrates) both targets with up to `max_connections` each.
    pub async fn open(targets: &DatabaseTargets, max_connections: u32) -> Result<Self, PostgresError> {
        Self::open_with(targets, max_connections, |options| options).await
    }

    /// As [`Databases::open`], with `adjust` applied to each database's connection options.
    pub async fn open_with(
        targets: &DatabaseTargets,
        max_connections: u32,
        adjust: impl Fn(PgConnectOptions) -> PgConnectOptions,
    ) -> Result<Self, PostgresError> {
        let log = open_with(adjust(connect_options(&targets.log).await?), max_connections).await?;
        let databases = match &targets.read_model {
            None => Databases::one(log),
            Some(target) => {
                let read_model = open_with(adjust(connect_options(target).await?), max_connections).await?;
                Databases::split(log, read_model)
            }
        };
        let mut replicas = Vec::with_capacity(targets.replicas.len());
        for url in &targets.replicas {
            let options = PgConnectOptions::from_str(url).map_err(PostgresError::InvalidUrl)?;
            replicas.push(open_replica(adjust(options), max_connections));
        }
        Ok(databases.with_replicas(replicas))
    }

    /// The event log: commands append here and the projector reads it.
    pub fn log(&self) -> &PgPool {
        &self.log
    }

    /// The read model: generations, checkpoints, documents, chunks, lexical statistics, parked failures.
    pub fn read_model(&self) -> &PgPool {
        &self.read_model
    }

    /// Whether the read model has a database of its own.
    pub fn is_split(&self) -> bool {
        self.split
    }

    /// Background pools beside these (see [`open_background_beside`]), for a projector.
    pub async fn background_beside(&self, niceness: i32, cpus: Option<CpuSet>) -> Result<Self, PostgresError> {
        let log = open_background_beside(&self.log, niceness, cpus.clone()).await?;
        Ok(match self.split {
            false => Databases::one(log),
            true => Databases::split(log, open_background_beside(&self.read_model, niceness, cpus).await?),
        })
    }

    /// Pools for a projector of its own (`recall project`): see [`open_background`].
    pub async fn open_background(targets: &DatabaseTargets, max_connections: u32) -> Result<Self, PostgresError> {
        let log = open_background(connect_options(&targets.log).await?, max_connections, 0).await?;
        Ok(match &targets.read_model {
            None => Databases::one(log),
            Some(target) => Databases::split(
                log,
                open_background(connect_options(target).await?, max_connections, 0).await?,
            ),
        })
    }

    pub async fn close(&self) {
        self.log.close().await;
        self.read_model.close().await;
    }
}

/// A pool on a read-only replica: connected on first use (a replica that is down when recall starts is
/// tried again later, and reads go elsewhere meanwhile), never migrated (a standby replays the primary's
/// schema).
pub fn open_replica(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
        .after_release(outside_a_transaction)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options)
}

/// Whether a connection handed back to its pool is outside any transaction, and so may be handed out
/// again (else the pool closes it). sqlx queues a ROLLBACK for a transaction whose future is dropped, but
/// not for a BEGIN dropped while in flight (a request cut off by its deadline or its client): the server
/// then holds the transaction open, and the connection's next user ran inside it, a command inside a
/// search's read-only snapshot ("cannot execute SELECT FOR UPDATE in a read-only transaction"). Outside a
/// transaction block a simple-protocol query is a transaction of its own, stamped with the query's own
/// start time; inside one, the block started with an earlier statement. (Not the extended protocol, whose
/// Bind and Execute messages each restamp the statement.) The check costs a round trip after the
/// connection is released, not on any request's path.
fn outside_a_transaction(
    conn: &mut sqlx::PgConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures_util::future::BoxFuture<'_, Result<bool, sqlx::Error>> {
    use sqlx::{Executor, Row};
    Box::pin(async move {
        // A bare string has no arguments: sqlx sends it as a simple query.
        let row = conn
            .fetch_one("SELECT transaction_timestamp() = statement_timestamp()")
            .await?;
        row.try_get(0)
    })
}

/// A pool on the target with migrations applied.
pub async fn open(target: &DatabaseTarget, max_connections: u32) -> Result<PgPool, PostgresError> {
    let options = connect_options(target).await?;
    open_with(options, max_connections).await
}

pub async fn open_with(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, PostgresError> {
    open_pool(options, max_connections, 0, None).await
}

/// A pool for background work (the projector): when the server is on this machine (a Unix socket), each
/// connection's server process runs at `niceness` (0 leaves it), so that its index maintenance yields the
/// CPU to the processes serving commands and searches.
pub async fn open_background(
    options: PgConnectOptions,
    max_connections: u32,
    niceness: i32,
) -> Result<PgPool, PostgresError> {
    open_pool(long_statements(options), max_connections, niceness, None).await
}

fn long_statements(options: PgConnectOptions) -> PgConnectOptions {
    // The projector's batch writes take seconds by design (thousands of rows into an HNSW index); sqlx's
    // default warning after one second would log every batch, whole statement included, and bury real
    // problems.
    options
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(60))
        // Not the API's request deadlines, whose options a background pool may be copied from (the last
        // setting of a name wins).
        .options([
            ("statement_timeout", "0"),
            ("lock_timeout", "0"),
            ("idle_in_transaction_session_timeout", "0"),
        ])
}

/// A background pool on the same server and database as `pool`, with connections of its own: the
/// projector's beside the API's, so that its long batch writes never hold a connection a command waits for.
/// On a local server their processes run at `niceness` and, given `cpus` (`CpuSet::background()` beside a
/// serving API, as the projector's narrow model threads in `Projector::beside_api`), only on those CPUs.
pub async fn open_background_beside(
    pool: &PgPool,
    niceness: i32,
    cpus: Option<CpuSet>,
) -> Result<PgPool, PostgresError> {
    // The projector holds one for its whole run (its LISTEN), renews its leases on another, reads batch N on a
    // third while batch N-1 is written on a fourth.
    const CONNECTIONS: u32 = 4;
    let options = long_statements((*pool.connect_options()).clone());
    open_pool(options, CONNECTIONS, niceness, cpus).await
}

/// How long a caller waits for a connection before the database counts as unavailable.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

async fn open_pool(
    options: PgConnectOptions,
    max_connections: u32,
    niceness: i32,
    cpus: Option<CpuSet>,
) -> Result<PgPool, PostgresError> {
    let target = format!("{}/{}", options.get_host(), options.get_database().unwrap_or(""));
    // A TCP server's process ids mean nothing here, even on localhost behind a container boundary.
    let local = options.get_socket().is_some();
    let pool = PgPoolOptions::new()
        .after_connect(move |conn, _| {
            let cpus = cpus.clone();
            Box::pin(async move {
                if local && (niceness != 0 || cpus.is_some()) {
                    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut *conn)
                        .await?;
                    runtime::renice(pid, niceness);
                    if let Some(cpus) = &cpus {
                        runtime::pin(pid, cpus);
                    }
                }
                Ok(())
            })
        })
        .max_connections(max_connections)
        // A ping before every checkout costs a round trip per query; a dead connection shows up as an
        // error on first use instead, which callers already handle.
        .test_before_acquire(false)
        .after_release(outside_a_transaction)
        // Under an API request's deadline (5 s by default), so that a database that cannot be reached
        // is reported as such ("nothing was written") before the deadline has to say "outcome unknown".
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|source| PostgresError::Connect { target, source })?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
}
