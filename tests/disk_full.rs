//! The disk holding the data directory fills up: commands fail cleanly (503, nothing half-written), and
//! once space returns everything works again and the hash chain verifies. It mounts a small tmpfs, so it
//! needs root; `scripts/test` runs it (`--ignored`) when it is root, as CI is.

mod common;

use recall::postgres::Databases;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use recall::api::{self, ApiConfig, AppState};
use recall::event_store::{verify_chain, EventStore};
use recall::postgres::EmbeddedServer;

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem with a file until writing fails; returns the file.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 1 << 20];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "mounts a tmpfs: needs root (scripts/test runs it when root)"]
async fn a_full_disk_fails_commands_cleanly_and_everything_works_once_space_returns() {
    let dir = tempfile::Builder::new()
        .prefix("recall-disk-")
        .tempdir_in(std::env::temp_dir())
        .unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=192m,mode=0755", "tmpfs"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs needs root");
    let mount = Mount(dir.path().to_path_buf());
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let server = EmbeddedServer::locate(home).unwrap();
    let pool = common::start_with_database(&server).await;
    let store = EventStore::new(pool.clone());
    let router = api::router(AppState::new(
        &Databases::one(store.pool().clone()),
        ApiConfig::default(),
    ));

    let text = "A paragraph that takes room on the disk. ".repeat(2_000);
    let mut acknowledged = BTreeSet::new();
    for i in 0..5 {
        let (status, _, body) = common::post_document(&router, &format!("before-{i}"), &text).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        acknowledged.insert(format!("before-{i}"));
    }

    let filler = fill(dir.path());
    // Commands now fail: each with a clear 503 and nothing half-written, none hanging.
    let mut refused = 0;
    for i in 0..40 {
        if refused == 3 {
            break;
        }
        let started = Instant::now();
        let id = format!("full-{i}");
        let (status, _, body) = common::post_document(&router, &id, &text).await;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a command hung on a full disk"
        );
        match status {
            StatusCode::CREATED => {
                acknowledged.insert(id);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
            }
            other => panic!("{other} on a full disk: {body}"),
        }
    }
    assert!(refused > 0, "the disk never filled up");

    // Space returns; the server (which may have stopped itself) comes back; commands work again.
    std::fs::remove_file(&filler).unwrap();
    common::ensure_running(&server).await;
    for i in 0..5 {
        let id = format!("after-{i}");
        common::post_until_created(&router, &id, "Back to normal.", 50).await;
        acknowledged.insert(id);
    }
    common::assert_nothing_lost(&store, &acknowledged).await;
    let report = verify_chain(&store).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    pool.close().await;
    server.stop().unwrap();
    drop(mount);
}
