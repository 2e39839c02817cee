//! `recall serve` as users run it: a real process on a real socket, with the projector inside, the
//! bearer token enforced, and a graceful exit on SIGTERM.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn database_url() -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (pool, options) = common::fresh_database().await;
        pool.close().await;
        common::url_of(&options)
    })
}

fn post(base: &str, path: &str, token: Option<&str>, body: Value) -> Result<Value, (u16, Value)> {
    let mut request = ureq::post(&format!("{base}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.send_json(body) {
        Ok(response) => Ok(response.into_json().unwrap()),
        Err(ureq::Error::Status(status, response)) => Err((status, response.into_json().unwrap_or(Value::Null))),
        Err(e) => panic!("transport error: {e}"),
    }
}

#[test]
fn serve_answers_on_a_real_socket_with_its_own_projector_and_exits_cleanly_on_sigterm() {
    let (mut child, base) = common::spawn_serve(&database_url(), Some("t0k3n,second"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ureq::get(&format!("{base}/readyz")).call() {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => panic!("never ready: {e}"),
        }
    }
    let token = Some("second");
    let mut last = 0;
    for (id, text) in [
        ("tea", "Green tea is steeped at 80 degrees for two minutes."),
        ("git", "git rebase replays your commits on top of another branch."),
        ("moon", "The Moon orbits the Earth about once every 27 days."),
    ] {
        let answer = post(&base, "/v1/documents", token, json!({"id": id, "text": text})).unwrap();
        last = answer["position"].as_i64().unwrap();
    }
    let found = post(
        &base,
        "/v1/search",
        token,
        json!({"query": "how long does the moon take to go around the earth", "k": 3, "wait_for": last}),
    )
    .unwrap();
    assert_eq!(found["results"][0]["document_id"], "moon", "{found}");
    assert!(found["position"].as_i64().unwrap() >= last);

    let (status, body) = post(&base, "/v1/search", None, json!({"query": "moon"})).unwrap_err();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "recall serve did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "recall serve exited with {status}");
}

#[test]
fn serve_refuses_a_non_loopback_address_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_recall"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("DATABASE_URL", "postgresql://nobody@localhost:1/none")
        .env_remove("RECALL_API_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0") && stderr.contains("RECALL_API_TOKEN"),
        "{stderr}"
    );
}
