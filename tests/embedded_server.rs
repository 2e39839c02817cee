//! The embedded PostgreSQL lifecycle on a home of its own: first-use initdb, sharing between concurrent
//! starters, recovery from a SIGKILLed server that left its postmaster.pid behind, and stop.

mod common;

use recall::postgres::{create_database_if_missing, open_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialises_is_shared_survives_a_killed_server_and_stops() {
    let (home, server) = common::private_server("recall-embedded-");
    assert!(!server.status().initialised);

    // Two starters at once: one initialises and starts, the other finds it running.
    let starters: Vec<_> = (0..2)
        .map(|_| {
            let s = server.clone();
            std::thread::spawn(move || s.ensure_running())
        })
        .collect();
    for s in starters {
        s.join().unwrap().unwrap();
    }
    let status = server.status();
    assert!(status.initialised && status.running, "{status:?}");
    let first_pid = status.pid.unwrap();

    create_database_if_missing(&server.connect_options("postgres"), "recall")
        .await
        .unwrap();
    let pool = open_with(server.connect_options("recall"), 2).await.unwrap();
    let version: String = sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(!version.is_empty(), "pgvector is installed by the migrations");
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(listen, "", "no TCP listener");
    let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sync, "on");
    pool.close().await;

    // A crash: the postmaster dies without cleaning up; its pid file stays.
    // SAFETY: sending a signal to a pid we just read from the server's own pid file.
    assert_eq!(unsafe { libc::kill(first_pid as i32, libc::SIGKILL) }, 0);
    for _ in 0..100 {
        if !server.status().running {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        home.path().join("pgdata/postmaster.pid").exists(),
        "the stale pid file is left behind"
    );
    assert!(!server.status().running);
    // The killed server's children may still be attached to its shared memory; the start waits for them.
    server.ensure_running().unwrap();
    let status = server.status();
    assert!(status.running && status.pid != Some(first_pid), "{status:?}");
    let pool = open_with(server.connect_options("recall"), 1).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    pool.close().await;

    assert!(server.stop().unwrap());
    assert!(!server.status().running);
    assert!(!server.stop().unwrap(), "stopping a stopped server is a no-op");
}

/// `/proc/<pid>/status`'s `Cpus_allowed_list` ("0-1,3") as CPU numbers.
fn allowed_cpus_of(pid: i32) -> Vec<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .flat_map(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()
        })
        .collect()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projectors_server_processes_yield_and_keep_off_the_first_cpu() {
    let (pool, options) = common::fresh_database().await;
    let background = recall::postgres::open_background_beside(&pool, 10, recall::runtime::CpuSet::background())
        .await
        .unwrap();
    // Both pools stay open to the end of the test (only clones go in): a pool dropped here closes its
    // connection, and the server process behind it could be gone before the test reads /proc.
    let backend_pid = |pool: &sqlx::PgPool| {
        let pool = pool.clone();
        async move {
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(&pool)
                .await
                .unwrap();
            pid
        }
    };
    let pid = backend_pid(&background).await;
    let api_pid = backend_pid(&pool).await;
    if options.get_socket().is_none() {
        // A server reached over TCP (RECALL_TEST_DATABASE_URL): its process ids are not ours to touch.
        assert_ne!(pid, 0);
        return;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let nice: i32 = stat
        .rsplit(") ")
        .next()
        .unwrap()
        .split(' ')
        .nth(16)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(nice, 10, "the projector's server process runs at nice 10");
    match recall::runtime::CpuSet::background() {
        Some(cpus) => {
            assert_eq!(allowed_cpus_of(pid), cpus.cpus(), "kept off the first CPU");
            assert!(
                allowed_cpus_of(api_pid).len() > cpus.cpus().len(),
                "the API's server processes are left anywhere"
            );
        }
        None => assert_eq!(allowed_cpus_of(pid), allowed_cpus_of(api_pid)),
    }
}

/// The CLI on `home` (the embedded default: no DATABASE_URL), its stdout.
fn recall_on(home: &std::path::Path, args: &[&str]) -> String {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_recall"));
    command
        .env("RECALL_HOME", home)
        .env_remove("DATABASE_URL")
        .env_remove("RECALL_READ_MODEL_URL")
        .env("RECALL_LOG", "warn");
    String::from_utf8(common::recall_ok(command, args).stdout).unwrap()
}

/// Rows of `table` in the `recall` database of the cluster whose home is `home`.
async fn rows_in(home: &std::path::Path, table: &str) -> i64 {
    let server = recall::postgres::EmbeddedServer::locate(home.to_path_buf()).unwrap();
    let pool = open_with(server.connect_options("recall"), 1).await.unwrap();
    let n = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    n
}

/// A home made by this build keeps its read model in a second cluster: the projector writes there, the log
/// stays in the first, search and status read across both, and `recall db` starts, reports and stops both.
/// A home made before (one cluster already there) keeps its one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_home_keeps_its_read_model_in_a_second_cluster_and_an_old_home_keeps_one() {
    let (home, _) = common::private_server("recall-layout-");
    let home = home.path();
    let apart = home.join("read-model");
    recall_on(home, &["db", "start"]);
    let status: serde_json::Value = serde_json::from_str(&recall_on(home, &["db", "status", "--json"])).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["read_model"]["running"], true, "{status}");
    assert_ne!(
        recall_on(home, &["db", "url"]),
        recall_on(home, &["db", "url", "--read-model"])
    );

    let doc = home.join("lantern.txt");
    std::fs::write(&doc, "The lighthouse keeper polished the lantern every night.").unwrap();
    recall_on(home, &["ingest", doc.to_str().unwrap()]);
    recall_on(home, &["project", "--until-caught-up"]);
    let found = recall_on(home, &["search", "who polished the lantern", "-k", "1", "--json"]);
    let found: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    assert_eq!(found["position"], 1, "{found}");
    assert!(
        found["results"][0]["text"].as_str().unwrap().contains("lantern"),
        "{found}"
    );
    assert_eq!(rows_in(home, "events").await, 1, "the log is in the first cluster");
    assert_eq!(rows_in(home, "chunks").await, 0, "no read model beside the log");
    assert_eq!(rows_in(&apart, "chunks").await, 1, "the read model is in the second");
    assert_eq!(rows_in(&apart, "events").await, 0);
    let report: serde_json::Value = serde_json::from_str(&recall_on(home, &["status", "--json"])).unwrap();
    assert_eq!(
        (report["head"].as_i64(), report["projections"][0]["checkpoint"].as_i64()),
        (Some(1), Some(1)),
        "{report}"
    );

    let stopped = recall_on(home, &["db", "stop"]);
    assert!(
        stopped.contains("log: stopped") && stopped.contains("read model: stopped"),
        "{stopped}"
    );
    let status: serde_json::Value = serde_json::from_str(&recall_on(home, &["db", "status", "--json"])).unwrap();
    assert_eq!(
        (status["running"].as_bool(), status["read_model"]["running"].as_bool()),
        (Some(false), Some(false))
    );

    // A home whose cluster predates the layout: its read model stays beside the log.
    let (old, server) = common::private_server("recall-layout-old-");
    server.ensure_running().unwrap();
    recall_on(old.path(), &["ingest", doc.to_str().unwrap()]);
    recall_on(old.path(), &["project", "--until-caught-up"]);
    assert!(!old.path().join("read-model").exists());
    assert_eq!(rows_in(old.path(), "chunks").await, 1);
    let status: serde_json::Value = serde_json::from_str(&recall_on(old.path(), &["db", "status", "--json"])).unwrap();
    assert!(status["read_model"].is_null(), "{status}");
    recall_on(old.path(), &["db", "stop"]);
}
