//! Dense search over the projected read model with the real model: the right document first, scope
//! isolation, metadata filters, and as-of receipts that replay an old answer after updates and removals.

mod common;

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::search::{search, SearchError, SearchRequest};

fn key(scope: &str, id: &str) -> DocumentKey {
    DocumentKey::new(Scope::parse(scope).unwrap(), DocumentId::parse(id).unwrap())
}

fn content(title: &str, text: &str, topic: &str) -> DocumentContent {
    DocumentContent {
        title: Title::parse(title).unwrap(),
        text: Text::parse(text.into(), &Limits::default()).unwrap(),
        metadata: Metadata::parse(serde_json::json!({ "topic": topic })).unwrap(),
    }
}

fn request(k: usize) -> SearchRequest {
    SearchRequest {
        k,
        scope: None,
        filter: None,
        as_of: None,
    }
}

fn embed(q: &str) -> Vec<f32> {
    common::model_backend().embedder().encode(&[q]).unwrap().remove(0)
}

#[tokio::test]
async fn search_finds_the_right_document_respects_scopes_and_replays_as_of_receipts() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
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
    let p = Projector::new(store.clone(), common::model_backend(), ProjectorOptions::default());
    p.run_until_caught_up(Target::Active).await.unwrap();

    let q = embed("how do I sort a list in python");
    let live = search(&pool, &q, &request(3)).await.unwrap();
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
        &q,
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
        &q,
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
        &q,
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

    let now = search(&pool, &q, &request(3)).await.unwrap();
    assert_eq!(now.position, 6);
    assert!(
        now.results.iter().all(|r| r.document_id != "http"),
        "removed documents are gone from live search"
    );
    assert!(now.results.iter().all(|r| !r.text.contains("sorted()")));

    let then = search(
        &pool,
        &q,
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
        search(&pool, &q, &request(0)).await,
        Err(SearchError::BadK { .. })
    ));
    assert!(matches!(
        search(&pool, &q, &request(101)).await,
        Err(SearchError::BadK { .. })
    ));
    assert!(matches!(
        search(
            &pool,
            &q,
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
            &q,
            &SearchRequest {
                as_of: Some(-1),
                ..request(3)
            }
        )
        .await,
        Err(SearchError::BadAsOf(-1))
    ));
}

#[tokio::test]
async fn the_search_command_answers_beir_style_query_files_one_line_each() {
    let (pool, options) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
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
    Projector::new(store, common::model_backend(), ProjectorOptions::default())
        .run_until_caught_up(Target::Active)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let queries = dir.path().join("queries.jsonl");
    std::fs::write(&queries, "{\"_id\": \"q1\", \"text\": \"what produces energy in cells\"}\n{\"_id\": \"q2\", \"text\": \"memory safety without garbage collection\"}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recall"))
        .args(["search", "--queries", queries.to_str().unwrap(), "-k", "2"])
        .env("DATABASE_URL", common::url_of(&options))
        .output()
        .unwrap();
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
