//! The projector and the command path survive PostgreSQL going away and coming back: on a server of
//! their own, SIGKILLed mid-stream and restarted, everything committed is projected in the end.

mod common;

use recall::postgres::Databases;
use recall::read_model;
use std::time::Duration;

use recall::commands::{CommandContext, CommandHandler};
use recall::domain::{DocumentCommand, DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};

fn add(i: usize) -> (DocumentKey, DocumentCommand) {
    let content = DocumentContent {
        title: Title::parse("Reconnect").unwrap(),
        text: Text::parse(format!("Document {i} before and after the outage."), &Limits::default()).unwrap(),
        metadata: Metadata::default(),
        origin: None,
    };
    (
        DocumentKey::new(Scope::default(), DocumentId::parse(&format!("r{i}")).unwrap()),
        DocumentCommand::Add { content },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_recovers_on_its_own_after_the_database_restarts() {
    let (_home, server) = common::private_server("recall-reconnect-");
    let pool = common::start_with_database(&server).await;
    let store = EventStore::new(pool.clone());
    let handler = CommandHandler::new(store.clone());
    let ctx = CommandContext::default();

    let p = Projector::new(
        &Databases::one(store.pool().clone()),
        common::model_backend(),
        ProjectorOptions {
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    );
    let worker = p.spawn(Target::Active);
    for i in 0..20 {
        let (k, c) = add(i);
        handler.execute(&k, c, &ctx).await.unwrap();
    }
    read_model::wait_for(&pool, 20, Duration::from_secs(60)).await.unwrap();

    // The server dies hard and comes back.
    let pid = server.status().pid.unwrap();
    // SAFETY: signalling the embedded server's own postmaster.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (k, c) = add(100);
    assert!(
        handler.execute(&k, c, &ctx).await.is_err(),
        "commands fail while the database is down"
    );
    common::ensure_running(&server).await;

    // Commands work again once stale connections have been replaced; then the projector catches up by itself.
    let mut appended = 20;
    for i in 20..40 {
        let (k, c) = add(i);
        for attempt in 0.. {
            match handler.execute(&k, c.clone(), &ctx).await {
                Ok(_) => break,
                Err(e) if attempt < 20 => {
                    tracing::info!(%e, "retrying after the restart");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("commands did not recover: {e}"),
            }
        }
        appended += 1;
    }
    let head = store.head().await.unwrap();
    assert_eq!(head, appended);
    read_model::wait_for(&pool, head, Duration::from_secs(120))
        .await
        .unwrap();
    let documents: i64 = sqlx::query_scalar("SELECT count(*) FROM documents")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(documents, 40);
    worker.stop().await.unwrap();
    pool.close().await;
    server.stop().unwrap();
}
