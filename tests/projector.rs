//! The projector against a real PostgreSQL with pgvector and the real model: add/update/remove
//! semantics with history, parked failures and their retry, the stop policy, model checks,
//! read-your-writes, rebuild, and concurrent writers.

mod common;

use recall::read_model::{self, ReadModelError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{
    DocumentCommand, DocumentContent, DocumentId, DocumentKey, DocumentState, Limits, Metadata, Scope, Text, Title,
};
use recall::embed::{Chunk, EmbedError, ModelIdentity, Precision};
use recall::event_store::{AppendRequest, EventStore, ExpectedVersion, NewEvent};
use recall::postgres::Databases;
use recall::projector::{EmbedBackend, OnError, Projector, ProjectorError, ProjectorOptions, Target};
use sqlx::PgPool;

fn key(id: &str) -> DocumentKey {
    DocumentKey::new(Scope::default(), DocumentId::parse(id).unwrap())
}

fn content(title: &str, text: &str) -> DocumentContent {
    DocumentContent {
        title: Title::parse(title).unwrap(),
        text: Text::parse(text.into(), &Limits::default()).unwrap(),
        metadata: Metadata::parse(serde_json::json!({"lang": "en"})).unwrap(),
        origin: None,
    }
}

async fn setup(
    layout: common::Layout,
    backend: Arc<dyn EmbedBackend>,
    options: ProjectorOptions,
) -> (Databases, CommandHandler, Projector) {
    let (db, _, _) = common::fresh_databases(layout).await;
    let store = EventStore::new(db.log().clone());
    let projector = Projector::new(&db, backend, options);
    (db, CommandHandler::new(store), projector)
}

async fn add(h: &CommandHandler, id: &str, title: &str, text: &str) {
    h.execute(
        &key(id),
        DocumentCommand::Add {
            content: content(title, text),
        },
        &CommandContext::default(),
    )
    .await
    .unwrap();
}

fn long_text() -> String {
    (0..60)
        .map(|i| format!("Sentence number {i} talks about vector databases and event sourcing in some detail. "))
        .collect()
}

#[derive(sqlx::FromRow, Debug, PartialEq)]
struct ChunkRow {
    document_id: String,
    chunk_index: i32,
    valid_from: i64,
    valid_to: Option<i64>,
    char_start: i32,
    char_end: i32,
    text: String,
}

async fn chunks(pool: &PgPool) -> Vec<ChunkRow> {
    sqlx::query_as(
        "SELECT document_id, chunk_index, valid_from, valid_to, char_start, char_end, text FROM chunks
         ORDER BY document_id, valid_from, chunk_index",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn adds_updates_and_removes_project_with_their_history(layout: common::Layout) {
    let (db, h, p) = setup(layout, common::model_backend(), ProjectorOptions::default()).await;
    let pool = db.read_model().clone();
    add(&h, "short", "Sorting", "Lists can be sorted in place.").await;
    add(&h, "long", "Notes", &long_text()).await;
    add(&h, "gone", "Temp", "This document will be removed.").await;
    let ctx = CommandContext::default();
    h.execute(
        &key("short"),
        DocumentCommand::Update {
            content: content("Sorting", "Use sorted() for a new list."),
            expected_version: Some(1),
        },
        &ctx,
    )
    .await
    .unwrap();
    h.execute(&key("gone"), DocumentCommand::Remove { expected_version: None }, &ctx)
        .await
        .unwrap();
    let generation = p.run_until_caught_up(Target::Active).await.unwrap();
    assert_eq!(generation.checkpoint, 5);

    let docs: Vec<(String, i64, bool, i64, String)> =
        sqlx::query_as("SELECT id, version, removed, position, title FROM documents ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        docs,
        vec![
            ("gone".into(), 2, true, 5, "Temp".into()),
            ("long".into(), 1, false, 2, "Notes".into()),
            ("short".into(), 2, false, 4, "Sorting".into()),
        ]
    );

    let rows = chunks(&pool).await;
    let short: Vec<_> = rows.iter().filter(|r| r.document_id == "short").collect();
    assert_eq!(short.len(), 2, "the superseded chunk is kept for as-of reads");
    assert_eq!((short[0].valid_from, short[0].valid_to), (1, Some(4)));
    assert_eq!(
        (short[1].valid_from, short[1].valid_to, short[1].text.as_str()),
        (4, None, "Use sorted() for a new list.")
    );
    let gone: Vec<_> = rows.iter().filter(|r| r.document_id == "gone").collect();
    assert_eq!(
        (gone.len(), gone[0].valid_to),
        (1, Some(5)),
        "a removal closes the chunks"
    );

    let long: Vec<_> = rows.iter().filter(|r| r.document_id == "long").collect();
    assert!(long.len() >= 3, "a long document is chunked");
    assert_eq!(long[0].char_start, 0);
    assert_eq!(long.last().unwrap().char_end as usize, long_text().chars().count());
    assert!(long
        .windows(2)
        .all(|w| w[1].char_start <= w[0].char_end && w[1].char_start > w[0].char_start));

    // The stored vector is the model's embedding of "title text".
    let stored: pgvector::Vector =
        sqlx::query_scalar("SELECT embedding FROM chunks WHERE document_id = 'short' AND valid_to IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    let expected = common::model_backend()
        .embedder()
        .encode(&["Sorting Use sorted() for a new list."])
        .unwrap()
        .remove(0);
    assert!(common::cosine(&stored.to_vec(), &expected) >= 0.9999);

    let status = read_model::status(&db).await.unwrap();
    assert_eq!(status.head, 5);
    assert_eq!(
        (
            status.projections[0].lag_events,
            status.projections[0].documents,
            status.projections[0].parked_failures
        ),
        (0, 2, 0)
    );
    assert!(status
        .to_prometheus()
        .contains("recall_projection_lag_events{generation=\"1\""));
}

/// The real model in front of a switch that breaks chunking for texts containing "POISON".
struct Faulty {
    inner: Arc<dyn EmbedBackend>,
    broken: AtomicBool,
}

impl EmbedBackend for Faulty {
    fn identity(&self) -> &ModelIdentity {
        self.inner.identity()
    }
    fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        if self.broken.load(Ordering::SeqCst) && text.contains("POISON") {
            return Err(EmbedError::Tokenizer("injected failure".into()));
        }
        self.inner.chunk(title, text, section_starts)
    }
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        self.inner.embed(inputs)
    }
}

async fn append_undecodable(pool: &PgPool) {
    EventStore::new(pool.clone())
        .append(AppendRequest {
            stream_id: "default:weird".into(),
            scope: "default".into(),
            expected: ExpectedVersion::Any,
            events: vec![NewEvent {
                event_id: uuid::Uuid::now_v7(),
                event_type: "DocumentAdded".into(),
                schema_version: 1,
                payload: r#"{"nonsense": true}"#.into(),
                metadata: "{}".into(),
                causation_id: None,
                correlation_id: None,
                actor: None,
            }],
        })
        .await
        .unwrap()
        .unwrap();
}

async fn a_poison_event_is_parked_later_events_project_and_retry_applies_it_after_a_fix(layout: common::Layout) {
    let faulty = Arc::new(Faulty {
        inner: common::model_backend(),
        broken: AtomicBool::new(true),
    });
    let (db, h, p) = setup(layout, faulty.clone(), ProjectorOptions::default()).await;
    let pool = db.read_model().clone();
    add(&h, "a", "", "first document").await;
    add(&h, "poison", "", "this text contains POISON").await;
    append_undecodable(db.log()).await;
    add(&h, "c", "", "a later document").await;
    let generation = p.run_until_caught_up(Target::Active).await.unwrap();
    assert_eq!(generation.checkpoint, 4, "the projector went on past the failures");

    let live: Vec<String> = sqlx::query_scalar("SELECT id FROM documents ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(live, vec!["a", "c"]);
    let parked = read_model::failures(&pool, false).await.unwrap();
    assert_eq!(parked.iter().map(|f| f.position).collect::<Vec<_>>(), vec![2, 3]);
    assert!(parked[0].error.contains("injected failure"), "{}", parked[0].error);
    assert!(
        parked[1].error.contains("cannot decode DocumentAdded"),
        "{}",
        parked[1].error
    );
    assert_eq!(read_model::status(&db).await.unwrap().projections[0].parked_failures, 2);

    // Still broken: nothing resolves, attempts are counted.
    let report = p.retry_failures(Target::Active).await.unwrap();
    assert_eq!(report.still_failing, vec![2, 3]);

    faulty.broken.store(false, Ordering::SeqCst);
    let report = p.retry_failures(Target::Active).await.unwrap();
    assert_eq!((report.resolved, report.still_failing), (vec![2], vec![3]));
    let live: Vec<String> = sqlx::query_scalar("SELECT id FROM documents ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(live, vec!["a", "c", "poison"]);
    let parked = read_model::failures(&pool, false).await.unwrap();
    assert_eq!((parked.len(), parked[0].position, parked[0].attempts), (1, 3, 3));
}

async fn the_stop_policy_halts_just_before_the_failure(layout: common::Layout) {
    let options = ProjectorOptions {
        on_error: OnError::Stop,
        batch_events: 2,
        ..Default::default()
    };
    let (db, h, p) = setup(layout, common::model_backend(), options).await;
    let pool = db.read_model().clone();
    add(&h, "a", "", "one").await;
    add(&h, "b", "", "two").await;
    add(&h, "c", "", "three").await;
    append_undecodable(db.log()).await;
    add(&h, "e", "", "five").await;
    match p.run_until_caught_up(Target::Active).await {
        Err(ProjectorError::Stopped { position: 4, .. }) => {}
        other => panic!("expected a stop at position 4, got {other:?}"),
    }
    let g = read_model::active(&pool).await.unwrap().unwrap();
    assert_eq!(g.checkpoint, 3);
    assert!(
        read_model::failures(&pool, true).await.unwrap().is_empty(),
        "stopping parks nothing"
    );
}

struct OtherModel {
    identity: ModelIdentity,
}

impl EmbedBackend for OtherModel {
    fn identity(&self) -> &ModelIdentity {
        &self.identity
    }
    fn chunk(&self, _: &str, _: &str, _: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        unreachable!("refused before any work")
    }
    fn embed(&self, _: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        unreachable!("refused before any work")
    }
}

/// One projector step with a model of the given identity; it must be refused.
async fn step_with_identity(db: &Databases, identity: ModelIdentity) -> ProjectorError {
    Projector::new(db, Arc::new(OtherModel { identity }), ProjectorOptions::default())
        .step(Target::Active)
        .await
        .unwrap_err()
}

/// One projector step with a model of the given name and dimension; it must be refused.
async fn step_with_model(db: &Databases, name: &str, dimension: usize) -> ProjectorError {
    let identity = ModelIdentity {
        name: name.into(),
        revision: "1".into(),
        dimension,
        precision: Default::default(),
    };
    step_with_identity(db, identity).await
}

async fn another_dimension_or_another_model_is_refused(layout: common::Layout) {
    let (db, h, p) = setup(layout, common::model_backend(), ProjectorOptions::default()).await;
    add(&h, "a", "", "text").await;
    let err = step_with_model(&db, "wide", 768).await;
    assert!(
        matches!(
            err,
            ProjectorError::ReadModel(ReadModelError::DimensionMismatch { table: 384, .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("768-dimensional"), "{err}");

    p.run_until_caught_up(Target::Active).await.unwrap();
    let err = step_with_model(&db, "other", 384).await;
    assert!(
        matches!(err, ProjectorError::ReadModel(ReadModelError::ModelMismatch { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("recall rebuild"), "{err}");

    // The same model at another precision is another identity: its vectors would differ slightly from
    // the generation's.
    for precision in [Precision::Int8, Precision::Bf16] {
        let identity = ModelIdentity {
            precision,
            ..common::model_backend().identity().clone()
        };
        let err = step_with_identity(&db, identity).await;
        assert!(
            matches!(err, ProjectorError::ReadModel(ReadModelError::ModelMismatch { .. })),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.contains("at f32, not ") && message.contains(&format!("at {precision}")),
            "{message}"
        );
        assert!(message.contains("--precision"), "{message}");
    }
}

async fn wait_for_returns_once_projected_and_times_out_otherwise(layout: common::Layout) {
    let (db, h, p) = setup(layout, common::model_backend(), ProjectorOptions::default()).await;
    let pool = db.read_model().clone();
    add(&h, "a", "", "text").await;
    p.run_until_caught_up(Target::Active).await.unwrap();
    add(&h, "b", "", "more text").await;
    let err = read_model::wait_for(&pool, 2, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReadModelError::WaitTimeout {
                position: 2,
                checkpoint: 1,
                ..
            }
        ),
        "{err}"
    );

    let worker = p.spawn(Target::Active);
    assert_eq!(
        read_model::wait_for(&pool, 2, Duration::from_secs(60)).await.unwrap(),
        2
    );
    add(&h, "c", "", "even more").await;
    assert!(
        read_model::wait_for(&pool, 3, Duration::from_secs(60)).await.unwrap() >= 3,
        "woken by NOTIFY"
    );
    worker.stop().await.unwrap();
}

type Snapshot = Vec<(String, i32, i64, Option<i64>, i32, i32, String, String)>;

/// Same rows, same offsets and text; embeddings equal up to float rounding (batch shapes differ).
fn assert_same_read_model(a: &Snapshot, b: &Snapshot) {
    assert_eq!(a.len(), b.len());
    let parse = |v: &str| -> Vec<f32> {
        v.trim_matches(['[', ']'])
            .split(',')
            .map(|x| x.parse().unwrap())
            .collect()
    };
    for (x, y) in a.iter().zip(b) {
        assert_eq!(
            (&x.0, x.1, x.2, x.3, x.4, x.5, &x.6),
            (&y.0, y.1, y.2, y.3, y.4, y.5, &y.6)
        );
        assert!(
            common::cosine(&parse(&x.7), &parse(&y.7)) >= 0.99999,
            "embeddings of {} chunk {}",
            x.0,
            x.1
        );
    }
}

async fn read_model_snapshot(pool: &PgPool, generation: i64) -> Snapshot {
    sqlx::query_as(
        "SELECT document_id, chunk_index, valid_from, valid_to, char_start, char_end, text, embedding::text FROM chunks
         WHERE generation = $1 ORDER BY document_id, valid_from, chunk_index",
    )
    .bind(generation)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn a_rebuild_yields_the_live_read_model_and_switches_over(layout: common::Layout) {
    let (db, h, p) = setup(
        layout,
        common::model_backend(),
        ProjectorOptions {
            batch_events: 3,
            ..Default::default()
        },
    )
    .await;
    let pool = db.read_model().clone();
    for i in 0..8 {
        add(
            &h,
            &format!("d{i}"),
            "T",
            &format!("document number {i} about topic {}", i % 3),
        )
        .await;
    }
    h.execute(
        &key("d1"),
        DocumentCommand::Remove { expected_version: None },
        &CommandContext::default(),
    )
    .await
    .unwrap();
    let live = p.run_until_caught_up(Target::Active).await.unwrap();
    let before = read_model_snapshot(&pool, live.generation).await;

    let rebuilt = Projector::new(
        &db,
        common::model_backend(),
        ProjectorOptions {
            batch_events: 5,
            ..Default::default()
        },
    )
    .rebuild()
    .await
    .unwrap();
    assert_ne!(rebuilt.generation, live.generation);
    assert_eq!(rebuilt.status, recall::read_model::GenerationStatus::Active);
    let after = read_model_snapshot(&pool, rebuilt.generation).await;
    assert_eq!(before.len(), after.len());
    assert_same_read_model(&before, &after);
    let gens: Vec<(i64, String)> = sqlx::query_as("SELECT generation, status FROM projections")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        gens,
        vec![(rebuilt.generation, "active".to_string())],
        "the old generation is dropped"
    );
}

/// Writers add, update and remove while the projector runs; afterwards every document's read model
/// matches its own stream: the right version, removed or not, and current chunks with the current text.
async fn concurrent_writers_while_projecting_lose_nothing_and_keep_order(layout: common::Layout) {
    let (db, h, p) = setup(
        layout,
        common::model_backend(),
        ProjectorOptions {
            batch_events: 8,
            ..Default::default()
        },
    )
    .await;
    let pool = db.read_model().clone();
    let worker = p.spawn(Target::Active);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let h = h.clone();
            tokio::spawn(async move {
                use rand::Rng;
                let ctx = CommandContext::default();
                for i in 0..40 {
                    let id = format!("doc{}", rand::thread_rng().gen_range(0..12));
                    let command = match rand::thread_rng().gen_range(0..3) {
                        0 => DocumentCommand::Add {
                            content: content("T", &format!("writer {w} op {i} adds {id}")),
                        },
                        1 => DocumentCommand::Update {
                            content: content("T", &format!("writer {w} op {i} rewrites {id}")),
                            expected_version: None,
                        },
                        _ => DocumentCommand::Remove { expected_version: None },
                    };
                    // Rejections (adding a live id, updating a removed one) are part of the mix.
                    let _ = h.execute(&key(&id), command, &ctx).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let head = h.store().head().await.unwrap();
    read_model::wait_for(&pool, head, Duration::from_secs(120))
        .await
        .unwrap();
    worker.stop().await.unwrap();

    for i in 0..12 {
        let k = key(&format!("doc{i}"));
        let state = h.load(&k).await.unwrap();
        let row: Option<(i64, bool)> = sqlx::query_as("SELECT version, removed FROM documents WHERE id = $1")
            .bind(k.id.as_str())
            .fetch_optional(&pool)
            .await
            .unwrap();
        let current: Vec<String> = sqlx::query_scalar(
            "SELECT text FROM chunks WHERE document_id = $1 AND valid_to IS NULL ORDER BY chunk_index",
        )
        .bind(k.id.as_str())
        .fetch_all(&pool)
        .await
        .unwrap();
        match state {
            DocumentState::Absent => assert!(row.is_none() && current.is_empty()),
            DocumentState::Removed { version } => {
                assert_eq!(row, Some((version as i64, true)));
                assert!(current.is_empty(), "removed content came back for {}", k.id);
            }
            DocumentState::Live { version, content } => {
                assert_eq!(row, Some((version as i64, false)));
                assert_eq!(current.concat(), content.text.as_str(), "stale text for {}", k.id);
            }
        }
    }
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(versions >= 12);
}

/// A read model in a database of its own is tied to the log it was projected from: a projector over
/// another log is refused before it writes, with a message that says what to do.
#[tokio::test]
async fn a_read_model_apart_refuses_a_second_log() {
    let (db, h, p) = setup(
        common::Layout::Split,
        common::model_backend(),
        ProjectorOptions::default(),
    )
    .await;
    add(&h, "a", "", "text").await;
    p.run_until_caught_up(Target::Active).await.unwrap();
    let (other_log, _) = common::fresh_database().await;
    let other = Databases::split(other_log, db.read_model().clone());
    add(
        &CommandHandler::new(EventStore::new(other.log().clone())),
        "b",
        "",
        "elsewhere",
    )
    .await;
    let err = Projector::new(&other, common::model_backend(), ProjectorOptions::default())
        .step(Target::Active)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ProjectorError::ReadModel(ReadModelError::OtherLog { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("RECALL_READ_MODEL_URL"), "{err}");
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM documents")
        .fetch_all(db.read_model())
        .await
        .unwrap();
    assert_eq!(ids, vec!["a"], "nothing of the other log was written");
}

/// The real model behind a gate: `embed` says it has started and waits until the test opens the gate.
struct Gated {
    inner: Arc<dyn EmbedBackend>,
    entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
    gate: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl EmbedBackend for Gated {
    fn identity(&self) -> &ModelIdentity {
        self.inner.identity()
    }
    fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        self.inner.chunk(title, text, section_starts)
    }
    fn embed(&self, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.gate.lock().unwrap().recv();
        self.inner.embed(inputs)
    }
}

/// A projector whose leases ran out while it embedded cannot write what it prepared: the projector that
/// took its shards over did, once, and the shards never had two owners.
async fn a_worker_whose_lease_passed_to_another_cannot_write(layout: common::Layout) {
    let (entered, entered_rx) = std::sync::mpsc::channel();
    let (open, gate) = std::sync::mpsc::channel();
    let gated = Arc::new(Gated {
        inner: common::model_backend(),
        entered: std::sync::Mutex::new(entered),
        gate: std::sync::Mutex::new(gate),
    });
    let (db, h, slow) = setup(layout, gated, ProjectorOptions::default()).await;
    let pool = db.read_model().clone();
    add(&h, "a", "Leases", "A lease passes to another worker when it expires.").await;
    add(
        &h,
        "b",
        "Fencing",
        "A write checks that its worker still owns the shard.",
    )
    .await;
    let stepping = tokio::spawn({
        let slow = slow.clone();
        async move { slow.step(Target::Active).await }
    });
    tokio::task::spawn_blocking(move || entered_rx.recv().unwrap())
        .await
        .unwrap();
    let owners: Vec<Option<uuid::Uuid>> = sqlx::query_scalar("SELECT DISTINCT owner FROM projection_shards")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(owners.len(), 1, "the first projector holds every shard: {owners:?}");
    assert!(owners[0].is_some());

    // Its leases run out (a pause, a partition) while it embeds; another projector takes the shards.
    sqlx::query("UPDATE projection_shards SET lease_expires = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let other = Projector::new(&db, common::model_backend(), ProjectorOptions::default());
    assert_eq!(other.step(Target::Active).await.unwrap(), 2);
    open.send(()).unwrap();
    let refused = stepping.await.unwrap();
    assert!(
        matches!(refused, Err(ProjectorError::LostCheckpoint { .. })),
        "{refused:?}"
    );
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM chunks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(chunks, 2, "each document's chunk written once");
    assert_eq!(read_model::active(&pool).await.unwrap().unwrap().checkpoint, 2);
}

in_both_layouts!(
    a_worker_whose_lease_passed_to_another_cannot_write,
    adds_updates_and_removes_project_with_their_history,
    a_poison_event_is_parked_later_events_project_and_retry_applies_it_after_a_fix,
    the_stop_policy_halts_just_before_the_failure,
    another_dimension_or_another_model_is_refused,
    wait_for_returns_once_projected_and_times_out_otherwise,
    a_rebuild_yields_the_live_read_model_and_switches_over,
    concurrent_writers_while_projecting_lose_nothing_and_keep_order,
);
