//! recall as an MCP server, driven by the official Python SDK (`mcp`, pinned in tests/clients) over
//! stdio against `recall mcp` and over Streamable HTTP against `recall serve`; the script checks the tools'
//! schemas, adds, searches with wait_for, updates and replays with as_of, reads and lists resources,
//! history, refused calls that leave the log unchanged. Here: tokens, and older protocol revisions.

mod common;

use std::process::Child;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_works_over_stdio() {
    let (_pool, options) = common::fresh_database().await;
    let url = common::url_of(&options);
    let summary = tokio::task::spawn_blocking(move || {
        common::run_client("mcp_client.py", &["stdio", env!("CARGO_BIN_EXE_recall"), &url])
    })
    .await
    .unwrap();
    assert_eq!(summary["tools"], 7, "{summary}");
    assert_eq!(summary["resources"], 122, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_works_over_streamable_http_behind_the_token() {
    let (_pool, options) = common::fresh_database().await;
    let (child, base) = common::spawn_serve(&common::url_of(&options), Some("mcp-token"));
    let _server = Killed(child);
    let summary = tokio::task::spawn_blocking(move || {
        common::wait_ready(&base);
        refuses_without_the_token(&base);
        accepts_older_protocol_revisions(&base);
        common::run_client("mcp_client.py", &["http", &format!("{base}/mcp"), "mcp-token"])
    })
    .await
    .unwrap();
    assert_eq!(summary["tools"], 7, "{summary}");
}

#[allow(clippy::result_large_err)] // ureq's own error type, in a test
fn initialize(base: &str, token: Option<&str>, version: &str) -> Result<ureq::Response, ureq::Error> {
    let mut request = ureq::post(&format!("{base}/mcp"))
        .set("Accept", "application/json, text/event-stream")
        .set("Content-Type", "application/json");
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    request.send_json(serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}}
    }))
}

fn refuses_without_the_token(base: &str) {
    for token in [None, Some("wrong")] {
        match initialize(base, token, "2025-06-18") {
            Err(ureq::Error::Status(401, response)) => {
                let body: serde_json::Value = response.into_json().unwrap();
                assert_eq!(body["error"]["code"], "unauthorized", "{body}");
            }
            other => panic!("/mcp with token {token:?} answered {:?}", other.map(|r| r.status())),
        }
    }
}

/// Clients of the previous protocol revisions get their own version back.
fn accepts_older_protocol_revisions(base: &str) {
    for version in ["2025-06-18", "2025-03-26"] {
        let response = initialize(base, Some("mcp-token"), version).unwrap();
        let body = response.into_string().unwrap();
        // The answer comes as JSON or as a server-sent event (after an empty priming one).
        let json = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .find(|data| !data.trim().is_empty())
            .unwrap_or(&body)
            .trim()
            .to_owned();
        let answer: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(answer["result"]["protocolVersion"], version, "{answer}");
        assert_eq!(answer["result"]["serverInfo"]["name"], "recall", "{answer}");
    }
}
