//! Searches and document reads on a real PostgreSQL streaming replica (a hot standby made with
//! `pg_basebackup` from the bundled server): a read that must see a position goes to the replica once it
//! has replayed it, to the primary while it lags, and a lost replica fails no read.

mod common;

use std::process::Command;
use std::time::Duration;

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::postgres::{self, Databases, EmbeddedServer};
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::read_model::{self, ReadSource, Readers};
use recall::search::{Query, SearchMode, SearchRequest, SearchResponse, Snapshot};
use sqlx::PgPool;

/// A primary and its standby under a temporary folder, stopped and removed at the end.
struct Pair {
    root: std::path::PathBuf,
    primary: EmbeddedServer,
    standby: EmbeddedServer,
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.standby.stop();
        let _ = self.primary.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn pair() -> Pair {
    // Short: the socket's path must fit in 107 bytes.
    let root = std::env::temp_dir().join(format!(
        "recall-replica-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let primary = EmbeddedServer::locate(root.join("primary")).expect("PostgreSQL binaries (run scripts/setup)");
    let standby = EmbeddedServer::locate(root.join("standby")).unwrap();
    let starting = primary.clone();
    tokio::task::spawn_blocking(move || starting.ensure_running())
        .await
        .unwrap()
        .expect("the primary starts");
    postgres::create_database_if_missing(&primary.connect_options("postgres"), "recall")
        .await
        .unwrap();
    // The schema exists before the copy, and every later change streams to the standby.
    postgres::open_with(primary.connect_options("recall"), 2)
        .await
        .unwrap()
        .close()
        .await;
    let (from, to) = (primary.clone(), standby.clone());
    tokio::task::spawn_blocking(move || {
        to.make_standby_of(&from)?;
        to.ensure_running()
    })
    .await
    .unwrap()
    .expect("the standby is made and starts");
    Pair { root, primary, standby }
}

fn key(id: &str) -> DocumentKey {
    DocumentKey::new(Scope::default(), DocumentId::parse(id).unwrap())
}

async fn add(h: &CommandHandler, id: &str, text: &str) -> i64 {
    let content = DocumentContent {
        title: Title::parse("Replicas").unwrap(),
        text: Text::parse(text.into(), &Limits::default()).unwrap(),
        metadata: Metadata::default(),
        origin: None,
    };
    match h
        .execute(&key(id), DocumentCommand::Add { content }, &CommandContext::default())
        .await
        .unwrap()
    {
        recall::commands::CommandOutcome::Appended { position, .. } => position,
        other => panic!("{other:?}"),
    }
}

async fn lexical(readers: &Readers, at_least: Option<i64>, text: &str) -> (SearchResponse, ReadSource) {
    let (snapshot, source) = Snapshot::live_from(readers, at_least).await.unwrap();
    let request = SearchRequest {
        mode: SearchMode::Lexical,
        ..SearchRequest::default()
    };
    (
        snapshot.search(Query { text, vector: None }, &request).await.unwrap(),
        source,
    )
}

/// A read that needs `position`, repeated until a replica (not the primary) answers it.
async fn eventually_on_the_replica(readers: &Readers, position: i64, text: &str) -> (SearchResponse, ReadSource) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (response, source) = lexical(readers, Some(position), text).await;
        if source != ReadSource::Primary {
            assert!(response.position >= position);
            return (response, source);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not replay position {position}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids(response: &SearchResponse) -> Vec<String> {
    response.results.iter().map(|h| h.document_id.clone()).collect()
}

async fn in_recovery(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_replica_answers_reads_and_the_primary_covers_while_it_lags_or_is_lost() {
    let pair = pair().await;
    let primary_pool = postgres::open_with(pair.primary.connect_options("recall"), 8)
        .await
        .unwrap();
    let replica_pool = postgres::open_replica(pair.standby.connect_options("recall"), 4);
    assert!(!in_recovery(&primary_pool).await);
    assert!(in_recovery(&replica_pool).await, "the replica is a hot standby");
    let databases = Databases::one(primary_pool.clone()).with_replicas(vec![replica_pool.clone()]);
    let readers = Readers::new(&databases);
    let h = CommandHandler::new(EventStore::new(primary_pool.clone()));
    let projector = Projector::new(&databases, common::model_backend(), ProjectorOptions::default());

    // Read-your-writes on the replica: it answers once it has replayed the position.
    let first = add(
        &h,
        "wal",
        "Streaming replication ships the write-ahead log to standbys.",
    )
    .await;
    projector.run_until_caught_up(Target::Active).await.unwrap();
    // The projector's commits do not wait for the flush, and a standby receives flushed WAL only: on a
    // loaded machine that can take longer than a read waits for a replica, and then the primary answers.
    let (response, source) = eventually_on_the_replica(&readers, first, "write-ahead log standbys").await;
    assert_eq!(source, ReadSource::Replica(0));
    assert!(response.position >= first);
    assert_eq!(ids(&response), ["wal"]);
    let (pool, source) = readers.pick(Some(first)).await;
    assert_eq!(source, ReadSource::Replica(0));
    let document = read_model::document(pool, &key("wal")).await.unwrap().unwrap();
    assert!(document.checkpoint >= first);

    // The replica stops replaying: a read that needs the new position goes to the primary; one that
    // does not is answered by the replica as of its own, older, receipt, which the primary replays.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&replica_pool)
        .await
        .unwrap();
    let second = add(&h, "lag", "A lagging standby answers with an older receipt.").await;
    projector.run_until_caught_up(Target::Active).await.unwrap();
    let (response, source) = lexical(&readers, Some(second), "lagging standby receipt").await;
    assert_eq!(source, ReadSource::Primary);
    assert!(response.position >= second);
    assert_eq!(ids(&response)[0], "lag");
    let (stale, source) = lexical(&readers, None, "lagging standby receipt").await;
    assert_eq!(source, ReadSource::Replica(0));
    assert!(stale.position < second, "the replica names the position it reflects");
    assert!(!ids(&stale).contains(&"lag".to_owned()));
    let replay_request = SearchRequest {
        mode: SearchMode::Lexical,
        as_of: Some(stale.position),
        ..SearchRequest::default()
    };
    let replayed = recall::search::search(
        &primary_pool,
        Query {
            text: "lagging standby receipt",
            vector: None,
        },
        &replay_request,
    )
    .await
    .unwrap();
    assert_eq!(ids(&replayed), ids(&stale));
    // A replay of a position the paused replica has not reached goes to the primary instead of failing.
    let fresh = recall::search::search_on(
        &readers,
        Query {
            text: "lagging standby receipt",
            vector: None,
        },
        &SearchRequest {
            mode: SearchMode::Lexical,
            as_of: Some(second),
            ..SearchRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(fresh.position, second);
    assert_eq!(ids(&fresh)[0], "lag");

    // Replay resumes: the replica catches up and answers for the new position again.
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&replica_pool)
        .await
        .unwrap();
    let (response, _) = eventually_on_the_replica(&readers, second, "lagging standby receipt").await;
    assert_eq!(ids(&response)[0], "lag");

    // The CLI reads through the replica named by RECALL_READ_DATABASE_URL, and goes on when it is lost.
    let cli_search = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_recall"));
        command
            .env("DATABASE_URL", pair.primary.url("recall"))
            .env("RECALL_READ_DATABASE_URL", pair.standby.url("recall"))
            .env("RECALL_LOG", "error");
        let out = common::recall_ok(command, &["search", "--mode", "lexical", "--json", "standby receipt"]);
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        line["results"][0]["document_id"].as_str().unwrap().to_owned()
    };
    assert_eq!(cli_search(), "lag");

    let standby = pair.standby.clone();
    tokio::task::spawn_blocking(move || standby.stop())
        .await
        .unwrap()
        .unwrap();
    let (response, source) = lexical(&readers, None, "write-ahead log standbys").await;
    assert_eq!(source, ReadSource::Primary, "a lost replica is left out");
    assert_eq!(ids(&response)[0], "wal");
    let (_, source) = readers.pick(None).await;
    assert_eq!(source, ReadSource::Primary, "and stays out for a while");
    assert_eq!(cli_search(), "lag");
    primary_pool.close().await;
}
