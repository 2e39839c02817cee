//! No client can exhaust the database pool and no request waits without a deadline: hundreds of searches
//! waiting for a far position hold no connection while commands and searches go on, and a frozen
//! PostgreSQL (SIGSTOP, not killed) gets every request answered within the deadline, losing nothing.

mod common;

use recall::postgres::Databases;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use recall::api::{self, ApiConfig, AppState};
use recall::event_store::{verify_chain, EventStore};
use recall::projector::{Projector, ProjectorOptions, Target};

async fn call(router: &axum::Router, method: &str, uri: &str, body: Value) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        started.elapsed(),
    )
}

/// A search waiting for `position`, on a task of its own.
fn wait_for(router: &axum::Router, position: i64) -> tokio::task::JoinHandle<(StatusCode, Value, Duration)> {
    let router = router.clone();
    let body = json!({"query": "lantern", "mode": "lexical", "wait_for": position});
    tokio::spawn(async move { call(&router, "POST", "/v1/search", body).await })
}

/// Twenty commands and twenty lexical searches in turn, each answered as usual: their latencies.
async fn commands_and_searches(router: &axum::Router, tag: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (mut commands, mut searches) = (Vec::new(), Vec::new());
    for i in 0..20 {
        let document = json!({"id": format!("{tag}-{i}"), "text": format!("{tag} lantern")});
        let (s, body, t) = call(router, "POST", "/v1/documents", document).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        commands.push(t);
        let (s, body, t) = call(
            router,
            "POST",
            "/v1/search",
            json!({"query": "lantern", "mode": "lexical"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        searches.push(t);
    }
    (commands, searches)
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_waiters_hold_no_connection_and_commands_and_searches_go_on() {
    let (pool, options) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    let config = ApiConfig {
        max_waiters: 201,
        wait_timeout: Duration::from_secs(4),
        ..ApiConfig::default()
    };
    let router = api::router(AppState::new(&Databases::one(store.pool().clone()), config));
    let projector = Projector::new(
        &Databases::one(store.pool().clone()),
        common::model_backend(),
        ProjectorOptions::default(),
    );
    let (status, _, _) = call(
        &router,
        "POST",
        "/v1/documents",
        json!({"id": "seed", "text": "seed lantern"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    projector.run_until_caught_up(Target::Active).await.unwrap();

    // Idle latency of a command and a lexical search, for the record.
    let idle = commands_and_searches(&router, "idle").await;

    // One search waits for the next position, which the projector will reach...
    let reachable = store.head().await.unwrap() + 1;
    let near = wait_for(&router, reachable);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and 210 for a position the log will never reach: 200 of them wait, 10 are refused at once.
    let far = 1_000_000_000_000i64;
    let waiters: Vec<_> = (0..210).map(|_| wait_for(&router, far)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let database = options.get_database().unwrap().to_owned();
    let connections: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .fetch_one(&pool)
        .await
        .unwrap();
    // Had each waiter a connection, the pool (40) would be exhausted.
    assert!(connections < 10, "{connections} connections while 200 searches wait");

    // Meanwhile commands and searches answer as usual.
    let loaded = commands_and_searches(&router, "busy").await;
    projector.run_until_caught_up(Target::Active).await.unwrap();
    let (s, body, _) = near.await.unwrap();
    assert_eq!(s, StatusCode::OK, "the projector's NOTIFY wakes a waiter: {body}");
    eprintln!(
        "p99 idle / with 200 waiters: command {:?} / {:?}, search {:?} / {:?}",
        p99(idle.0),
        p99(loaded.0),
        p99(idle.1),
        p99(loaded.1)
    );

    let mut statuses = std::collections::BTreeMap::new();
    for waiter in waiters {
        let (status, body, _) = waiter.await.unwrap();
        let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
        *statuses.entry((status.as_u16(), code)).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        [
            ((429, "too_many_waiters".to_owned()), 10),
            ((504, "wait_timeout".to_owned()), 200)
        ]
        .into(),
        "beyond max_waiters a clear refusal, within it a 504 after the wait"
    );
}

fn signal_server(pid: u32, signal: i32) {
    // The postmaster and every backend (its children, from /proc): a frozen server, not a dead one.
    let children = std::fs::read_dir("/proc").unwrap().filter_map(|entry| {
        let stat = std::fs::read_to_string(entry.ok()?.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: the command may hold spaces, so read after its closing parenthesis.
        let mut after = stat.rsplit_once(')')?.1.split_whitespace();
        let ppid: u32 = after.nth(1)?.parse().ok()?;
        (ppid == pid)
            .then(|| stat.split_whitespace().next()?.parse::<i32>().ok())
            .flatten()
    });
    for child in children {
        // SAFETY: signalling the test's own embedded server's processes.
        unsafe { libc::kill(child, signal) };
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[test]
fn a_frozen_database_gets_every_request_answered_within_the_deadline_and_loses_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_home, server) = common::private_server("recall-freeze-");
    runtime.block_on(common::start_with_database(&server));
    let url = server.url("recall");
    let (mut serve, base) = common::spawn_serve_with(&url, None, &["--request-deadline", "2"]);
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
    let send = |path: &str, key: Option<&str>, body: Value| {
        let started = Instant::now();
        let mut request = agent.post(&format!("{base}{path}"));
        if let Some(key) = key {
            request = request.set("Idempotency-Key", key);
        }
        let (status, retry_after, body) = match request.send_json(body) {
            Ok(r) => (
                r.status(),
                r.header("retry-after").map(str::to_owned),
                r.into_json::<Value>().unwrap(),
            ),
            Err(ureq::Error::Status(s, r)) => (
                s,
                r.header("retry-after").map(str::to_owned),
                r.into_json::<Value>().unwrap(),
            ),
            Err(e) => panic!("{path}: {e}"),
        };
        (status, retry_after, body, started.elapsed())
    };
    let post = |id: &str, key: &str| {
        let document = json!({"id": id, "text": format!("Document {id}, written around a freeze.")});
        send("/v1/documents", Some(key), document)
    };
    let search = |wait_for: Option<i64>| {
        send(
            "/v1/search",
            None,
            json!({"query": "freeze", "mode": "lexical", "wait_for": wait_for}),
        )
    };
    let mut acknowledged = BTreeSet::new();
    for i in 0..5 {
        let id = format!("before-{i}");
        let (status, _, body, _) = post(&id, &uuid::Uuid::new_v4().to_string());
        assert_eq!(status, 201, "{body}");
        acknowledged.insert(id);
    }
    let (status, _, body, _) = search(Some(5));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 5, "{body}");

    let pid = server.status().pid.unwrap();
    signal_server(pid, libc::SIGSTOP);
    let mut unknown = Vec::new();
    for i in 0..6 {
        let (id, key) = (format!("frozen-{i}"), uuid::Uuid::new_v4().to_string());
        let (status, retry_after, body, took) = post(&id, &key);
        assert!(
            took < Duration::from_millis(3500),
            "{id} answered after {took:?}, past the 2 s deadline"
        );
        assert_eq!(status, 503, "{id}: {body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{id}");
        let code = body["error"]["code"].as_str().unwrap();
        assert!(["outcome_unknown", "unavailable"].contains(&code), "{id}: {body}");
        unknown.push((id, key));
        // A search, with no position to wait for, has the same deadline.
        let (status, retry_after, body, took) = search(None);
        assert!(took < Duration::from_millis(3500), "a search answered after {took:?}");
        assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    }
    signal_server(pid, libc::SIGCONT);

    // Retrying with the same Idempotency-Key is safe whether or not the first attempt was appended.
    for (id, key) in &unknown {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, body, _) = post(id, key);
            match status {
                200 | 201 => break,
                503 if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                _ => panic!("{id}: {status} {body}"),
            }
        }
        acknowledged.insert(id.clone());
    }
    serve.kill().unwrap();
    serve.wait().unwrap();

    runtime.block_on(async {
        let pool = recall::postgres::open_with(server.connect_options("recall"), 2)
            .await
            .unwrap();
        let store = EventStore::new(pool.clone());
        let logged = common::assert_nothing_lost(&store, &acknowledged).await;
        assert_eq!(logged, acknowledged);
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(events as usize, acknowledged.len(), "no command appended twice");
        assert!(verify_chain(&store).await.unwrap().is_ok());
    });
    let _ = server.stop();
}
