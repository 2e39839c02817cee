//! Test support: every test gets a fresh, migrated database on a real PostgreSQL with pgvector.
//! By default that is an embedded server under the system temp dir, shared by all test processes;
//! `RECALL_TEST_DATABASE_URL` points the tests at another server instead.
#![allow(dead_code)]

use std::path::PathBuf;
use std::str::FromStr;

use recall::postgres::{self, Databases, EmbeddedServer};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

pub fn test_home() -> PathBuf {
    std::env::var_os("RECALL_TEST_HOME")
        .map(PathBuf::from)
        // SAFETY: geteuid has no preconditions.
        .unwrap_or_else(|| std::env::temp_dir().join(format!("recall-test-{}", unsafe { libc::geteuid() })))
}

/// Options for the test server's maintenance database.
pub async fn admin_options() -> PgConnectOptions {
    if let Ok(url) = std::env::var("RECALL_TEST_DATABASE_URL") {
        return PgConnectOptions::from_str(&url).expect("a valid RECALL_TEST_DATABASE_URL");
    }
    let server = EmbeddedServer::locate(test_home()).expect("PostgreSQL binaries (run scripts/setup)");
    let starting = server.clone();
    tokio::task::spawn_blocking(move || starting.ensure_running())
        .await
        .unwrap()
        .expect("the test server starts");
    let admin = server.connect_options("postgres");
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        sweep_dead_databases(&admin).await;
    }
    admin
}

/// Set once this process has swept the shared server.
static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Drops the test databases of test processes that have ended. A test's database lives as long as its
/// process may still read it (a failed test's stays until the next test process starts); without this
/// sweep, every run of the suite left hundreds of databases (~10 MB each) on the shared server.
async fn sweep_dead_databases(admin: &PgConnectOptions) {
    use sqlx::Connection;
    let Ok(mut conn) = sqlx::PgConnection::connect_with(admin).await else {
        return;
    };
    let names: Vec<String> = sqlx::query_scalar(r"SELECT datname FROM pg_database WHERE datname LIKE 't\_%'")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    for name in names.into_iter().filter(|name| !owner_alive(name)) {
        // A database someone is still connected to refuses the drop; it is left for a later sweep.
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\""))
            .execute(&mut conn)
            .await;
    }
}

/// Whether the process that named a test database `t_<pid>_<uuid>` still runs.
fn owner_alive(name: &str) -> bool {
    let pid = name
        .strip_prefix("t_")
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, _)| pid.parse::<libc::pid_t>().ok());
    pid.is_some_and(|pid| {
        // SAFETY: kill with signal 0 sends nothing; it only asks whether the process exists (EPERM: it
        // does, under another user).
        let sent = unsafe { libc::kill(pid, 0) };
        sent == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    })
}

/// A fresh, migrated database of its own, with its connection options.
pub async fn fresh_database() -> (PgPool, PgConnectOptions) {
    let admin = admin_options().await;
    let name = format!("t_{}_{}", std::process::id(), uuid::Uuid::new_v4().simple());
    postgres::create_database_if_missing(&admin, &name)
        .await
        .expect("create the test database");
    let options = admin.clone().database(&name);
    let pool = postgres::open_with(options.clone(), 40)
        .await
        .expect("open and migrate");
    (pool, options)
}

/// Where a test keeps the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// In the log's database.
    One,
    /// In a database of its own (`RECALL_READ_MODEL_URL`).
    Split,
}

/// Fresh databases in `layout`, with the log's and (split) the read model's connection options. Split,
/// each database loses the other's tables, so that a query sent to the wrong one fails loudly instead of
/// reading an empty table.
pub async fn fresh_databases(layout: Layout) -> (Databases, PgConnectOptions, Option<PgConnectOptions>) {
    let (log, log_options) = fresh_database().await;
    if layout == Layout::One {
        return (Databases::one(log), log_options, None);
    }
    let (read_model, read_options) = fresh_database().await;
    sqlx::raw_sql("DROP TABLE events, log_head CASCADE")
        .execute(&read_model)
        .await
        .expect("drop the log's tables from the read model's database");
    sqlx::raw_sql(
        "DROP TABLE projections, documents, document_versions, chunks, projection_failures, lexical_stats,
                    lexeme_stats, projection_shards, projection_workers CASCADE",
    )
    .execute(&log)
    .await
    .expect("drop the read model's tables from the log's database");
    (Databases::split(log, read_model), log_options, Some(read_options))
}

/// Runs each named `async fn name(layout: Layout)` of the calling test file in both layouts, as tests
/// `one_database::name` and `read_model_apart::name`.
#[macro_export]
macro_rules! in_both_layouts {
    ($($name:ident),* $(,)?) => {
        mod one_database {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Layout::One).await
                }
            )*
        }
        mod read_model_apart {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::common::Layout::Split).await
                }
            )*
        }
    };
}

/// Runs `recall ARGS` as `command` sets it up (environment); fails the test, with its stderr, unless it
/// succeeds.
pub fn recall_ok<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    mut command: std::process::Command,
    args: &[S],
) -> std::process::Output {
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "recall {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A libpq URL for the options (for child processes such as the CLI).
pub fn url_of(options: &PgConnectOptions) -> String {
    let db = options.get_database().unwrap_or("postgres");
    match options.get_socket() {
        Some(dir) => format!(
            "postgresql://{}@localhost:{}/{db}?host={}",
            options.get_username(),
            options.get_port(),
            dir.display()
        ),
        None => std::env::var("RECALL_TEST_DATABASE_URL")
            .map(|u| {
                let (base, _) = u.rsplit_once('/').expect("a URL with a database");
                format!("{base}/{db}")
            })
            .expect("a socket or RECALL_TEST_DATABASE_URL"),
    }
}

/// The real model (from models/, fetched by scripts/setup), loaded once per test binary.
pub fn model_backend() -> std::sync::Arc<recall::projector::ModelBackend> {
    use std::sync::{Arc, OnceLock};
    static BACKEND: OnceLock<Arc<recall::projector::ModelBackend>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let embedder = recall::embed::Embedder::load(&recall::embed::ModelSource::parse(None), Default::default())
                .expect("the model under models/ (run scripts/setup)");
            Arc::new(recall::projector::ModelBackend::new(embedder, 32))
        })
        .clone()
}

/// The real model loaded at `precision` (a fresh embedder: the shared backend's is f32).
pub fn embedder_at(precision: recall::embed::Precision) -> recall::embed::Embedder {
    recall::embed::Embedder::load(
        &recall::embed::ModelSource::parse(None),
        recall::embed::EmbedderOptions {
            precision,
            ..Default::default()
        },
    )
    .expect("the model under models/ (run scripts/setup)")
}

/// An embedded server with a home of its own (for tests that kill or stop it), not yet started.
pub fn private_server(prefix: &str) -> (tempfile::TempDir, EmbeddedServer) {
    let home = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    // The server may run as `nobody`: the home must be reachable by it.
    std::fs::set_permissions(home.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = EmbeddedServer::locate(home.path().to_path_buf()).unwrap();
    (home, server)
}

/// Starts a private server, or restarts it after a kill.
pub async fn ensure_running(server: &EmbeddedServer) {
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.ensure_running())
        .await
        .unwrap()
        .unwrap();
}

/// Starts a private server (or restarts it) and opens its migrated `recall` database.
pub async fn start_with_database(server: &EmbeddedServer) -> PgPool {
    ensure_running(server).await;
    postgres::create_database_if_missing(&server.connect_options("postgres"), "recall")
        .await
        .unwrap();
    postgres::open_with(server.connect_options("recall"), 8).await.unwrap()
}

/// POSTs the document `{id, text}` through the router: its status, Retry-After header and JSON body.
pub async fn post_document(
    router: &axum::Router,
    id: &str,
    text: &str,
) -> (axum::http::StatusCode, Option<String>, serde_json::Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let request = axum::http::Request::post("/v1/documents")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(
            serde_json::json!({"id": id, "text": text}).to_string(),
        ))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, retry_after, serde_json::from_slice(&bytes).unwrap_or_default())
}

/// POSTs a document until it is created, retrying a 503 as its Retry-After tells clients to, at most
/// `retries` times; anything else fails the test.
pub async fn post_until_created(router: &axum::Router, id: &str, text: &str, retries: u32) {
    for attempt in 0.. {
        let (status, _, body) = post_document(router, id, text).await;
        match status {
            axum::http::StatusCode::CREATED => return,
            axum::http::StatusCode::SERVICE_UNAVAILABLE if attempt < retries => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            other => panic!("{id}: {other} {body}"),
        }
    }
}

/// The ids of every document the log holds an event for.
pub async fn logged_ids(store: &recall::event_store::EventStore) -> std::collections::BTreeSet<String> {
    store
        .read_all(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stream_id.split_once(':').unwrap().1.to_owned())
        .collect()
}

/// Asserts that every acknowledged document id is in the log; returns the logged ids.
pub async fn assert_nothing_lost(
    store: &recall::event_store::EventStore,
    acknowledged: &std::collections::BTreeSet<String>,
) -> std::collections::BTreeSet<String> {
    let logged = logged_ids(store).await;
    assert!(
        acknowledged.is_subset(&logged),
        "acknowledged but lost: {:?}",
        acknowledged.difference(&logged)
    );
    logged
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Starts `recall serve` on an ephemeral loopback port against `url` (with `token` as its
/// RECALL_API_TOKEN, or none); returns the child and its base URL once it listens.
pub fn spawn_serve(url: &str, token: Option<&str>) -> (std::process::Child, String) {
    spawn_serve_with(url, token, &[])
}

/// `spawn_serve` with further arguments for `recall serve`.
pub fn spawn_serve_with(url: &str, token: Option<&str>, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_recall"));
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("RECALL_API_TOKEN")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(token) = token {
        command.env("RECALL_API_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("recall serve exited before it listened").unwrap();
        if let Some(rest) = line.split("serving ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so that the server never blocks on a full pipe; the lines go to the test's own
    // output (spawned threads share its capture), shown when the test fails.
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|line| eprintln!("recall serve: {line}"))
    });
    (child, base)
}

/// The Python of the venv that `scripts/setup` fills with the official client SDKs (tests/clients).
pub fn clients_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/clients-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ./scripts/setup (it installs tests/clients/requirements.txt)",
        python.display()
    );
    python
}

/// Runs a client script of tests/clients with the arguments; its stdout (a JSON summary) when it passed.
pub fn run_client(script: &str, args: &[&str]) -> serde_json::Value {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients");
    let output = std::process::Command::new(clients_python())
        .arg(dir.join(script))
        .args(args)
        .output()
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("a JSON summary on the last line")
}

/// Waits until `recall serve` at `base` answers /readyz with 200 (the model is loaded).
pub fn wait_ready(base: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while ureq::get(&format!("{base}/readyz")).call().is_err() {
        assert!(std::time::Instant::now() < deadline, "{base} never became ready");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
