//! Hostile input: a catalogue of bad requests through HTTP and the CLI, each with its documented status
//! and message and the log unchanged afterwards, plus property tests that no body or JSONL line makes
//! recall panic, answer 5xx, or append anything when it rejects.

mod common;

use recall::postgres::Databases;
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::{json, Value};
use tower::ServiceExt;

use recall::api::{self, ApiConfig, AppState};
use recall::domain::{Limits, Scope};
use recall::event_store::EventStore;
use recall::projector::{Projector, ProjectorOptions, Target};
use recall::runtime::ComputePool;
use recall::runtime::Priority;
use recall::search::QueryEncoder;

const TOKEN: &str = "catalogue-token";

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn nested(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

#[tokio::test]
async fn a_catalogue_of_bad_http_requests_gets_the_documented_answers_and_leaves_the_log_unchanged() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    let config = ApiConfig {
        tokens: vec![TOKEN.into()],
        ..ApiConfig::default()
    };
    let state = AppState::new(&Databases::one(store.pool().clone()), config);
    let backend = common::model_backend();
    state.set_query_encoder(Arc::new(QueryEncoder::new(
        backend.embedder().clone(),
        ComputePool::new("hostile-query", 1, Priority::Normal, None).unwrap(),
    )));
    let router = api::router(state);
    let auth = ("authorization", "Bearer catalogue-token");
    let json_type = ("content-type", "application/json");
    // One real document in scope "mine", projected, so that scope and as-of cases have something to hit.
    let (status, body) = send(
        &router,
        "POST",
        "/v1/documents",
        &[auth, json_type],
        br#"{"id": "doc", "scope": "mine", "text": "a real document"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    Projector::new(
        &Databases::one(store.pool().clone()),
        backend,
        ProjectorOptions::default(),
    )
    .run_until_caught_up(Target::Active)
    .await
    .unwrap();
    let head = store.head().await.unwrap();

    let big_text = json!({"text": "x".repeat(Limits::DEFAULT_MAX_TEXT_BYTES + 1)}).to_string();
    let huge_body = vec![b' '; 100 << 20];
    let cases: Vec<(&str, &str, Vec<(&str, &str)>, Vec<u8>, u16, &str, &str)> = vec![
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            b"{\"text\": \"\xff\xfe bad\"}".to_vec(),
            400,
            "invalid_json",
            "invalid unicode",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"text": "nul \u0000 inside"}"#.to_vec(),
            400,
            "invalid_document",
            "NUL",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            b"{\"text\": \"raw \x00 byte\"}".to_vec(),
            400,
            "invalid_json",
            "control character",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            huge_body,
            413,
            "payload_too_large",
            "size limit",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            big_text.into_bytes(),
            413,
            "text_too_long",
            "over the limit",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            format!("{{\"text\": \"t\", \"metadata\": {}}}", nested(300)).into_bytes(),
            400,
            "invalid_json",
            "recursion limit",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"text": "t", "metadata": "a string"}"#.to_vec(),
            400,
            "invalid_document",
            "metadata must be a JSON object",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"id": "x'; DROP TABLE events;--", "text": "t"}"#.to_vec(),
            400,
            "invalid_document",
            "invalid document id",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"id": "..\\..\\windows", "text": "t"}"#.to_vec(),
            400,
            "invalid_document",
            "invalid document id",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"text": "t", "tags": ["a"]}"#.to_vec(),
            400,
            "invalid_json",
            "unknown field `tags`",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            br#"{"text": 42}"#.to_vec(),
            400,
            "invalid_json",
            "text",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            b"[1, 2]".to_vec(),
            400,
            "invalid_json",
            "invalid type",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            b"".to_vec(),
            400,
            "invalid_json",
            "EOF",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            format!("{{\"text\": \"t\", \"scope\": \"{}\"}}", "s".repeat(65)).into_bytes(),
            400,
            "invalid_document",
            "invalid scope",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type],
            format!("{{\"text\": \"t\", \"title\": \"{}\"}}", "T".repeat(2048)).into_bytes(),
            400,
            "invalid_document",
            "title",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, ("content-type", "image/png")],
            br#"{"text": "t"}"#.to_vec(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "POST",
            "/v1/documents",
            vec![auth, json_type, ("idempotency-key", "not-a-uuid")],
            br#"{"text": "t"}"#.to_vec(),
            400,
            "invalid_request",
            "Idempotency-Key",
        ),
        (
            "POST",
            "/v1/documents",
            vec![("authorization", "Bearer wrong"), json_type],
            br#"{"text": "t"}"#.to_vec(),
            401,
            "unauthorized",
            "bearer token",
        ),
        (
            "POST",
            "/v1/documents",
            vec![json_type],
            br#"{"text": "t"}"#.to_vec(),
            401,
            "unauthorized",
            "Authorization",
        ),
        (
            "PUT",
            "/v1/documents/doc?scope=theirs",
            vec![auth, json_type],
            br#"{"text": "t"}"#.to_vec(),
            404,
            "not_found",
            "does not exist in scope",
        ),
        (
            "DELETE",
            "/v1/documents/doc?scope=theirs",
            vec![auth],
            vec![],
            404,
            "not_found",
            "does not exist",
        ),
        (
            "PUT",
            "/v1/documents/doc?scope=mine",
            vec![auth, json_type, ("if-match", "v1; DROP")],
            br#"{"text": "t"}"#.to_vec(),
            400,
            "invalid_request",
            "If-Match",
        ),
        (
            "GET",
            "/v1/documents/doc?scope=mine&wait_for=abc",
            vec![auth],
            vec![],
            400,
            "invalid_query",
            "wait_for",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "k": 1000000}"#.to_vec(),
            400,
            "invalid_request",
            "k must be between 1 and 100",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "k": -3}"#.to_vec(),
            400,
            "invalid_json",
            "k",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "as_of": -1}"#.to_vec(),
            400,
            "invalid_request",
            "as_of",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "as_of": 9223372036854775807}"#.to_vec(),
            409,
            "as_of_ahead",
            "ahead of what the read model reflects",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "mode": "psychic"}"#.to_vec(),
            400,
            "invalid_json",
            "unknown variant",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            br#"{"query": "q", "filter": [1]}"#.to_vec(),
            400,
            "invalid_request",
            "filter",
        ),
        (
            "POST",
            "/v1/search",
            vec![auth, json_type],
            format!("{{\"query\": \"{}\"}}", "q".repeat(20_000)).into_bytes(),
            400,
            "invalid_request",
            "over the limit",
        ),
    ];
    assert!(cases.len() >= 20);
    for (method, uri, headers, body, status, code, message) in cases {
        let (got, answer) = send(&router, method, uri, &headers, body).await;
        assert_eq!(got.as_u16(), status, "{method} {uri}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{method} {uri}: {answer}");
        let text = answer["error"]["message"].as_str().unwrap();
        assert!(
            text.contains(message),
            "{method} {uri}: {text:?} should say {message:?}"
        );
        assert_eq!(store.head().await.unwrap(), head, "{method} {uri} changed the log");
    }
    // The real document's scope still sees only itself.
    let (status, found) = send(
        &router,
        "POST",
        "/v1/search",
        &[auth, json_type],
        br#"{"query": "document", "scope": "theirs"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(found["results"], json!([]));
}

#[tokio::test]
async fn a_catalogue_of_bad_cli_input_is_rejected_with_a_reason_and_leaves_the_log_unchanged() {
    let (pool, options) = common::fresh_database().await;
    let url = common::url_of(&options);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let binary = write("binary.txt", b"text \xff\xfe\x00 binary");
    let jsonl = write(
        "bad.jsonl",
        format!(
            "{{\"id\": \"a\", \"text\": \"\\u0000\"}}\n{{\"id\": \"b\"}}\nnot json\n{{\"id\": \"c d\", \"text\": \"t\"}}\n{{\"id\": \"e\", \"text\": \"t\", \"metadata\": {}}}\n",
            nested(300)
        )
        .as_bytes(),
    );
    let empty = write("empty.md", b"   \n\t ");
    let good = write("good.md", b"Some text.");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["ingest", &binary], "not valid UTF-8"),
        (
            vec!["ingest", "--jsonl", &jsonl],
            "bad.jsonl:1: the text contains a NUL character",
        ),
        (
            vec!["ingest", "--jsonl", &jsonl],
            "bad.jsonl:2: the \"text\" field is missing",
        ),
        (vec!["ingest", "--jsonl", &jsonl], "bad.jsonl:3: not valid JSON"),
        (vec!["ingest", "--jsonl", &jsonl], "bad.jsonl:4: invalid document id"),
        (
            vec!["ingest", "--jsonl", &jsonl],
            "bad.jsonl:5: not valid JSON (recursion limit exceeded",
        ),
        (vec!["ingest", &empty], "empty"),
        (vec!["ingest", "/nonexistent/path/x.md"], "/nonexistent/path/x.md"),
        (vec!["ingest", &empty, "--scope", "bad scope"], "invalid scope"),
        (vec!["update", "missing", "--file", &good], "does not exist"),
        (vec!["remove", "../../etc/passwd"], "does not exist"),
        (vec!["search", "q", "-k", "0", "--mode", "lexical"], "k must be between"),
        (vec!["search", "q", "--as-of=-1", "--mode", "lexical"], "as_of"),
        (vec!["search", "q", "--filter", "[1]", "--mode", "lexical"], "filter"),
    ];
    for (args, message) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_recall"))
            .args(&args)
            .env("DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr:?} should say {message:?}");
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "a rejected input was appended");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_jsonl_line_panics_and_every_accepted_one_is_a_valid_document(line in prop_oneof![
        any::<String>(),
        "\\{\"(id|_id|text|title|metadata|scope)\": (\"[^\"]{0,20}\"|[0-9]{1,5}|null|\\[\\]|\\{\\})(, \"text\": \"[a-z \\\\u0000]{0,10}\")?\\}",
    ]) {
        let scope = Scope::default();
        if let Ok(Some(item)) = recall::ingest::parse_jsonl_line(&line, 1, "fuzz", &scope, &Limits::default()).map(Some) {
            prop_assert!(!item.content.text.as_str().trim().is_empty());
            prop_assert!(!item.content.text.as_str().contains('\0'));
        }
    }
}

#[test]
fn no_request_body_makes_the_api_panic_answer_5xx_or_append_when_it_rejects() {
    let rt = runtime();
    let (store, router) = rt.block_on(async {
        let (pool, _) = common::fresh_database().await;
        let store = EventStore::new(pool);
        let router = api::router(AppState::new(
            &Databases::one(store.pool().clone()),
            ApiConfig::default(),
        ));
        (store, router)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        ..ProptestConfig::default()
    });
    let bodies = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\{(\"(id|scope|title|text|metadata|k|query|as_of|mode)\": (\"[^\"]{0,12}\"|-?[0-9]{1,20}|true|null|\\[1\\]|\\{\\}),? ?){0,4}\\}"
            .prop_map(String::into_bytes),
    ];
    let paths = prop_oneof![Just("/v1/documents"), Just("/v1/search")];
    runner
        .run(&(bodies, paths), |(body, path)| {
            rt.block_on(async {
                let before = store.head().await.unwrap();
                let (status, answer) = send(&router, "POST", path, &[("content-type", "application/json")], body).await;
                prop_assert!(
                    !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
                    "{status}: {answer}"
                );
                if !status.is_success() {
                    prop_assert!(answer["error"]["message"].is_string(), "{answer}");
                    prop_assert_eq!(store.head().await.unwrap(), before);
                }
                Ok(())
            })
        })
        .unwrap();
}

/// Every status recall sends carries `{"error": {"code", "message"}}`, whether a handler or the framework
/// (an extractor's rejection, a method the route lacks, an unknown path) refused the request.
#[tokio::test]
async fn every_route_answers_malformed_paths_methods_and_headers_with_the_json_error() {
    let (pool, _) = common::fresh_database().await;
    let config = ApiConfig {
        tokens: vec![TOKEN.into()],
        ..ApiConfig::default()
    };
    let router = api::router(AppState::new(&Databases::one(pool), config));
    let auth = ("authorization", "Bearer catalogue-token");
    let paths = [
        "/v1/documents",
        "/v1/documents/doc",
        "/v1/documents/%FF%FE",
        "/v1/documents/%ZZ",
        "/v1/documents/a%00b",
        "/v1/documents/%FF%FE/history",
        "/v1/documents/doc/history",
        "/v1/search",
        "/v1/search?wait_for=%FF",
        "/v1/search?wait_for=soon",
        "/v1/embeddings",
        "/v1/models",
        "/metrics",
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/v1/nothing/here",
        "/v1/documents/doc/history/extra",
    ];
    let header_sets: [&[(&str, &str)]; 6] = [
        &[auth],
        &[auth, ("content-type", "text/plain")],
        &[auth, ("content-type", "application/json"), ("if-match", "W/\"1\"")],
        &[
            auth,
            ("content-type", "application/json"),
            ("idempotency-key", "not-a-uuid"),
        ],
        &[("authorization", "Basic Y2F0YWxvZ3Vl")],
        &[("authorization", "bearer")],
    ];
    let mut checked = 0;
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            for headers in header_sets {
                let (status, body) = send(&router, method, path, headers, b"{\"text\": ".to_vec()).await;
                if status.is_client_error() || status.is_server_error() {
                    assert!(
                        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
                        "{method} {path} {headers:?}: {status} without the JSON error: {body}"
                    );
                    assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}: {body}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 300, "{checked}");
    let (status, body) = send(&router, "PATCH", "/v1/documents/doc", &[auth], vec![]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    let (status, body) = send(&router, "GET", "/v1/documents/%FF%FE", &[auth], vec![]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// RFC 9110: the authorization scheme is case-insensitive; If-Match compares strongly.
#[tokio::test]
async fn the_scheme_is_case_insensitive_and_a_weak_etag_never_matches() {
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool.clone());
    let config = ApiConfig {
        tokens: vec![TOKEN.into()],
        ..ApiConfig::default()
    };
    let router = api::router(AppState::new(&Databases::one(store.pool().clone()), config));
    let json_type = ("content-type", "application/json");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let token = format!("{scheme} {TOKEN}");
        let (status, body) = send(
            &router,
            "POST",
            "/v1/documents",
            &[("authorization", &token), json_type],
            json!({"id": format!("d-{scheme}"), "text": "some text"})
                .to_string()
                .into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{scheme}: {body}");
    }
    let auth = ("authorization", "bearer catalogue-token");
    let before = store.head().await.unwrap();
    let (status, body) = send(
        &router,
        "PUT",
        "/v1/documents/d-Bearer",
        &[auth, json_type, ("if-match", "W/\"1\"")],
        json!({"text": "new text"}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert_eq!(store.head().await.unwrap(), before, "nothing appended");
    let (status, body) = send(
        &router,
        "PUT",
        "/v1/documents/d-Bearer",
        &[auth, json_type, ("if-match", "\"1\"")],
        json!({"text": "new text"}).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}
