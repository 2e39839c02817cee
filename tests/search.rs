//! Dense search over the projected read model with the real model: the right document first, scope
//! isolation, metadata filters, and as-of receipts that replay an old answer after updates and removals.

mod common;

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::search::{search, Query, SearchError, SearchMode, SearchRequest};

fn key(scope: &str, id: &str) -> DocumentKey {
    DocumentKey::new(Scope::parse(scope).unwrap(), DocumentId::parse(id).unwrap())
}

fn content(title: &str, text: &str, topic: &str) -> DocumentContent {
    DocumentContent {
        title: Title::parse(title).unwrap(),
        text: Text::parse(text.into(), &Limits::default()).unwrap(),
        metadata: Metadata::parse(serde_json::json!({ "topic": topic })).unwrap(),
        origin: None,
    }
}

fn request(k: usize) -> SearchRequest {
    SearchRequest {
        k,
        mode: SearchMode::Dense,
        ..SearchRequest::default()
    }
}

/// A dense query: its vector alone.
fn query(vector: &[f32]) -> Query<'_> {
    Query {
        text: "",
        vector: Some(vector),
    }
}

fn embed(q: &str) -> Vec<f32> {
    common::model_backend().embedder().encode(&[q]).unwrap().remove(0)
}

async fn search_finds_the_right_document_respects_scopes_and_replays_as_of_receipts(layout: common::Layout) {
    let (db, _, _) = common::fresh_databases(layout).await;
    let pool = db.read_model().clone();
    let store = EventStore::new(db.log().clone());
    let h = CommandHandler::new(store.clone());
    let ctx = CommandContext::default();
    let docs = [
        (
            "kb",
            "sort",
            "Sorting lists",
            "Use sorted() to get a new sorted list, or list.sort() to sort in place.",
            "python",
        ),
        (
            "kb",
            "http",
            "HTTP caching",
            "Cache-Control headers tell browsers how long a response may be reused.",
            "web",
        ),
        (
            "kb",
            "bread",
            "Sourdough",
            "A sourdough starter needs flour and water fed daily to stay active.",
            "cooking",
        ),
        (
            "other",
            "sort",
            "Sorting in Rust",
            "Vec::sort_unstable sorts a vector in place without allocating.",
            "rust",
        ),
    ];
    for (scope, id, title, text, topic) in docs {
        h.execute(
            &key(scope, id),
            DocumentCommand::Add {
                content: content(title, text, topic),
            },
            &ctx,
        )
        .await
        .unwrap();
    }
    let p = Projector::new(&db, common::model_backend(), ProjectorOptions::default());
    p.run_until_caught_up(Target::Active).await.unwrap();

    let q = embed("how do I sort a list in python");
    let live = search(&pool, query(&q), &request(3)).await.unwrap();
    assert_eq!(live.position, 4);
    assert_eq!(live.results.len(), 3);
    assert_eq!(
        (live.results[0].scope.as_str(), live.results[0].document_id.as_str()),
        ("kb", "sort")
    );
    assert!(live.results.windows(2).all(|w| w[0].score >= w[1].score));
    assert_eq!(live.results[0].metadata["topic"], "python");

    // Scope isolation: the other scope's "sort" never shows up in "kb", and vice versa.
    let kb = search(
        &pool,
        query(&q),
        &SearchRequest {
            scope: Some(Scope::parse("kb").unwrap()),
            ..request(10)
        },
    )
    .await
    .unwrap();
    assert_eq!(kb.results.len(), 3);
    assert!(kb.results.iter().all(|r| r.scope == "kb"));
    let other = search(
        &pool,
        query(&q),
        &SearchRequest {
            scope: Some(Scope::parse("other").unwrap()),
            ..request(10)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        other.results.iter().map(|r| r.document_id.as_str()).collect::<Vec<_>>(),
        ["sort"]
    );

    let filtered = search(
        &pool,
        query(&q),
        &SearchRequest {
            filter: Some(serde_json::json!({"topic": "cooking"})),
            ..request(10)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        filtered
            .results
            .iter()
            .map(|r| r.document_id.as_str())
            .collect::<Vec<_>>(),
        ["bread"]
    );

    // Change the knowledge base, then replay the old receipt.
    let receipt = live.position;
    h.execute(
        &key("kb", "sort"),
        DocumentCommand::Update {
            content: content("Sorting lists", "Sorting is now explained elsewhere.", "python"),
            expected_version: None,
        },
        &ctx,
    )
    .await
    .unwrap();
    h.execute(
        &key("kb", "http"),
        DocumentCommand::Remove { expected_version: None },
        &ctx,
    )
    .await
    .unwrap();
    p.run_until_caught_up(Target::Active).await.unwrap();

    let now = search(&pool, query(&q), &request(3)).await.unwrap();
    assert_eq!(now.position, 6);
    assert!(
        now.results.iter().all(|r| r.document_id != "http"),
        "removed documents are gone from live search"
    );
    assert!(now.results.iter().all(|r| !r.text.contains("sorted()")));

    let then = search(
        &pool,
        query(&q),
        &SearchRequest {
            as_of: Some(receipt),
            ..request(3)
        },
    )
    .await
    .unwrap();
    assert_eq!(then.position, receipt);
    let strip = |r: &recall::search::SearchHit| {
        (
            r.scope.clone(),
            r.document_id.clone(),
            r.chunk_index,
            r.text.clone(),
            r.title.clone(),
        )
    };
    assert_eq!(
        then.results.iter().map(strip).collect::<Vec<_>>(),
        live.results.iter().map(strip).collect::<Vec<_>>()
    );
    for (a, b) in then.results.iter().zip(&live.results) {
        assert!((a.score - b.score).abs() < 1e-6);
        assert_eq!(a.metadata, b.metadata);
    }

    assert!(matches!(
        search(&pool, query(&q), &request(0)).await,
        Err(SearchError::BadK { .. })
    ));
    assert!(matches!(
        search(&pool, query(&q), &request(101)).await,
        Err(SearchError::BadK { .. })
    ));
    assert!(matches!(
        search(
            &pool,
            query(&q),
            &SearchRequest {
                as_of: Some(99),
                ..request(3)
            }
        )
        .await,
        Err(SearchError::AsOfAhead { .. })
    ));
    assert!(matches!(
        search(
            &pool,
            query(&q),
            &SearchRequest {
                as_of: Some(-1),
                ..request(3)
            }
        )
        .await,
        Err(SearchError::BadAsOf(-1))
    ));
}

async fn the_search_command_answers_beir_style_query_files_one_line_each(layout: common::Layout) {
    let (db, options, read_options) = common::fresh_databases(layout).await;
    let store = EventStore::new(db.log().clone());
    let h = CommandHandler::new(store.clone());
    for (id, text) in [
        ("a", "The mitochondria is the powerhouse of the cell."),
        ("b", "Rust has ownership and borrowing."),
    ] {
        h.execute(
            &key("default", id),
            DocumentCommand::Add {
                content: content("", text, "x"),
            },
            &CommandContext::default(),
        )
        .await
        .unwrap();
    }
    Projector::new(&db, common::model_backend(), ProjectorOptions::default())
        .run_until_caught_up(Target::Active)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.jsonl");
    std::fs::write(&queries, "{\"_id\": \"q1\", \"text\": \"what produces energy in cells\"}\n{\"_id\": \"q2\", \"text\": \"memory safety without garbage collection\"}\n").unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_recall"));
    command
        .args(["search", "--queries", queries.to_str().unwrap(), "-k", "2"])
        .env("DATABASE_URL", common::url_of(&options));
    if let Some(read) = &read_options {
        command.env("RECALL_READ_MODEL_URL", common::url_of(read));
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0]["query_id"].as_str(),
            lines[0]["results"][0]["document_id"].as_str()
        ),
        (Some("q1"), Some("a"))
    );
    assert_eq!(
        (
            lines[1]["query_id"].as_str(),
            lines[1]["results"][0]["document_id"].as_str()
        ),
        (Some("q2"), Some("b"))
    );
    assert_eq!(lines[0]["position"], 2);
}

fn lexical(k: usize) -> SearchRequest {
    SearchRequest {
        k,
        mode: SearchMode::Lexical,
        ..SearchRequest::default()
    }
}

fn words(text: &str) -> Query<'_> {
    Query { text, vector: None }
}

async fn lexical_and_hybrid_search_rank_by_bm25_fuse_and_keep_scopes_filters_and_receipts(layout: common::Layout) {
    let (db, _, _) = common::fresh_databases(layout).await;
    let pool = db.read_model().clone();
    let store = EventStore::new(db.log().clone());
    let h = CommandHandler::new(store.clone());
    let ctx = CommandContext::default();
    let docs = [
        (
            "kb",
            "err",
            "Deploy failures",
            "The deploy fails with error ERR_4471 when the certificate chain is incomplete.",
            "ops",
        ),
        (
            "kb",
            "cert",
            "TLS certificates",
            "Renew TLS certificates before they expire to keep HTTPS working for every visitor of the site.",
            "ops",
        ),
        (
            "kb",
            "cats",
            "Pets",
            "Cats sleep for most of the day and hunt at dawn and dusk, and they like warm windows in the afternoon.",
            "pets",
        ),
        (
            "kb",
            "cats2",
            "Pets",
            "Cats, cats, cats: a guide for owners of cats.",
            "pets",
        ),
        (
            "other",
            "err",
            "Other deploy",
            "ERR_4471 also appears in the other tenant's logs.",
            "ops",
        ),
    ];
    for (scope, id, title, text, topic) in docs {
        h.execute(
            &key(scope, id),
            DocumentCommand::Add {
                content: content(title, text, topic),
            },
            &ctx,
        )
        .await
        .unwrap();
    }
    let p = Projector::new(&db, common::model_backend(), ProjectorOptions::default());
    p.run_until_caught_up(Target::Active).await.unwrap();
    let kb = |r: SearchRequest| SearchRequest {
        scope: Some(Scope::parse("kb").unwrap()),
        ..r
    };
    let ids = |r: &recall::search::SearchResponse| {
        r.results
            .iter()
            .map(|h| format!("{}/{}", h.scope, h.document_id))
            .collect::<Vec<_>>()
    };

    // Only chunks holding a query word come back; the other scope's copy never does.
    let code = search(&pool, words("ERR_4471"), &kb(lexical(10))).await.unwrap();
    assert_eq!(ids(&code), ["kb/err"]);
    let everywhere = search(&pool, words("ERR_4471"), &lexical(10)).await.unwrap();
    assert_eq!(everywhere.results.len(), 2, "{:?}", ids(&everywhere));
    // Term frequency counts (cats2 says it four times), stemming matches "cat" to "cats".
    let cats = search(&pool, words("cat"), &kb(lexical(10))).await.unwrap();
    assert_eq!(ids(&cats), ["kb/cats2", "kb/cats"]);
    assert!(cats.results[0].score > cats.results[1].score);
    // A rare word outweighs a common one: "certificate" is in two documents, "renew" in one.
    let rare = search(&pool, words("renew certificate"), &kb(lexical(10)))
        .await
        .unwrap();
    assert_eq!(ids(&rare)[0], "kb/cert");
    // Quotes, backslashes and tsquery operators in the question are words, not syntax.
    for hostile in [
        "O'Neil's \\server\\share",
        "cats & !dogs | (x:*)",
        "'; DROP TABLE chunks; --",
        "\\'\\",
    ] {
        search(&pool, words(hostile), &lexical(10))
            .await
            .unwrap_or_else(|e| panic!("{hostile:?}: {e}"));
    }
    // Stop words alone match nothing, without an error.
    assert!(search(&pool, words("the of and"), &lexical(10))
        .await
        .unwrap()
        .results
        .is_empty());
    // Filters apply.
    let filtered = search(
        &pool,
        words("cat certificate"),
        &SearchRequest {
            filter: Some(serde_json::json!({"topic": "ops"})),
            ..kb(lexical(10))
        },
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&filtered),
        ["kb/cert", "kb/err"],
        "no pets, and the title's mention counts too"
    );

    // Hybrid: the exact code and the meaning both count; dense needs the vector.
    let question = "why does the deploy fail with ERR_4471";
    let v = embed(question);
    let hybrid = search(
        &pool,
        Query {
            text: question,
            vector: Some(&v),
        },
        &kb(SearchRequest {
            mode: SearchMode::Hybrid,
            ..request(3)
        }),
    )
    .await
    .unwrap();
    assert_eq!(ids(&hybrid)[0], "kb/err");
    assert!(hybrid.results.len() <= 3);
    assert!(matches!(
        search(
            &pool,
            words(question),
            &SearchRequest {
                mode: SearchMode::Hybrid,
                ..request(3)
            }
        )
        .await,
        Err(SearchError::NoVector { .. })
    ));

    // An update removes the code; the old receipt still finds it, with the old text and score.
    let receipt = code.position;
    h.execute(
        &key("kb", "err"),
        DocumentCommand::Update {
            content: content("Deploy failures", "Deploys now succeed.", "ops"),
            expected_version: None,
        },
        &ctx,
    )
    .await
    .unwrap();
    p.run_until_caught_up(Target::Active).await.unwrap();
    assert!(search(&pool, words("ERR_4471"), &kb(lexical(10)))
        .await
        .unwrap()
        .results
        .is_empty());
    let replay = search(
        &pool,
        words("ERR_4471"),
        &kb(SearchRequest {
            as_of: Some(receipt),
            ..lexical(10)
        }),
    )
    .await
    .unwrap();
    assert_eq!(ids(&replay), ["kb/err"]);
    assert_eq!(replay.results[0].text, code.results[0].text);
    assert!((replay.results[0].score - code.results[0].score).abs() < 1e-9);
}

/// The answers of a search in `mode`, live and as of its receipt, as comparable tuples.
async fn live_and_replayed(
    pool: &sqlx::PgPool,
    text: &str,
    mode: SearchMode,
) -> (
    i64,
    Vec<(String, i32, String, String)>,
    Vec<(String, i32, String, String)>,
) {
    let vector = embed(text);
    let q = Query {
        text,
        vector: Some(&vector),
    };
    let live_request = SearchRequest {
        k: 20,
        mode,
        ..SearchRequest::default()
    };
    let live = search(pool, q, &live_request).await.unwrap();
    let replay_request = SearchRequest {
        as_of: Some(live.position),
        ..live_request
    };
    let replay = search(pool, q, &replay_request).await.unwrap();
    let rows = |r: &recall::search::SearchResponse| {
        r.results
            .iter()
            .map(|h| {
                (
                    h.document_id.clone(),
                    h.chunk_index,
                    format!("{:.6}", h.score),
                    h.title.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    (live.position, rows(&live), rows(&replay))
}

/// With shards at different checkpoints, a live search answers exactly as of the watermark: what the
/// shards ahead of it added since is left out, what they replaced since is still found, and BM25's
/// statistics are the watermark's, so the receipt replays the answer to the score.
async fn a_live_search_answers_as_of_the_watermark_while_shards_differ(layout: common::Layout) {
    let (db, _, _) = common::fresh_databases(layout).await;
    let pool = db.read_model().clone();
    let h = CommandHandler::new(EventStore::new(db.log().clone()));
    let ctx = CommandContext::default();
    let topics = [
        "sorting lists",
        "parsing dates",
        "hashing passwords",
        "retrying requests",
    ];
    let add_all = |round: usize| {
        (0..24)
            .map(|i| {
                let text = format!("Round {round}: notes {i} on {} and other things.", topics[i % 4]);
                let command = match round {
                    0 => DocumentCommand::Add {
                        content: content(&format!("Doc {i}"), &text, "t"),
                    },
                    _ => DocumentCommand::Update {
                        content: content(&format!("Doc {i} revised"), &text, "t"),
                        expected_version: None,
                    },
                };
                (key("kb", &format!("d{i}")), command)
            })
            .collect::<Vec<_>>()
    };
    for outcome in h.execute_batch(add_all(0), &ctx).await.unwrap() {
        outcome.unwrap();
    }
    let projector = Projector::new(&db, common::model_backend(), ProjectorOptions::default());
    projector.run_until_caught_up(Target::Active).await.unwrap();
    let before = recall::read_model::active(&pool).await.unwrap().unwrap().checkpoint;

    // Half the shards are held elsewhere (a worker that is slow), and the rest move on past updates
    // and removals.
    sqlx::query(
        "UPDATE projection_shards SET owner = gen_random_uuid(), lease_expires = now() + interval '1 hour'
         WHERE shard % 2 = 0",
    )
    .execute(&pool)
    .await
    .unwrap();
    for outcome in h.execute_batch(add_all(1), &ctx).await.unwrap() {
        outcome.unwrap();
    }
    for i in [1, 2, 3, 6] {
        h.execute(
            &key("kb", &format!("d{i}")),
            DocumentCommand::Remove { expected_version: None },
            &ctx,
        )
        .await
        .unwrap();
    }
    while projector.step(Target::Active).await.unwrap() > 0 {}
    let ahead: i64 = sqlx::query_scalar("SELECT max(checkpoint) FROM projection_shards")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ahead > before, "the free shards moved on");
    for mode in [SearchMode::Dense, SearchMode::Lexical, SearchMode::Hybrid] {
        let (position, live, replayed) = live_and_replayed(&pool, "notes on hashing passwords round", mode).await;
        assert_eq!(position, before, "the receipt is the watermark");
        assert_eq!(live, replayed, "{mode:?}");
        assert!(live.iter().all(|h| !h.3.contains("revised")), "{mode:?}: {live:?}");
        assert!(live.len() >= 6);
    }

    // The held shards are freed and catch up: the answers move to the head, and still replay.
    sqlx::query("UPDATE projection_shards SET owner = NULL, lease_expires = NULL")
        .execute(&pool)
        .await
        .unwrap();
    while projector.step(Target::Active).await.unwrap() > 0 {}
    for mode in [SearchMode::Dense, SearchMode::Lexical, SearchMode::Hybrid] {
        let (position, live, replayed) = live_and_replayed(&pool, "notes on hashing passwords round", mode).await;
        assert_eq!(position, ahead);
        assert_eq!(live, replayed, "{mode:?}");
        assert!(live.iter().all(|h| h.3.contains("revised")), "{mode:?}: {live:?}");
        assert!(!live.iter().any(|h| ["d1", "d2", "d3", "d6"].contains(&h.0.as_str())));
    }
}

in_both_layouts!(
    a_live_search_answers_as_of_the_watermark_while_shards_differ,
    search_finds_the_right_document_respects_scopes_and_replays_as_of_receipts,
    the_search_command_answers_beir_style_query_files_one_line_each,
    lexical_and_hybrid_search_rank_by_bm25_fuse_and_keep_scopes_filters_and_receipts,
);
