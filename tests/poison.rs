//! No accepted document can stall projection: whatever a text holds (control characters, no separators,
//! one enormous "word", mixed scripts), it ends projected or parked, and documents after it, in any
//! scope, become searchable. A write the database refuses is traced to its event and parked.

mod common;

use recall::postgres::Databases;
use std::time::Duration;

use proptest::prelude::*;
use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::embed::MAX_CHUNK_CHARS;
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::read_model;
use recall::search::{search, Query, SearchMode, SearchRequest};
use sqlx::PgPool;

/// Adds a document; false when the command path rejects it (then nothing was appended).
async fn add(handler: &CommandHandler, scope: &str, id: &str, text: &str) -> bool {
    let Ok(text) = Text::parse(text.to_owned(), &Limits::default()) else {
        return false;
    };
    let key = DocumentKey::new(Scope::parse(scope).unwrap(), DocumentId::parse(id).unwrap());
    let content = DocumentContent {
        title: Title::parse("").unwrap(),
        text,
        metadata: Metadata::parse(serde_json::json!({})).unwrap(),
        origin: None,
    };
    handler
        .execute(&key, DocumentCommand::Add { content }, &CommandContext::default())
        .await
        .unwrap();
    true
}

/// Projects everything, within a deadline: a projector that retries forever fails the test.
async fn project_all(pool: &PgPool) {
    let projector = Projector::new(
        &Databases::one(pool.clone()),
        common::model_backend(),
        ProjectorOptions::default(),
    );
    tokio::time::timeout(Duration::from_secs(300), projector.run_until_caught_up(Target::Active))
        .await
        .expect("the projector catches up instead of retrying forever")
        .unwrap();
}

/// Each of `ids` (scope "hostile") is in the read model or parked; the longest chunk is within bounds.
async fn projected_or_parked(pool: &PgPool, ids: &[String]) -> (usize, usize) {
    let (mut projected, mut parked) = (0, 0);
    for id in ids {
        let in_model: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM documents WHERE scope = 'hostile' AND id = $1)")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        let in_failures: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projection_failures WHERE stream_id = 'hostile:' || $1)")
                .bind(id)
                .fetch_one(pool)
                .await
                .unwrap();
        assert!(in_model || in_failures, "{id} is neither projected nor parked");
        projected += usize::from(in_model);
        parked += usize::from(in_failures);
    }
    let longest: Option<i32> = sqlx::query_scalar("SELECT max(char_length(text)) FROM chunks")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(
        longest.unwrap_or(0) as usize <= MAX_CHUNK_CHARS,
        "a chunk of {longest:?} characters"
    );
    (projected, parked)
}

/// A plain document in another scope, added after the hostile ones, is found.
async fn later_document_is_searchable(pool: &PgPool, handler: &CommandHandler) {
    assert!(
        add(
            handler,
            "plain",
            "after",
            "The lighthouse keeper polished the brass lantern every evening."
        )
        .await
    );
    project_all(pool).await;
    let found = search(
        pool,
        Query {
            text: "lighthouse lantern",
            vector: None,
        },
        &SearchRequest {
            mode: SearchMode::Lexical,
            scope: Some(Scope::parse("plain").unwrap()),
            ..SearchRequest::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(found.results.first().map(|h| h.document_id.as_str()), Some("after"));
}

#[tokio::test(flavor = "multi_thread")]
async fn three_mebibytes_of_numbers_between_control_characters_project_in_bounded_chunks() {
    let (pool, _) = common::fresh_database().await;
    let handler = CommandHandler::new(EventStore::new(pool.clone()));
    // What the hostile suite sent: the tokenizer drops U+0001, leaving one unknown word piece of 3 MiB.
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 3 << 20 {
        text.push_str(&i.to_string());
        text.push('\u{1}');
        i += 1;
    }
    let ids: Vec<String> = vec!["numbers".into(), "spaces".into(), "word".into()];
    assert!(add(&handler, "hostile", "numbers", &text).await);
    assert!(add(&handler, "hostile", "spaces", &format!("a{}b", " ".repeat(1 << 20))).await);
    assert!(add(&handler, "hostile", "word", &"x".repeat(1 << 20)).await);
    project_all(&pool).await;
    let (projected, _) = projected_or_parked(&pool, &ids).await;
    assert_eq!(projected, 3, "texts like these are projected, in pieces");
    // Offsets still cover the text exactly.
    let (chunks, covered): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(char_end)::bigint FROM chunks WHERE scope = 'hostile' AND document_id = 'numbers'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(chunks as usize >= text.chars().count() / MAX_CHUNK_CHARS);
    assert_eq!(covered, Some(text.chars().count() as i64));
    later_document_is_searchable(&pool, &handler).await;
}

/// A fresh log holding "before", "poison" and "after" (positions 1 to 3) in scope "hostile", over a
/// database that refuses poison's chunks.
async fn poisoned_log() -> (PgPool, CommandHandler) {
    let (pool, _) = common::fresh_database().await;
    let handler = CommandHandler::new(EventStore::new(pool.clone()));
    refuse_poison(&pool).await;
    for id in ["before", "poison", "after"] {
        let text = format!("The {id} document talks about lanterns.");
        assert!(add(&handler, "hostile", id, &text).await);
    }
    (pool, handler)
}

/// A refusal by the database for what one document ("poison") holds, whatever the cause.
async fn refuse_poison(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.document_id = 'poison' THEN
                 RAISE EXCEPTION 'value too odd to index' USING ERRCODE = '22023';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_poison BEFORE INSERT ON chunks FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn under_on_error_stop_a_refused_write_stops_just_before_its_event() {
    let (pool, _) = poisoned_log().await;
    let projector = Projector::new(
        &Databases::one(pool.clone()),
        common::model_backend(),
        ProjectorOptions {
            on_error: recall::projector::OnError::Stop,
            ..ProjectorOptions::default()
        },
    );
    let stopped = projector.run_until_caught_up(Target::Active).await.unwrap_err();
    match stopped {
        recall::projector::ProjectorError::Stopped {
            position,
            stream_id,
            error,
            ..
        } => {
            assert_eq!(position, 2);
            assert_eq!(stream_id, "hostile:poison");
            assert!(error.contains("value too odd to index"), "{error}");
        }
        other => panic!("expected a stop, got {other}"),
    }
    let (checkpoint, parked): (i64, i64) = sqlx::query_as(
        "SELECT projection_watermark(generation), (SELECT count(*) FROM projection_failures) FROM projections WHERE status = 'active'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (checkpoint, parked),
        (1, 0),
        "stopped just before the event, nothing parked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_the_database_refuses_parks_that_event_and_projects_the_rest() {
    let (pool, handler) = poisoned_log().await;
    project_all(&pool).await;
    let ids: Vec<String> = ["before", "poison", "after"].map(String::from).into();
    assert_eq!(projected_or_parked(&pool, &ids).await, (2, 1));
    let (stream, error, unresolved): (String, String, bool) =
        sqlx::query_as("SELECT stream_id, error, resolved_at IS NULL FROM projection_failures")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stream, "hostile:poison");
    assert!(error.contains("value too odd to index"), "{error}");
    assert!(unresolved);
    let (head, checkpoint, attempts): (i64, i64, i32) = sqlx::query_as(
        "SELECT (SELECT position FROM log_head), projection_watermark(generation), retry_attempts FROM projections WHERE status = 'active'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(checkpoint, head);
    assert_eq!(attempts, 0, "a committed batch clears the retry state");
    later_document_is_searchable(&pool, &handler).await;
}

/// Texts a tokenizer and a text index may choke on, from a few kinds of material.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        // Control characters (NUL included: the command path refuses those).
        proptest::collection::vec(proptest::char::range('\u{0}', '\u{1f}'), 1..64)
            .prop_map(|v| v.into_iter().collect::<String>()),
        // One character repeated into a giant "word".
        (any::<char>(), 1usize..30_000).prop_map(|(c, n)| c.to_string().repeat(n)),
        // Anything at all.
        any::<String>(),
        // Mixed scripts without separators.
        "[a-zA-Z0-9\u{4e00}-\u{4e50}\u{0600}-\u{0620}\u{0900}-\u{0920}😀-😏\u{301}]{1,2000}",
    ];
    proptest::collection::vec(piece, 1..6).prop_map(|pieces| pieces.concat())
}

#[test]
fn arbitrary_texts_each_project_or_park_and_never_stall_later_documents() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (pool, handler) = runtime.block_on(async {
        let (pool, _) = common::fresh_database().await;
        let handler = CommandHandler::new(EventStore::new(pool.clone()));
        (pool, handler)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    });
    let ids = std::cell::RefCell::new(Vec::new());
    let tried = std::cell::Cell::new(0);
    runner
        .run(&hostile_text(), |text| {
            let id = format!("h{}", tried.get());
            tried.set(tried.get() + 1);
            if runtime.block_on(add(&handler, "hostile", &id, &text)) {
                ids.borrow_mut().push(id);
            }
            Ok(())
        })
        .unwrap();
    let ids = ids.into_inner();
    runtime.block_on(async {
        project_all(&pool).await;
        projected_or_parked(&pool, &ids).await;
        later_document_is_searchable(&pool, &handler).await;
    });
}

/// A failure a retry may cure (here a serialization failure the database keeps raising) is retried, not
/// parked, and the retrying is visible: `recall status`'s report and the projector's own state say how
/// many attempts failed at which position since when, and both clear once a batch commits.
#[tokio::test(flavor = "multi_thread")]
async fn a_retrying_projector_says_so_and_recovers() {
    let (pool, _) = common::fresh_database().await;
    let handler = CommandHandler::new(EventStore::new(pool.clone()));
    sqlx::raw_sql(
        "CREATE FUNCTION contend() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001';
         END $$;
         CREATE TRIGGER contend BEFORE INSERT ON chunks FOR EACH ROW EXECUTE FUNCTION contend();",
    )
    .execute(&pool)
    .await
    .unwrap();
    assert!(add(&handler, "plain", "doc", "The lighthouse keeper polished the lantern.").await);
    let projector = Projector::new(
        &Databases::one(pool.clone()),
        common::model_backend(),
        ProjectorOptions::default(),
    );
    let stats = projector.stats();
    let running = projector.spawn(Target::Active);
    let report = loop {
        let report = read_model::status(&Databases::one(pool.clone())).await.unwrap();
        if report.active().is_some_and(|p| p.retry_attempts >= 3) {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let active = report.active().unwrap();
    assert_eq!(active.checkpoint, 0);
    assert!(active.retrying_since.is_some());
    assert!(
        active
            .last_error
            .as_deref()
            .unwrap()
            .contains("could not serialize access"),
        "{active:?}"
    );
    assert!(report.to_prometheus().contains("recall_projection_retry_attempts{"));
    let retrying = stats.retrying().expect("the projector's own state says it retries");
    assert!(retrying.attempts >= 3);
    assert_eq!(retrying.position, 0);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_failures")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "a transient failure is not parked");

    sqlx::raw_sql("DROP TRIGGER contend ON chunks")
        .execute(&pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = read_model::status(&Databases::one(pool.clone())).await.unwrap();
        let active = report.active().unwrap();
        if active.checkpoint == report.head {
            assert_eq!(active.retry_attempts, 0);
            assert!(active.retrying_since.is_none() && active.last_error.is_none());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the projector did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stats.retrying().is_none());
    running.stop().await.unwrap();
}
