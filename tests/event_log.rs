//! The event store against a real PostgreSQL: expected versions, idempotent retries, gapless
//! commit-ordered positions under concurrency and rollbacks, the hash chain, NOTIFY.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rand::Rng;
use recall::event_store::{verify_chain, AppendRequest, EventStore, ExpectedVersion, NewEvent, NOTIFY_CHANNEL};
use uuid::Uuid;

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "TestHappened".into(),
        schema_version: 1,
        payload: format!(r#"{{"n": {n}, "note": "keep  spacing"}}"#),
        metadata: "{}".into(),
        causation_id: None,
        correlation_id: Some(Uuid::now_v7()),
        actor: Some("tester".into()),
    }
}

fn request(stream: &str, expected: ExpectedVersion, events: Vec<NewEvent>) -> AppendRequest {
    AppendRequest {
        stream_id: stream.into(),
        scope: "default".into(),
        expected,
        events,
    }
}

#[tokio::test]
async fn appends_and_reads_back_exactly_what_was_written() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool);
    let first = event(1);
    let appended = store
        .append(request("s:a", ExpectedVersion::NoStream, vec![first.clone(), event(2)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (appended.position, appended.version, appended.already_appended),
        (2, 2, false)
    );
    store
        .append(request("s:b", ExpectedVersion::Any, vec![event(3)]))
        .await
        .unwrap()
        .unwrap();

    let stream = store.read_stream("s:a", 1).await.unwrap();
    assert_eq!(stream.len(), 2);
    assert_eq!(stream[0].payload, first.payload, "payload text is stored verbatim");
    assert_eq!(stream[0].event_id, first.event_id);
    assert_eq!(stream[0].correlation_id, first.correlation_id);
    assert_eq!(stream[0].actor.as_deref(), Some("tester"));
    assert_eq!(store.read_stream("s:a", 2).await.unwrap().len(), 1);

    let all = store.read_all(0, 2).await.unwrap();
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), vec![1, 2]);
    let rest = store.read_all(2, 100).await.unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].stream_id, "s:b");
    assert_eq!(store.head().await.unwrap(), 3);
}

#[tokio::test]
async fn expected_versions_are_enforced() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool);
    let rejected = store
        .append(request("s:x", ExpectedVersion::StreamExists, vec![event(1)]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(rejected.actual, 0);
    let rejected = store
        .append(request("s:x", ExpectedVersion::Exact(1), vec![event(1)]))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(rejected.expected, ExpectedVersion::Exact(1));
    store
        .append(request("s:x", ExpectedVersion::NoStream, vec![event(1)]))
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .append(request("s:x", ExpectedVersion::NoStream, vec![event(2)]))
        .await
        .unwrap()
        .is_err());
    store
        .append(request("s:x", ExpectedVersion::StreamExists, vec![event(2)]))
        .await
        .unwrap()
        .unwrap();
    store
        .append(request("s:x", ExpectedVersion::Exact(2), vec![event(3)]))
        .await
        .unwrap()
        .unwrap();
    store
        .append(request("s:x", ExpectedVersion::Any, vec![event(4)]))
        .await
        .unwrap()
        .unwrap();
    let msg = store
        .append(request("s:x", ExpectedVersion::Exact(2), vec![event(5)]))
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert_eq!(msg, "stream s:x is at version 4, but the append expected version 2");
    assert_eq!(store.head().await.unwrap(), 4, "rejected appends add nothing");
}

#[tokio::test]
async fn of_concurrent_appends_at_one_expected_version_exactly_one_wins() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool);
    store
        .append(request("s:race", ExpectedVersion::NoStream, vec![event(0)]))
        .await
        .unwrap()
        .unwrap();
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append(request("s:race", ExpectedVersion::Exact(1), vec![event(i)]))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(store.read_stream("s:race", 1).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_retried_append_with_the_same_event_ids_is_acknowledged_not_duplicated() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool);
    let req = request("s:idem", ExpectedVersion::NoStream, vec![event(1)]);
    let first = store.append(req.clone()).await.unwrap().unwrap();
    // The retry's expected version no longer holds, but the ids identify it as the same append.
    let again = store.append(req.clone()).await.unwrap().unwrap();
    assert!(again.already_appended);
    assert_eq!((again.position, again.version), (first.position, first.version));
    assert_eq!(store.head().await.unwrap(), 1);
    // The same event id on another stream is a client bug, not a retry.
    let mut other = req;
    other.stream_id = "s:other".into();
    assert!(store.append(other).await.is_err());
}

async fn versions(store: &EventStore, stream: &str) -> Vec<i64> {
    store
        .read_stream(stream, 1)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect()
}

fn paths(store: &EventStore) -> (u64, u64) {
    let p = store.append_paths();
    (p.fast.load(Ordering::SeqCst), p.slow.load(Ordering::SeqCst))
}

/// The writer appends from the head its last append left, in one call that checks that assumption under
/// the lock; whatever broke the assumption (another writer, a stale or wrong expected version), the
/// append still lands at the right position with the right chain, or is rejected with the true version.
#[tokio::test]
async fn appends_from_the_remembered_head_fall_back_whenever_the_log_moved_underneath() {
    let (pool, _) = common::fresh_database().await;
    // Two stores on one database: two writers, as two processes would have.
    let (a, b) = (EventStore::new(pool.clone()), EventStore::new(pool));
    let append = |store: &EventStore, stream: &str, expected, n| {
        let store = store.clone();
        let request = request(stream, expected, vec![event(n), event(n + 1)]);
        async move { store.append(request).await.unwrap() }
    };

    let first = append(&a, "s:1", ExpectedVersion::NoStream, 0).await.unwrap();
    assert_eq!((first.position, first.version), (2, 2));
    assert_eq!(
        paths(&a),
        (0, 1),
        "a first append has no remembered head: the slow path"
    );
    let second = append(&a, "s:1", ExpectedVersion::Exact(2), 2).await.unwrap();
    assert_eq!((second.position, second.version), (4, 4));
    assert_eq!(paths(&a), (1, 1), "the second goes in one round trip");

    // Another writer moves the head: `a`'s next append finds its assumption broken and reads under the lock.
    let other = append(&b, "s:2", ExpectedVersion::NoStream, 4).await.unwrap();
    assert_eq!(other.position, 6);
    let third = append(&a, "s:1", ExpectedVersion::Exact(4), 6).await.unwrap();
    assert_eq!((third.position, third.version), (8, 6));
    assert_eq!(paths(&a), (1, 2));
    let fourth = append(&a, "s:3", ExpectedVersion::NoStream, 8).await.unwrap();
    assert_eq!((fourth.position, fourth.version), (10, 2));
    assert_eq!(paths(&a), (2, 2), "the slow path left the head remembered again");

    // The head is as remembered, but the stream is not at the version the request expects (higher and
    // lower): nothing is written, and the rejection names the stream's real version.
    for expected in [
        ExpectedVersion::Exact(9),
        ExpectedVersion::Exact(1),
        ExpectedVersion::NoStream,
    ] {
        let rejected = append(&a, "s:1", expected, 10).await.unwrap_err();
        assert_eq!((rejected.expected, rejected.actual), (expected, 6));
    }
    // A stream the writer has not seen, claimed to exist at version 3.
    let rejected = append(&a, "s:new", ExpectedVersion::Exact(3), 10).await.unwrap_err();
    assert_eq!(rejected.actual, 0);
    let fifth = append(&a, "s:3", ExpectedVersion::Exact(2), 10).await.unwrap();
    assert_eq!(
        (fifth.position, fifth.version),
        (12, 4),
        "rejections used up no position"
    );

    assert_eq!(versions(&a, "s:1").await, (1..=6).collect::<Vec<_>>());
    let positions: Vec<i64> = a.read_all(0, 100).await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=12).collect::<Vec<_>>());
    assert_eq!(a.head().await.unwrap(), 12);
    assert!(verify_chain(&a).await.unwrap().is_ok());
}

/// Two writers (two stores, as two processes) appending to shared and own streams at once, each
/// re-reading and retrying its losses: every success lands once, positions stay gapless and the chain
/// verifies, whichever path each append took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_contending_keep_the_log_gapless_and_the_chain_whole() {
    const TASKS: usize = 8;
    const APPENDS: usize = 60;
    let (pool, _) = common::fresh_database().await;
    let stores = [EventStore::new(pool.clone()), EventStore::new(pool)];
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = stores[t % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut succeeded = 0;
            for i in 0..APPENDS {
                // Half the appends go to one shared stream, half to the task's own.
                let stream = if i % 2 == 0 {
                    "s:shared".to_owned()
                } else {
                    format!("s:{t}")
                };
                loop {
                    let version = store.read_stream(&stream, 1).await.unwrap().len() as u64;
                    let expected = match version {
                        0 => ExpectedVersion::NoStream,
                        v => ExpectedVersion::Exact(v),
                    };
                    if store
                        .append(request(&stream, expected, vec![event(i as u64)]))
                        .await
                        .unwrap()
                        .is_ok()
                    {
                        succeeded += 1;
                        break;
                    }
                }
            }
            succeeded
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, TASKS * APPENDS);
    let store = &stores[0];
    assert_eq!(store.head().await.unwrap(), total as i64);
    assert_eq!(
        versions(store, "s:shared").await,
        (1..=(TASKS * APPENDS / 2) as i64).collect::<Vec<_>>()
    );
    assert!(verify_chain(store).await.unwrap().is_ok());
    let (fast, slow) = stores.iter().map(paths).fold((0, 0), |(f, s), (a, b)| (f + a, s + b));
    assert!(fast > 0 && slow > 0, "both paths taken: {fast} fast, {slow} slow");
}

/// 16 writers x 500 appends, a random share rolled back, while a reader tails `position > checkpoint`:
/// the reader must see every committed event exactly once, in order, at positions 1..N with no hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_are_gapless_and_commit_ordered_under_concurrent_writers_and_rollbacks() {
    const WRITERS: usize = 16;
    const APPENDS: usize = 500;
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    let committed = Arc::new(AtomicI64::new(0));
    let writers_done = Arc::new(AtomicI64::new(0));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let pool = pool.clone();
        let committed = committed.clone();
        let writers_done = writers_done.clone();
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..APPENDS {
                let e = event(i as u64);
                let id = e.event_id;
                let mut tx = pool.begin().await.unwrap();
                let results = store
                    .append_batch_in(&mut tx, &[request(&format!("w:{w}"), ExpectedVersion::Any, vec![e])])
                    .await
                    .unwrap();
                assert!(results[0].is_ok());
                let roll_back = rand::thread_rng().gen_bool(0.2);
                if roll_back {
                    // Hold the lock a moment before giving up, so readers and writers really overlap.
                    tokio::task::yield_now().await;
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.fetch_add(1, Ordering::SeqCst);
                    ids.push(id);
                }
            }
            writers_done.fetch_add(1, Ordering::SeqCst);
            ids
        }));
    }

    let reader = {
        let store = store.clone();
        let writers_done = writers_done.clone();
        tokio::spawn(async move {
            let mut checkpoint = 0i64;
            let mut seen = Vec::new();
            loop {
                let all_done = writers_done.load(Ordering::SeqCst) == WRITERS as i64;
                let page = store.read_all(checkpoint, 97).await.unwrap();
                for e in &page {
                    assert_eq!(e.position, checkpoint + 1, "the reader saw a hole or a repeat");
                    checkpoint = e.position;
                    seen.push(e.event_id);
                }
                if page.is_empty() {
                    if all_done {
                        return seen;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
        })
    };

    let mut committed_ids = HashSet::new();
    for w in writers {
        committed_ids.extend(w.await.unwrap());
    }
    let seen = reader.await.unwrap();
    let n = committed.load(Ordering::SeqCst);
    assert!(
        n > 0 && (n as usize) < WRITERS * APPENDS,
        "some appends rolled back, most committed"
    );
    assert_eq!(seen.len() as i64, n, "every committed event seen exactly once");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), committed_ids);
    assert_eq!(store.head().await.unwrap(), n);
    assert!(verify_chain(&store).await.unwrap().is_ok());
}

async fn tamper(pool: &sqlx::PgPool, sql: &str) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn store_with_ten_events() -> (sqlx::PgPool, EventStore) {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    for i in 0..10 {
        store
            .append(request(&format!("s:{}", i % 3), ExpectedVersion::Any, vec![event(i)]))
            .await
            .unwrap()
            .unwrap();
    }
    let report = verify_chain(&store).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.checked, 10);
    (pool, store)
}

#[tokio::test]
async fn verify_names_the_first_edited_event() {
    let (pool, store) = store_with_ten_events().await;
    tamper(
        &pool,
        r#"UPDATE events SET payload = '{"n": 99, "note": "keep  spacing"}' WHERE position = 6"#,
    )
    .await;
    let report = verify_chain(&store).await.unwrap();
    assert_eq!(report.first_bad_position, Some(6));
    assert_eq!(report.checked, 5);
}

#[tokio::test]
async fn verify_detects_deleted_and_reordered_events() {
    let (pool, store) = store_with_ten_events().await;
    tamper(&pool, "DELETE FROM events WHERE position = 4").await;
    assert_eq!(verify_chain(&store).await.unwrap().first_bad_position, Some(4));

    let (pool, store) = store_with_ten_events().await;
    tamper(
        &pool,
        "UPDATE events SET position = position + 1000000 WHERE position IN (7, 8)",
    )
    .await;
    tamper(
        &pool,
        "UPDATE events SET position = CASE position WHEN 1000007 THEN 8 ELSE 7 END WHERE position > 1000000",
    )
    .await;
    assert_eq!(verify_chain(&store).await.unwrap().first_bad_position, Some(7));

    let (pool, store) = store_with_ten_events().await;
    tamper(&pool, "DELETE FROM events WHERE position = 10").await;
    assert_eq!(
        verify_chain(&store).await.unwrap().first_bad_position,
        Some(10),
        "a truncated tail is caught by the head"
    );
}

#[tokio::test]
async fn the_log_refuses_updates_and_deletes() {
    let (pool, _store) = store_with_ten_events().await;
    let err = sqlx::query("UPDATE events SET actor = 'mallory' WHERE position = 1")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = sqlx::query("DELETE FROM events").execute(&pool).await.unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
}

#[tokio::test]
async fn appends_notify_the_channel_with_the_new_head() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen(NOTIFY_CHANNEL).await.unwrap();
    store
        .append(request("s:n", ExpectedVersion::Any, vec![event(1), event(2)]))
        .await
        .unwrap()
        .unwrap();
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(note.payload(), "2");
}
