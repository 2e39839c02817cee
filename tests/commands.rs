//! The write path end to end: commands decided by the aggregate and appended to a real log. Every
//! rejection leaves the log exactly as it was.

mod common;

use recall::commands::{CommandContext, CommandError, CommandHandler, CommandOutcome};
use recall::domain::{
    DocumentCommand, DocumentContent, DocumentEvent, DocumentId, DocumentKey, DomainError, Limits, Metadata, Scope,
    Text, Title,
};
use recall::event_store::{EventStore, EventStoreError};

fn key(scope: &str, id: &str) -> DocumentKey {
    DocumentKey::new(Scope::parse(scope).unwrap(), DocumentId::parse(id).unwrap())
}

fn content(text: &str) -> DocumentContent {
    DocumentContent {
        title: Title::parse("A title").unwrap(),
        text: Text::parse(text.into(), &Limits::default()).unwrap(),
        metadata: Metadata::parse(serde_json::json!({"source": "test"})).unwrap(),
        origin: None,
    }
}

async fn handler() -> CommandHandler {
    let (pool, _) = common::fresh_database().await;
    CommandHandler::new(EventStore::new(pool))
}

fn add(text: &str) -> DocumentCommand {
    DocumentCommand::Add { content: content(text) }
}

#[tokio::test]
async fn add_update_remove_produce_one_event_each() {
    let h = handler().await;
    let ctx = CommandContext {
        actor: Some("agent-7".into()),
        ..Default::default()
    };
    let k = key("default", "notes/a.md");
    assert_eq!(
        h.execute(&k, add("first"), &ctx).await.unwrap(),
        CommandOutcome::Appended {
            version: 1,
            position: 1
        }
    );
    let update = DocumentCommand::Update {
        content: content("second"),
        expected_version: Some(1),
    };
    assert_eq!(
        h.execute(&k, update, &ctx).await.unwrap(),
        CommandOutcome::Appended {
            version: 2,
            position: 2
        }
    );
    let remove = DocumentCommand::Remove { expected_version: None };
    assert_eq!(
        h.execute(&k, remove, &ctx).await.unwrap(),
        CommandOutcome::Appended {
            version: 3,
            position: 3
        }
    );

    let events = h.store().read_stream(&k.stream_id(), 1).await.unwrap();
    let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["DocumentAdded", "DocumentUpdated", "DocumentRemoved"]);
    assert!(events
        .iter()
        .all(|e| e.actor.as_deref() == Some("agent-7") && e.schema_version == 1));
    let decoded = DocumentEvent::decode(&events[1].event_type, 1, &events[1].payload).unwrap();
    assert_eq!(decoded.content().unwrap().text.as_str(), "second");
}

#[tokio::test]
async fn the_same_id_lives_independently_in_two_scopes() {
    let h = handler().await;
    let ctx = CommandContext::default();
    h.execute(&key("team-a", "doc"), add("a"), &ctx).await.unwrap();
    let outcome = h.execute(&key("team-b", "doc"), add("b"), &ctx).await.unwrap();
    assert_eq!(
        outcome,
        CommandOutcome::Appended {
            version: 1,
            position: 2
        }
    );
}

/// Each invariant through the real store: a typed error, and the head does not move.
#[tokio::test]
async fn every_rejection_leaves_the_log_unchanged() {
    let h = handler().await;
    let ctx = CommandContext::default();
    let k = key("default", "doc");
    h.execute(&k, add("original"), &ctx).await.unwrap();
    let head = h.store().head().await.unwrap();

    let cases: Vec<(DocumentKey, DocumentCommand, fn(&DomainError) -> bool)> = vec![
        (k.clone(), add("different"), |e| {
            matches!(e, DomainError::AlreadyExists { version: 1, .. })
        }),
        (
            key("default", "missing"),
            DocumentCommand::Update {
                content: content("x"),
                expected_version: None,
            },
            |e| matches!(e, DomainError::NotFound { .. }),
        ),
        (
            key("default", "missing"),
            DocumentCommand::Remove { expected_version: None },
            |e| matches!(e, DomainError::NotFound { .. }),
        ),
        (
            k.clone(),
            DocumentCommand::Update {
                content: content("x"),
                expected_version: Some(7),
            },
            |e| {
                matches!(
                    e,
                    DomainError::VersionConflict {
                        expected: 7,
                        actual: 1,
                        ..
                    }
                )
            },
        ),
        (
            k.clone(),
            DocumentCommand::Remove {
                expected_version: Some(0),
            },
            |e| matches!(e, DomainError::VersionConflict { .. }),
        ),
    ];
    for (k, command, expected) in cases {
        match h.execute(&k, command, &ctx).await {
            Err(CommandError::Rejected(e)) => assert!(expected(&e), "unexpected error {e}"),
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(h.store().head().await.unwrap(), head);

    let unchanged = h
        .execute(
            &k,
            DocumentCommand::Update {
                content: content("original"),
                expected_version: Some(1),
            },
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(unchanged, CommandOutcome::Unchanged { version: 1 });
    assert_eq!(
        h.store().head().await.unwrap(),
        head,
        "an update that changes nothing appends nothing"
    );

    h.execute(
        &k,
        DocumentCommand::Remove {
            expected_version: Some(1),
        },
        &ctx,
    )
    .await
    .unwrap();
    let after_remove = h.store().head().await.unwrap();
    let err = h
        .execute(
            &k,
            DocumentCommand::Update {
                content: content("y"),
                expected_version: None,
            },
            &ctx,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("was removed at version 2"), "{err}");
    assert_eq!(h.store().head().await.unwrap(), after_remove);
}

#[tokio::test]
async fn a_bulk_batch_appends_the_valid_and_reports_the_rejected() {
    let h = handler().await;
    let ctx = CommandContext::default();
    h.execute(&key("default", "taken"), add("old"), &ctx).await.unwrap();
    let batch = vec![
        (key("default", "n1"), add("one")),
        (key("default", "taken"), add("new text")),
        (key("default", "n2"), add("two")),
        (
            key("default", "n1"),
            DocumentCommand::Update {
                content: content("one, revised"),
                expected_version: Some(1),
            },
        ),
        (key("default", "taken"), add("old")),
    ];
    let outcomes = h.execute_batch(batch, &ctx).await.unwrap();
    assert_eq!(
        outcomes[0].as_ref().unwrap(),
        &CommandOutcome::Appended {
            version: 1,
            position: 2
        }
    );
    assert!(matches!(
        outcomes[1],
        Err(CommandError::Rejected(DomainError::AlreadyExists { .. }))
    ));
    assert_eq!(
        outcomes[2].as_ref().unwrap(),
        &CommandOutcome::Appended {
            version: 1,
            position: 3
        }
    );
    assert_eq!(
        outcomes[3].as_ref().unwrap(),
        &CommandOutcome::Appended {
            version: 2,
            position: 4
        }
    );
    assert_eq!(outcomes[4].as_ref().unwrap(), &CommandOutcome::Unchanged { version: 1 });
    assert_eq!(h.store().head().await.unwrap(), 4);
}

#[tokio::test]
async fn concurrent_commands_on_one_document_serialise_cleanly() {
    let h = handler().await;
    let ctx = CommandContext::default();
    let k = key("default", "hot");
    h.execute(&k, add("v1"), &ctx).await.unwrap();
    // Eight writers update with the same expected version: one wins, the rest get a version conflict.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (h, k, ctx) = (h.clone(), k.clone(), ctx.clone());
            tokio::spawn(async move {
                h.execute(
                    &k,
                    DocumentCommand::Update {
                        content: content(&format!("v2-{i}")),
                        expected_version: Some(1),
                    },
                    &ctx,
                )
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(CommandError::Rejected(DomainError::VersionConflict {
                expected: 1, actual: 2, ..
            })) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(h.store().head().await.unwrap(), 2);
}

/// A command that waits on a lock longer than the server's `lock_timeout` (the server's request deadline)
/// is refused as retryable, 503 and not an internal error, and appends nothing; once the lock is free the
/// same command goes through. Likewise a statement cut off by `statement_timeout`, or failed to break a
/// deadlock.
#[tokio::test]
async fn a_command_cut_off_by_the_servers_timeouts_is_retryable_and_appends_nothing() {
    use axum::http::StatusCode;
    let (pool, options) = common::fresh_database().await;
    let impatient = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(options.options([("lock_timeout", "200"), ("statement_timeout", "2000")]))
        .await
        .unwrap();
    let h = CommandHandler::new(EventStore::new(impatient.clone()));
    // A transaction that has not ended (a client gone quiet mid-append) holds the log's head.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT position FROM log_head FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let k = key("default", "locked.md");
    let refused = h.execute(&k, add("behind a lock"), &CommandContext::default()).await;
    let Err(error) = refused else {
        panic!("appended past a held lock: {refused:?}")
    };
    assert!(
        matches!(error, CommandError::Store(EventStoreError::Unavailable(_))),
        "{error:?}"
    );
    let answer = recall::api::ApiError::from(error);
    assert_eq!(
        (answer.status, answer.code),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    holder.rollback().await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "a refused command left an event behind");

    assert_eq!(
        h.execute(&k, add("behind a lock"), &CommandContext::default())
            .await
            .unwrap(),
        CommandOutcome::Appended {
            version: 1,
            position: 1
        }
    );

    let cancelled = sqlx::query("SELECT pg_sleep(5)").execute(&impatient).await.unwrap_err();
    assert_retryable(&cancelled);

    // Two transactions that each wait for the other: the server breaks the deadlock by failing one.
    sqlx::raw_sql("CREATE TABLE pair (id int PRIMARY KEY); INSERT INTO pair VALUES (1), (2)")
        .execute(&pool)
        .await
        .unwrap();
    let (mut a, mut b) = (pool.begin().await.unwrap(), pool.begin().await.unwrap());
    let touch = |id: i32| sqlx::query("UPDATE pair SET id = id WHERE id = $1").bind(id);
    touch(1).execute(&mut *a).await.unwrap();
    touch(2).execute(&mut *b).await.unwrap();
    let (first, second) = tokio::join!(touch(2).execute(&mut *a), touch(1).execute(&mut *b));
    let deadlocked = first
        .err()
        .or(second.err())
        .expect("one of two deadlocked transactions fails");
    assert_retryable(&deadlocked);
}

/// The API answers `error` with a 503 the client may retry, not an internal error.
fn assert_retryable(error: &sqlx::Error) {
    let answer = recall::api::ApiError::database(error);
    assert_eq!(
        (answer.status, answer.code),
        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{error}"
    );
}

/// A connection handed back to the pool inside a transaction that sqlx does not know of (a BEGIN dropped
/// while in flight, by a request's deadline or a client going away) is closed, not handed to the next
/// user: a command there would run inside a search's read-only snapshot and fail. A clean one is reused.
#[tokio::test]
async fn a_connection_handed_back_inside_a_transaction_is_not_handed_out_again() {
    let (_, options) = common::fresh_database().await;
    let pool = recall::postgres::open_with(options, 1).await.unwrap();
    // A connection handed back outside a transaction is handed out again, every time.
    let mut backends = std::collections::BTreeSet::new();
    for _ in 0..50 {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
        backends.insert(pid);
    }
    assert_eq!(backends.len(), 1, "clean connections were closed: {backends:?}");
    let mut conn = pool.acquire().await.unwrap();
    sqlx::raw_sql("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    let h = CommandHandler::new(EventStore::new(pool));
    let k = key("default", "after-a-cancelled-begin.md");
    assert_eq!(
        h.execute(&k, add("written after a cancelled BEGIN"), &CommandContext::default())
            .await
            .unwrap(),
        CommandOutcome::Appended {
            version: 1,
            position: 1
        }
    );
}
