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
