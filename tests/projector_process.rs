//! `recall project` as real child processes: one SIGKILLed at random moments and restarted, or three
//! sharing the shards while an ingest runs and being SIGKILLed and restarted at random; either way the
//! read model must equal a clean single run, no receipt may claim a position whose effects are not
//! visible, as-of searches replay after further writes, and a killed worker's shards move on within the
//! lease.

mod common;

use recall::read_model;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::search::{Query, SearchMode, SearchRequest, SearchResponse};
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
        // A SIGKILLed worker's shards pass to the next one after this.
        .env("RECALL_LEASE_SECONDS", LEASE_SECONDS.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

const LEASE_SECONDS: u64 = 2;

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
    fill_range(pool, 0..n).await
}

/// Documents `range`, then updates of every 10th and removals of every 25th of them.
async fn fill_range(pool: &PgPool, range: std::ops::Range<usize>) -> i64 {
    let h = CommandHandler::new(EventStore::new(pool.clone()));
    let ctx = CommandContext::default();
    let (start, n) = (range.start, range.end);
    let adds = range
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
    for i in (start..n).step_by(10) {
        changes.push((
            key(i),
            DocumentCommand::Update {
                content: content(format!("Document {i}, revised.")),
                expected_version: Some(1),
            },
        ));
    }
    for i in (start + 5..n).step_by(25) {
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
    let clean = clean_run(&db).await;
    same_read_model(&pool, crashed.generation, clean, 1000).await;
}

/// The whole log projected by one worker alone into a new generation, for comparison.
async fn clean_run(db: &recall::postgres::Databases) -> i64 {
    let identity = common::model_backend().embedder().identity().clone();
    let clean = read_model::create_building(db.read_model(), &identity, 16)
        .await
        .unwrap();
    let p = Projector::new(db, common::model_backend(), ProjectorOptions::default());
    p.run_until_caught_up(Target::Generation(clean.generation))
        .await
        .unwrap();
    clean.generation
}

/// The two generations hold the same chunks (rows, offsets, text; embeddings at cosine >= 0.99999) and
/// documents.
async fn same_read_model(pool: &PgPool, a: i64, b: i64, documents: usize) {
    let (x, y) = (snapshot(pool, a).await, snapshot(pool, b).await);
    assert_eq!(
        x.len(),
        y.len(),
        "same number of chunk rows: no duplicates, nothing missing"
    );
    assert!(x.len() >= documents + documents / 10);
    for (x, y) in x.iter().zip(&y) {
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
    assert_eq!(docs(a).await, docs(b).await);
}

/// Worker processes, SIGKILLed with the test should it fail half-way.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Which worker (by its roll entry, `host:pid`) holds each shard of the active generation now.
async fn holders(pool: &PgPool) -> Vec<(i32, Option<String>)> {
    sqlx::query_as(
        "SELECT s.shard, w.name FROM projection_shards s
         JOIN projections p ON p.generation = s.generation AND p.status = 'active'
         LEFT JOIN projection_workers w ON w.id = s.owner AND s.lease_expires > now()
         ORDER BY s.shard",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// How many shards each of `pids` holds.
async fn shares(pool: &PgPool, pids: &[u32]) -> Vec<usize> {
    let holders = holders(pool).await;
    pids.iter()
        .map(|pid| {
            let suffix = format!(":{pid}");
            holders
                .iter()
                .filter(|(_, h)| h.as_ref().is_some_and(|h| h.ends_with(&suffix)))
                .count()
        })
        .collect()
}

/// In one snapshot of the read model: the watermark, and whether every upsert at or below it has its
/// version and every removal its document's state. Returns the watermark and the positions missing.
async fn receipt_holds(log: &PgPool, read_model: &PgPool) -> (i64, Vec<i64>) {
    let mut tx = read_model
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .unwrap();
    let Some((generation, watermark)): Option<(i64, i64)> =
        sqlx::query_as("SELECT generation, projection_watermark(generation) FROM projections WHERE status = 'active'")
            .fetch_optional(&mut *tx)
            .await
            .unwrap()
    else {
        // No worker has started yet.
        return (0, Vec::new());
    };
    let versions: std::collections::HashSet<i64> =
        sqlx::query_scalar("SELECT position FROM document_versions WHERE generation = $1 AND position <= $2")
            .bind(generation)
            .bind(watermark)
            .fetch_all(&mut *tx)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let documents: std::collections::HashMap<String, (i64, bool)> = sqlx::query_as::<_, (String, String, i64, bool)>(
        "SELECT scope, id, position, removed FROM documents WHERE generation = $1",
    )
    .bind(generation)
    .fetch_all(&mut *tx)
    .await
    .unwrap()
    .into_iter()
    .map(|(scope, id, position, removed)| (format!("{scope}:{id}"), (position, removed)))
    .collect();
    drop(tx);
    let events: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT position, stream_id, event_type FROM events WHERE position <= $1 ORDER BY position")
            .bind(watermark)
            .fetch_all(log)
            .await
            .unwrap();
    let missing = events
        .into_iter()
        .filter(|(position, stream, event_type)| match event_type.as_str() {
            "DocumentRemoved" => documents.get(stream).is_none_or(|&(p, _)| p < *position),
            _ => !versions.contains(position) || documents.get(stream).is_none_or(|&(p, _)| p < *position),
        })
        .map(|(position, ..)| position)
        .collect();
    (watermark, missing)
}

/// A search now, to be replayed as of its receipt once more has been written.
async fn search_now(pool: &PgPool, text: &str, mode: SearchMode) -> SearchResponse {
    let request = SearchRequest {
        mode,
        k: 10,
        ..SearchRequest::default()
    };
    let vector = match mode {
        SearchMode::Lexical => None,
        _ => Some(common::model_backend().embedder().encode(&[text]).unwrap().remove(0)),
    };
    recall::search::search(
        pool,
        Query {
            text,
            vector: vector.as_deref(),
        },
        &request,
    )
    .await
    .unwrap()
}

fn hits(response: &SearchResponse) -> Vec<(String, i32, String)> {
    response
        .results
        .iter()
        .map(|h| (h.document_id.clone(), h.chunk_index, format!("{:.5}", h.score)))
        .collect()
}

async fn three_workers_killed_at_random_during_an_ingest_project_exactly_the_clean_read_model(layout: common::Layout) {
    let (db, options, read_options) = common::fresh_databases(layout).await;
    let url = (common::url_of(&options), read_options.as_ref().map(common::url_of));
    let pool = db.read_model().clone();
    let mut workers = Workers((0..3).map(|_| project(&url, &[])).collect());
    let workers = &mut workers.0;
    let mut rng = rand::thread_rng();

    // The ingest goes on in rounds, one before each kill, while the workers project.
    const ROUNDS: usize = 8;
    let mut round = 0;
    let mut kills = 0;
    let mut receipts: Vec<i64> = Vec::new();
    let mut replays = Vec::new();
    let store = EventStore::new(db.log().clone());
    loop {
        if round < ROUNDS {
            fill_range(db.log(), round * 60..(round + 1) * 60).await;
            round += 1;
        }
        // Each kill comes once the workers have made progress (however slowly a loaded machine starts
        // them), at a random moment after.
        let before = checkpoint(&pool).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while checkpoint(&pool).await == before && before < store.head().await.unwrap() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..700))).await;
        let victim = rng.gen_range(0..workers.len());
        workers[victim].kill().unwrap(); // SIGKILL
        workers[victim].wait().unwrap();
        workers[victim] = project(&url, &[]);
        kills += 1;
        let (watermark, missing) = receipt_holds(db.log(), &pool).await;
        assert!(
            missing.is_empty(),
            "the watermark {watermark} claims unprojected positions {missing:?}"
        );
        receipts.push(watermark);
        if read_model::active(&pool).await.unwrap().is_some() {
            for mode in [SearchMode::Lexical, SearchMode::Dense, SearchMode::Hybrid] {
                replays.push((mode, search_now(&pool, "something about topic 3, revised", mode).await));
            }
        }
        let head = store.head().await.unwrap();
        let mid_way = receipts.iter().filter(|&&r| r > 0 && r < head).count();
        if (round == ROUNDS && kills >= 6 && mid_way >= 3) || kills >= 24 {
            break;
        }
    }
    let head = EventStore::new(db.log().clone()).head().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while checkpoint(&pool).await < head {
        assert!(Instant::now() < deadline, "the workers did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        receipts.windows(2).all(|w| w[0] <= w[1]),
        "receipts went back: {receipts:?}"
    );
    let mid_way = receipts.iter().filter(|&&r| r > 0 && r < head).count();
    assert!(
        mid_way >= 3,
        "too few receipts taken while projecting: {receipts:?} (head {head})"
    );

    // Three live workers settle on 6, 5 and 5 of the 16 shards.
    let pids: Vec<u32> = workers.iter().map(Child::id).collect();
    let deadline = Instant::now() + Duration::from_secs(LEASE_SECONDS * 4 + 10);
    loop {
        let mut now = shares(&pool, &pids).await;
        now.sort_unstable();
        if now == [5, 5, 6] {
            break;
        }
        assert!(Instant::now() < deadline, "shares did not settle: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A killed worker's shards pass to the others within the lease (and a rebalance).
    let killed = pids[0];
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    let killed_at = Instant::now();
    loop {
        let now = shares(&pool, &pids).await;
        if now[0] == 0 && now[1] + now[2] == 16 {
            break;
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(LEASE_SECONDS * 2 + 5),
            "worker {killed}'s shards stayed: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved_after = killed_at.elapsed();
    assert!(
        moved_after >= Duration::from_secs(LEASE_SECONDS) - Duration::from_millis(500),
        "{moved_after:?}"
    );
    for w in &mut workers[1..] {
        w.kill().unwrap();
        w.wait().unwrap();
    }

    // Every search made during the run replays as of its receipt, after all that was written since.
    assert!(replays.iter().filter(|(_, r)| !r.results.is_empty()).count() >= 6);
    for (mode, original) in &replays {
        let request = SearchRequest {
            mode: *mode,
            k: 10,
            as_of: Some(original.position),
            ..SearchRequest::default()
        };
        let text = "something about topic 3, revised";
        let vector = match mode {
            SearchMode::Lexical => None,
            _ => Some(common::model_backend().embedder().encode(&[text]).unwrap().remove(0)),
        };
        let replay = recall::search::search(
            &pool,
            Query {
                text,
                vector: vector.as_deref(),
            },
            &request,
        )
        .await
        .unwrap();
        assert_eq!(replay.position, original.position);
        assert_eq!(hits(&replay), hits(original), "{mode:?} as of {}", original.position);
    }

    // The same log projected by one worker alone, into a generation of its own.
    let crashed = read_model::active(&pool).await.unwrap().unwrap();
    let clean = clean_run(&db).await;
    same_read_model(&pool, crashed.generation, clean, 480).await;
}

in_both_layouts!(
    sigkilled_projection_restarts_into_exactly_the_clean_read_model,
    three_workers_killed_at_random_during_an_ingest_project_exactly_the_clean_read_model,
);
