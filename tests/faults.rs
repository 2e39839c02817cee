//! Faults: PostgreSQL SIGKILLed under HTTP ingest, and `recall serve` SIGKILLed under load. Every command
//! acknowledged with a 2xx is in the log afterwards, the outage answers a clear 503 with Retry-After
//! (never a hang or a 500), and everything recovers on its own.

mod common;

use recall::postgres::Databases;
use recall::read_model;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use recall::api::{self, ApiConfig, AppState};
use recall::event_store::{verify_chain, EventStore};
use recall::projector::{Projector, ProjectorOptions, Target};

fn text(id: &str) -> String {
    format!("Document {id}, written around an outage.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_through_a_postgres_kill_loses_nothing_acknowledged_and_answers_503_meanwhile() {
    let (_home, server) = common::private_server("recall-http-fault-");
    let pool = common::start_with_database(&server).await;
    let store = EventStore::new(pool.clone());
    let router = api::router(AppState::new(
        &Databases::one(store.pool().clone()),
        ApiConfig::default(),
    ));
    let worker = Projector::new(
        &Databases::one(store.pool().clone()),
        common::model_backend(),
        ProjectorOptions {
            poll_interval: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .spawn(Target::Active);

    let mut acknowledged = BTreeSet::new();
    for i in 0..15 {
        let (status, _, body) =
            common::post_document(&router, &format!("before-{i}"), &text(&format!("before-{i}"))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        acknowledged.insert(format!("before-{i}"));
    }

    let pid = server.status().pid.unwrap();
    // SAFETY: signalling the embedded server's own postmaster.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let started = Instant::now();
        let (status, retry_after, body) =
            common::post_document(&router, &format!("during-{i}"), &text(&format!("during-{i}"))).await;
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "a command hung for {:?}",
            started.elapsed()
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(retry_after.as_deref(), Some("1"));
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.contains("sqlx") && !message.contains("os error"),
            "internals leaked: {message}"
        );
    }

    common::ensure_running(&server).await;
    // Clients retry on 503 as told; stale connections are replaced and commands go through again.
    for i in 0..15 {
        let id = format!("after-{i}");
        common::post_until_created(&router, &id, &text(&id), 30).await;
        acknowledged.insert(id);
    }

    common::assert_nothing_lost(&store, &acknowledged).await;
    assert!(verify_chain(&store).await.unwrap().is_ok());
    // The projector was never restarted by hand.
    let head = store.head().await.unwrap();
    read_model::wait_for(&pool, head, Duration::from_secs(120))
        .await
        .unwrap();
    worker.stop().await.unwrap();
    server.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_sigkilled_under_load_and_restarted_loses_no_acknowledged_document_and_duplicates_no_chunk() {
    let (pool, options) = common::fresh_database().await;
    let url = common::url_of(&options);
    let (mut child, base) = common::spawn_serve(&url, None);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (base, acknowledged, stop) = (base.clone(), acknowledged.clone(), stop.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("c{c}-{i}");
                    let sent = ureq::post(&format!("{base}/v1/documents"))
                        .timeout(Duration::from_secs(10))
                        .send_json(json!({"id": id, "text": format!("Load document {id} for the kill test.")}));
                    match sent {
                        Ok(r) if r.status() == 201 => {
                            acknowledged.lock().unwrap().insert(id);
                        }
                        Ok(r) => panic!("unexpected {}", r.status()),
                        // The server died mid-request: not acknowledged, so the client cannot count it.
                        Err(ureq::Error::Transport(_)) => break,
                        Err(ureq::Error::Status(503, _)) => {}
                        Err(e) => panic!("{id}: {e}"),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 20,
        "too little load before the kill: {}",
        acknowledged.len()
    );

    let (mut child, base) = common::spawn_serve(&url, None);
    let store = EventStore::new(pool.clone());
    let logged = common::assert_nothing_lost(&store, &acknowledged).await;
    let head = store.head().await.unwrap();
    let base2 = base.clone();
    let found = tokio::task::spawn_blocking(move || {
        ureq::post(&format!("{base2}/v1/search"))
            .send_json(json!({"query": "load document", "k": 5, "wait_for": head}))
            .map(|r| r.into_json::<Value>().unwrap())
    })
    .await
    .unwrap()
    .expect("searchable after the restart");
    assert!(found["position"].as_i64().unwrap() >= head);
    let duplicates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM chunks WHERE valid_to IS NULL
         GROUP BY generation, scope, document_id, chunk_index HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(duplicates, 0);
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE NOT removed")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        projected as usize,
        logged.len(),
        "every logged document is in the read model once"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
