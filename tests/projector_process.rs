//! `recall project` as a real child process: SIGKILLed at random moments and restarted, its read model
//! must equal a clean single run; and of two processes only one projects while the other waits.

mod common;

use recall::read_model;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use sqlx::PgPool;

/// `recall project` on the log at `urls.0`, the read model at `urls.1` (or beside the log).
fn project(urls: &(String, Option<String>), args: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recall"));
    if let Some(read_model) = &urls.1 {
        command.env("RECALL_READ_MODEL_URL", read_model);
    }
    command
        .arg("project")
        .args(args)
        .env("DATABASE_URL", &urls.0)
        .env("RECALL_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn key(i: usize) -> DocumentKey {
    DocumentKey::new(Scope::default(), DocumentId::parse(&format!("doc-{i}")).unwrap())
}

fn content(text: String) -> DocumentContent {
    DocumentContent {
        title: Title::parse("Crash test").unwrap(),
        text: Text::parse(text, &Limits::default()).unwrap(),
        metadata: Metadata::default(),
        origin: None,
    }
}

/// `n` documents, then updates of every 10th and removals of every 25th.
async fn fill(pool: &PgPool, n: usize) -> i64 {
    let h = CommandHandler::new(EventStore::new(pool.clone()));
    let ctx = CommandContext::default();
    let adds = (0..n)
        .map(|i| {
            (
                key(i),
                DocumentCommand::Add {
                    content: content(format!("Document {i} says something about topic {}.", i % 17)),
                },
            )
        })
        .collect();
    for outcome in h.execute_batch(adds, &ctx).await.unwrap() {
        outcome.unwrap();
    }
    let mut changes = Vec::new();
    for i in (0..n).step_by(10) {
        changes.push((
            key(i),
            DocumentCommand::Update {
                content: content(format!("Document {i}, revised.")),
                expected_version: Some(1),
            },
        ));
    }
    for i in (5..n).step_by(25) {
        changes.push((key(i), DocumentCommand::Remove { expected_version: None }));
    }
    for outcome in h.execute_batch(changes, &ctx).await.unwrap() {
        outcome.unwrap();
    }
    h.store().head().await.unwrap()
}

async fn checkpoint(pool: &PgPool) -> i64 {
    read_model::active(pool)
        .await
        .unwrap()
        .map(|g| g.checkpoint)
        .unwrap_or(0)
}

type Snapshot = Vec<(String, i32, i64, Option<i64>, i32, i32, String, Vec<f32>)>;

async fn snapshot(pool: &PgPool, generation: i64) -> Snapshot {
    let rows: Vec<(String, i32, i64, Option<i64>, i32, i32, String, pgvector::Vector)> = sqlx::query_as(
        "SELECT document_id, chunk_index, valid_from, valid_to, char_start, char_end, text, embedding FROM chunks
         WHERE generation = $1 ORDER BY document_id, valid_from, chunk_index",
    )
    .bind(generation)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7.to_vec()))
        .collect()
}

async fn sigkilled_projection_restarts_into_exactly_the_clean_read_model(layout: common::Layout) {
    let (db, options, read_options) = common::fresh_databases(layout).await;
    let url = (common::url_of(&options), read_options.as_ref().map(common::url_of));
    let pool = db.read_model().clone();
    let head = fill(db.log(), 1000).await;
    assert!(head > 1000);

    let mut mid_way_kills = 0;
    let mut kills = 0;
    while kills < 12 && (mid_way_kills < 5 || kills < 5) {
        let mut child = project(&url, &[]);
        let before = checkpoint(&pool).await;
        // Let it load the model and get going, then kill it at a random moment.
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoint(&pool).await == before && Instant::now() < deadline && child.try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..700))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let at = checkpoint(&pool).await;
        if at < head {
            mid_way_kills += 1;
        }
    }
    assert!(mid_way_kills >= 5, "only {mid_way_kills} kills landed before the end");
    let out = project(&url, &["--until-caught-up"]).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let crashed = read_model::active(&pool).await.unwrap().unwrap();
    assert_eq!(crashed.checkpoint, head);

    // A clean, single run of the same log into a generation of its own.
    let clean = read_model::create_building(&pool, common::model_backend().embedder().identity(), 16)
        .await
        .unwrap();
    let p = Projector::new(&db, common::model_backend(), ProjectorOptions::default());
    p.run_until_caught_up(Target::Generation(clean.generation))
        .await
        .unwrap();

    let a = snapshot(&pool, crashed.generation).await;
    let b = snapshot(&pool, clean.generation).await;
    assert_eq!(
        a.len(),
        b.len(),
        "same number of chunk rows: no duplicates, nothing missing"
    );
    assert!(a.len() >= 1000 + 100);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.0, x.1, x.2, x.3, x.4, x.5, &x.6),
            (&y.0, y.1, y.2, y.3, y.4, y.5, &y.6)
        );
        let cos = common::cosine(&x.7, &y.7);
        assert!(cos >= 0.99999, "embedding of {} chunk {} differs: {cos}", x.0, x.1);
    }
    let docs = |g: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i64, bool, i64)>(
                "SELECT id, version, removed, position FROM documents WHERE generation = $1 ORDER BY id",
            )
            .bind(g)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(docs(crashed.generation).await, docs(clean.generation).await);
}

async fn of_two_projector_processes_one_projects_and_the_other_waits_then_takes_over(layout: common::Layout) {
    let (db, options, read_options) = common::fresh_databases(layout).await;
    let url = (common::url_of(&options), read_options.as_ref().map(common::url_of));
    let pool = db.read_model().clone();
    let head = fill(db.log(), 600).await;
    let mut first = project(&url, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(&pool).await == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = project(&url, &["--until-caught-up"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("another projector is active"), "{stderr}");
    assert!(stderr.contains("this one is now active"), "{stderr}");
    assert_eq!(checkpoint(&pool).await, head);
}

in_both_layouts!(
    sigkilled_projection_restarts_into_exactly_the_clean_read_model,
    of_two_projector_processes_one_projects_and_the_other_waits_then_takes_over,
);
