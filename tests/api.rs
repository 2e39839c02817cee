//! The HTTP API through its router (oneshot requests) on a real PostgreSQL with the real model, and
//! `recall serve` as a real process on a bound port.

mod common;

use recall::postgres::Databases;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use recall::api::{self, ApiConfig, AppState, ProjectorState};
use recall::event_store::EventStore;
use recall::projector::{EmbedBackend, ModelBackend, Projector, ProjectorOptions, Target};
use recall::runtime::ComputePool;
use recall::runtime::Priority;
use recall::search::QueryEncoder;
use recall::server::{self, Model, RunningServer, ServerConfig};

struct App {
    router: Router,
    state: AppState,
    store: EventStore,
    server: Option<RunningServer>,
}

impl App {
    /// A fresh database; when `projecting`, the service as `recall serve` assembles it (query path and
    /// projector inside), else the API alone. Requests go through the API's router.
    async fn new(config: ApiConfig, projecting: bool) -> App {
        Self::in_layout(common::Layout::One, config, projecting).await
    }

    /// As `new`, with the read model where `layout` puts it.
    async fn in_layout(layout: common::Layout, config: ApiConfig, projecting: bool) -> App {
        let (databases, _, _) = common::fresh_databases(layout).await;
        let store = EventStore::new(databases.log().clone());
        if !projecting {
            let state = AppState::new(&databases, config);
            return App {
                router: api::router(state.clone()),
                state,
                store,
                server: None,
            };
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = server::start(
            ServerConfig {
                api: config,
                cpu: recall::runtime::CpuPolicy::beside_api(2, Priority::Normal),
                ..ServerConfig::default()
            },
            databases,
            Some(listener),
            Model::Loaded(common::model_backend().embedder().clone()),
        )
        .await
        .unwrap();
        server.ready().await.unwrap();
        let state = server.state().clone();
        App {
            router: api::router(state.clone()),
            state,
            store,
            server: Some(server),
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, body) = self
            .raw(method, uri, headers, body.map(|b| b.to_string().into_bytes()))
            .await;
        (status, body)
    }

    async fn raw(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body.map(Body::from).unwrap_or_else(Body::empty)).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (parts.status, parts.headers, value)
    }

    /// Adds the 20 `TOPICS` as `doc-0`.. in scope `kb` (metadata `n`: the index), each created at version
    /// 1; returns the last position.
    async fn add_topics(&self) -> i64 {
        let mut last = 0;
        for (i, (title, text)) in TOPICS.iter().enumerate() {
            let (status, body) = self
                .call(
                    "POST",
                    "/v1/documents",
                    &[],
                    Some(json!({"id": format!("doc-{i}"), "scope": "kb", "title": title, "text": text, "metadata": {"n": i}})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["version"], 1);
            last = body["position"].as_i64().unwrap();
        }
        last
    }

    async fn head(&self) -> i64 {
        self.store.head().await.unwrap()
    }

    async fn stop(self) {
        if let Some(server) = self.server {
            server.shutdown().await.unwrap();
        }
    }
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
}

const TOPICS: [(&str, &str); 20] = [
    (
        "Sourdough starter",
        "Feed a sourdough starter with flour and water every day to keep the yeast active.",
    ),
    (
        "HTTP caching",
        "Cache-Control max-age tells a browser how long it may reuse a response without asking.",
    ),
    (
        "Rust ownership",
        "Each value in Rust has one owner; when the owner goes out of scope the value is dropped.",
    ),
    (
        "Photosynthesis",
        "Plants turn sunlight, water and carbon dioxide into glucose and oxygen in their leaves.",
    ),
    (
        "Volcanoes",
        "Magma rising through the crust erupts as lava, ash and gas from a volcano's vent.",
    ),
    (
        "Chess openings",
        "The Sicilian Defence answers 1.e4 with c5, fighting for the centre asymmetrically.",
    ),
    (
        "Tides",
        "The Moon's gravity pulls the oceans into bulges that sweep the coasts as high and low tide.",
    ),
    (
        "Vaccines",
        "A vaccine trains the immune system to recognise a pathogen without causing the disease.",
    ),
    (
        "Bicycle gears",
        "Shifting to a larger rear cog makes pedalling uphill easier at the cost of speed.",
    ),
    (
        "Coffee brewing",
        "Espresso forces hot water through finely ground coffee at about nine bars of pressure.",
    ),
    (
        "Black holes",
        "Nothing, not even light, escapes from inside a black hole's event horizon.",
    ),
    (
        "Composting",
        "Kitchen scraps and dry leaves decompose into rich compost when kept moist and turned.",
    ),
    (
        "Tax returns",
        "File the annual income tax return before the deadline to avoid a late penalty.",
    ),
    (
        "Jazz improvisation",
        "Jazz soloists improvise melodies over the chord changes of a standard tune.",
    ),
    (
        "Knitting",
        "Knit and purl stitches combine into ribbing that makes a sweater's cuffs stretch.",
    ),
    (
        "Glaciers",
        "Glaciers carve U-shaped valleys as the moving ice grinds the rock beneath it.",
    ),
    (
        "Password hashing",
        "Store passwords with a slow salted hash such as Argon2, never in plain text.",
    ),
    (
        "Marathon training",
        "Marathon runners build weekly mileage slowly and taper before race day.",
    ),
    (
        "Honeybees",
        "Honeybees dance to tell the hive the direction and distance of flowers.",
    ),
    (
        "Sailing",
        "Tacking turns a sailboat's bow through the wind to zigzag upwind.",
    ),
];

async fn add_wait_search_update_and_replay_an_old_receipt(layout: common::Layout) {
    let app = App::in_layout(layout, ApiConfig::default(), true).await;
    let last = app.add_topics().await;
    assert_eq!(last, 20);

    // Adding the same content again is a no-op, not an error.
    let (status, body) = app
        .call(
            "POST",
            "/v1/documents",
            &[],
            Some(
                json!({"id": "doc-0", "scope": "kb", "title": TOPICS[0].0, "text": TOPICS[0].1, "metadata": {"n": 0}}),
            ),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("unchanged")),
        "{body}"
    );

    let search = |query: &str, extra: Value| {
        let mut body = json!({"query": query, "k": 5, "scope": "kb"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, found) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(search(
                "how do I keep my sourdough yeast alive?",
                json!({"wait_for": last}),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["results"][0]["document_id"], "doc-0", "{found}");
    assert_eq!(found["results"][0]["title"], "Sourdough starter");
    assert_eq!(found["results"][0]["metadata"], json!({"n": 0}));
    let receipt = found["position"].as_i64().unwrap();
    assert!(receipt >= last);

    // The ?wait_for= form and another question.
    let (_, passwords) = app
        .call(
            "POST",
            &format!("/v1/search?wait_for={last}"),
            &[],
            Some(search("storing user passwords safely", json!({}))),
        )
        .await;
    assert_eq!(passwords["results"][0]["document_id"], "doc-16", "{passwords}");

    // A stale If-Match is a conflict; the right one replaces the document.
    let replacement = json!({"title": "Rye bread", "text": "Rye flour makes a dense, dark loaf with a sour tang."});
    let (status, body) = app
        .call(
            "PUT",
            "/v1/documents/doc-0?scope=kb",
            &[("if-match", "\"7\"")],
            Some(replacement.clone()),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "version_conflict"),
        "{body}"
    );
    let (status, body) = app
        .call(
            "PUT",
            "/v1/documents/doc-0?scope=kb",
            &[("if-match", "\"1\"")],
            Some(replacement.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    let updated = body["position"].as_i64().unwrap();
    let (status, body) = app
        .call(
            "PUT",
            "/v1/documents/doc-0?scope=kb",
            &[("if-match", "1")],
            Some(replacement),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "version_conflict"),
        "{body}"
    );

    // Live search now sees the new text; the old receipt still replays the old answer.
    let (_, live) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(search(
                "how do I keep my sourdough yeast alive?",
                json!({"wait_for": updated}),
            )),
        )
        .await;
    assert!(live["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| !r["text"].as_str().unwrap().contains("sourdough starter")));
    let (status, replay) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(search(
                "how do I keep my sourdough yeast alive?",
                json!({"as_of": receipt}),
            )),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replay}");
    assert_eq!(replay["position"], receipt);
    assert_eq!(
        same_hits(&replay),
        same_hits(&found),
        "the old receipt did not replay the old answer"
    );
    assert_eq!(replay["results"][0]["text"], TOPICS[0].1);

    // Reads of the read model and the log.
    let (status, headers, doc) = app
        .raw(
            "GET",
            &format!("/v1/documents/doc-0?scope=kb&wait_for={updated}"),
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["text"], "Rye flour makes a dense, dark loaf with a sour tang.");
    assert_eq!(doc["version"], 2);
    assert_eq!(headers["etag"], "\"2\"");
    let (status, history) = app.call("GET", "/v1/documents/doc-0/history?scope=kb", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["DocumentAdded", "DocumentUpdated"]);

    // Removal: the read model says gone; the history keeps it.
    let (status, body) = app
        .call("DELETE", "/v1/documents/doc-0?scope=kb", &[("if-match", "2")], None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let removed = body["position"].as_i64().unwrap();
    let (status, body) = app
        .call(
            "GET",
            &format!("/v1/documents/doc-0?scope=kb&wait_for={removed}"),
            &[],
            None,
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::GONE, "removed"), "{body}");
    let (status, body) = app
        .call(
            "PUT",
            "/v1/documents/doc-0?scope=kb",
            &[],
            Some(json!({"text": "again"})),
        )
        .await;
    assert_eq!((status, error_code(&body)), (StatusCode::GONE, "removed"), "{body}");
    let (status, body) = app.call("DELETE", "/v1/documents/never?scope=kb", &[], None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_found"),
        "{body}"
    );

    // The metrics saw it all.
    let (status, metrics) = app.call("GET", "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_owned();
    for line in [
        "recall_commands_total{command=\"add\",outcome=\"appended\"} 20",
        "recall_commands_total{command=\"add\",outcome=\"unchanged\"} 1",
        "recall_commands_total{command=\"update\",outcome=\"version_conflict\"} 2",
        "recall_commands_total{command=\"remove\",outcome=\"not_found\"} 1",
        "recall_search_seconds_count 4",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(metrics.contains("recall_projection_lag_events{"), "{metrics}");
    assert!(metrics.contains("recall_projector_tokens_total "), "{metrics}");
    let appends = |path: &str| -> u64 {
        let prefix = format!("recall_appends_total{{path=\"{path}\"}} ");
        let line = metrics.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))[prefix.len()..]
            .parse()
            .unwrap()
    };
    // The first append reads the head under the lock; the later ones, one after another, start from it.
    assert!(appends("slow") >= 1 && appends("fast") >= 10, "{metrics}");
    // Each stage of a command is timed: every command read its stream; every append waited in the queue,
    // took a connection and ran its statement; the locked path committed on its own.
    let stage = |stage: &str| -> (u64, f64) {
        let series = |suffix: &str| {
            let prefix = format!("recall_command_stage_seconds_{suffix}{{stage=\"{stage}\"}} ");
            let line = metrics.lines().find(|l| l.starts_with(&prefix));
            line.unwrap_or_else(|| panic!("no {prefix:?} in\n{metrics}"))[prefix.len()..].to_owned()
        };
        (series("count").parse().unwrap(), series("sum").parse().unwrap())
    };
    let appended = appends("slow") + appends("fast");
    assert!(stage("read").0 >= 24, "{metrics}");
    for name in ["queue", "connect", "statement"] {
        assert!(stage(name).0 >= appended, "{name}: {metrics}");
    }
    assert_eq!(stage("commit").0, appends("slow"), "{metrics}");
    let total: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("recall_command_seconds_sum "))
        .unwrap()
        .parse()
        .unwrap();
    let staged: f64 = ["read", "queue", "connect", "statement", "commit"]
        .iter()
        .map(|s| stage(s).1)
        .sum();
    assert!(
        staged > 0.0 && staged <= total * 1.01,
        "stages {staged} s of commands' {total} s"
    );
    app.stop().await;
}

/// What identifies an answer: each hit's document, chunk and text, and its score to 5 decimals (the
/// live and as-of paths sum the same vectors in a different order).
fn same_hits(response: &Value) -> Vec<(String, i64, String, i64)> {
    response["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["document_id"].as_str().unwrap().to_owned(),
                r["chunk_index"].as_i64().unwrap(),
                r["text"].as_str().unwrap().to_owned(),
                (r["score"].as_f64().unwrap() * 1e5).round() as i64,
            )
        })
        .collect()
}

#[tokio::test]
async fn a_search_in_one_scope_never_returns_another_scopes_chunks() {
    let app = App::new(ApiConfig::default(), true).await;
    let mut last = 0;
    for (scope, id) in [("alice", "a1"), ("alice", "a2"), ("bob", "b1"), ("bob", "b2")] {
        let text = format!("{scope}'s private notes about the quarterly budget and hiring plan ({id}).");
        let (status, body) = app
            .call(
                "POST",
                "/v1/documents",
                &[],
                Some(json!({"id": id, "scope": scope, "text": text})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        last = body["position"].as_i64().unwrap();
    }
    for scope in ["alice", "bob"] {
        let (status, found) = app
            .call(
                "POST",
                "/v1/search",
                &[],
                Some(json!({"query": "budget and hiring", "k": 100, "scope": scope, "wait_for": last})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        let results = found["results"].as_array().unwrap();
        assert_eq!(results.len(), 2, "{found}");
        assert!(results.iter().all(|r| r["scope"] == scope), "{found}");
    }
    // Another scope's id is not found in this scope, for reads and for commands.
    let (status, _) = app.call("GET", "/v1/documents/b1?scope=alice", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.call("DELETE", "/v1/documents/b1?scope=alice", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Unscoped search sees both.
    let (_, found) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(json!({"query": "budget and hiring", "k": 100})),
        )
        .await;
    assert_eq!(found["results"].as_array().unwrap().len(), 4, "{found}");
    app.stop().await;
}

#[tokio::test]
async fn tokens_body_limits_and_malformed_requests_get_clear_errors_and_append_nothing() {
    let config = ApiConfig {
        tokens: vec!["s3cret".into(), "other".into()],
        max_body_bytes: 4096,
        ..ApiConfig::default()
    };
    let app = App::new(config, false).await;
    let doc = json!({"id": "x", "text": "hello"});

    let (status, body) = app.call("POST", "/v1/documents", &[], Some(doc.clone())).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "{body}"
    );
    let (status, _) = app
        .call(
            "POST",
            "/v1/documents",
            &[("authorization", "Bearer wrong")],
            Some(doc.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app.call("GET", "/metrics", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Liveness and the spec stay open.
    assert_eq!(app.call("GET", "/healthz", &[], None).await.0, StatusCode::OK);
    assert_eq!(app.call("GET", "/openapi.json", &[], None).await.0, StatusCode::OK);

    let auth = [("authorization", "Bearer other")];
    let big = json!({"text": "x".repeat(10_000)});
    let (status, body) = app.call("POST", "/v1/documents", &auth, Some(big)).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        "{body}"
    );

    let (status, _, body) = app
        .raw(
            "POST",
            "/v1/documents",
            &auth,
            Some(b"{\"text\": \"unterminated".to_vec()),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_json"),
        "{body}"
    );

    let cases = [
        (json!({"text": "t", "colour": "red"}), "colour"),
        (json!({"title": "no text"}), "text"),
        (json!({"text": 42}), "text"),
        (json!({"text": "t", "metadata": [1, 2]}), "metadata"),
        (json!({"text": "   "}), "empty"),
        (
            json!({"id": "../etc/passwd;DROP TABLE events", "text": "t"}),
            "document id",
        ),
        (json!({"text": "t", "scope": "has space"}), "scope"),
        (json!({"text": "nul \u{0} inside"}), "NUL"),
    ];
    for (body, named) in cases {
        let (status, answer) = app.call("POST", "/v1/documents", &auth, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message:?} should name {named:?}");
    }
    let searches = [
        (json!({"query": "q", "k": 0}), "k"),
        (json!({"query": "q", "k": 1000}), "k"),
        (json!({"query": "q", "k": "ten"}), "k"),
        (json!({"query": "q", "as_of": "yesterday"}), "as_of"),
        (json!({"query": "q", "filter": "topic"}), "filter"),
        (json!({"query": ""}), "query"),
        (json!({"question": "q"}), "question"),
    ];
    for (body, named) in searches {
        let (status, answer) = app.call("POST", "/v1/search", &auth, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message:?} should name {named:?}");
    }
    let (status, body) = app
        .call(
            "PUT",
            "/v1/documents/x",
            &[auth[0], ("if-match", "latest")],
            Some(json!({"text": "t"})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_request"),
        "{body}"
    );
    let (status, _) = app.call("GET", "/v1/nowhere", &auth, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = app.raw("POST", "/v1/documents", &auth, None).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );

    assert_eq!(app.head().await, 0, "a rejected request appended something");
    let (status, body) = app.call("POST", "/v1/documents", &auth, Some(doc)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.head().await, 1);
}

async fn readiness_follows_the_model_and_the_projector_and_wait_for_times_out(layout: common::Layout) {
    let config = ApiConfig {
        wait_timeout: Duration::from_millis(300),
        ..ApiConfig::default()
    };
    let app = App::in_layout(layout, config, false).await;
    let (status, body) = app.call("GET", "/readyz", &[], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["checks"]["model"], "still loading");
    assert_eq!(body["checks"]["database"], "ok");

    // Commands do not need the model; searches say it is loading.
    let (status, _) = app
        .call("POST", "/v1/documents", &[], Some(json!({"text": "hello"})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, body) = app
        .raw("POST", "/v1/search", &[], Some(br#"{"query": "hello"}"#.to_vec()))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{body}"
    );
    assert_eq!(headers["retry-after"], "1");

    let pool = ComputePool::new("test-query", 1, Priority::Normal, None).unwrap();
    app.state.set_query_encoder(Arc::new(QueryEncoder::new(
        common::model_backend().embedder().clone(),
        pool,
    )));
    let (status, body) = app.call("GET", "/readyz", &[], None).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // No projector runs here, so waiting for position 1 times out with a clear 504.
    let (status, body) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(json!({"query": "hello", "wait_for": 1})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::GATEWAY_TIMEOUT, "wait_timeout"),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("position 1"),
        "{body}"
    );

    app.state.set_projector(ProjectorState::Failed("boom".into()));
    let (status, body) = app.call("GET", "/readyz", &[], None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["checks"]["projector"], "stopped: boom");
}

#[tokio::test]
async fn the_openapi_document_and_the_router_agree() {
    let spec = api::openapi();
    let paths = spec["paths"].as_object().unwrap();
    let app = App::new(ApiConfig::default(), false).await;
    let mut described = 0;
    for (path, methods) in paths {
        for method in methods.as_object().unwrap().keys() {
            described += 1;
            let uri = path.replace("{id}", "some-id");
            let (status, body) = app.call(&method.to_uppercase(), &uri, &[], None).await;
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path} is described but not routed"
            );
            let fallback = body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no such endpoint"));
            assert!(!fallback, "{method} {path} is described but not routed");
        }
    }
    // Every route of api::router, by method.
    assert_eq!(described, 12, "the spec and the router list different routes");

    // Generated from the types the handlers use: the bounds and the refusals' shape come with them.
    let schemas = &spec["components"]["schemas"];
    assert_eq!(spec["openapi"], "3.1.0");
    assert_eq!(
        schemas["SearchRequest"]["properties"]["k"]["maximum"], 100,
        "{}",
        schemas["SearchRequest"]
    );
    assert_eq!(schemas["SearchRequest"]["additionalProperties"], false);
    assert_eq!(schemas["NewDocument"]["required"], json!(["text"]));
    assert!(
        schemas["SearchHit"]["properties"]["char_start"].is_object(),
        "{}",
        schemas["SearchHit"]
    );
    assert_eq!(
        schemas["Error"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    assert_eq!(spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    let add = &paths["/v1/documents"]["post"];
    assert_eq!(
        add["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/CommandResult"
    );
    assert!(add["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"));
}

#[tokio::test]
async fn requests_make_the_projector_yield_a_core_and_it_still_projects_everything_the_same() {
    let config = ApiConfig {
        foreground_window: Duration::from_secs(600),
        ..ApiConfig::default()
    };
    let (pool, _) = common::fresh_database().await;
    let store = EventStore::new(pool);
    let state = AppState::new(&Databases::one(store.pool().clone()), config);
    let app = App {
        router: api::router(state.clone()),
        state: state.clone(),
        store: store.clone(),
        server: None,
    };

    // Health checks and scrapes are not agents' traffic: they must not slow the projector down.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        app.call("GET", path, &[], None).await;
    }
    assert!(!state.foreground().active(), "probes marked the foreground");

    let reference = common::model_backend();
    let embedder = reference.embedder().clone();
    let backend = Arc::new(
        ModelBackend::shared(
            embedder.clone(),
            embedder.chunker(32, true),
            Some(ComputePool::new("test-all", 2, Priority::Normal, None).unwrap()),
        )
        .yielding_to(
            state.foreground().clone(),
            ComputePool::new("test-narrow", 1, Priority::Normal, None).unwrap(),
        ),
    );
    state.set_query_encoder(Arc::new(QueryEncoder::new(
        embedder.clone(),
        ComputePool::new("test-query", 1, Priority::Normal, None).unwrap(),
    )));
    let projector = Projector::new(
        &Databases::one(store.pool().clone()),
        backend.clone(),
        ProjectorOptions::default(),
    )
    .yielding_to(state.foreground().clone());
    state.set_projector(ProjectorState::Running(projector.stats()));
    let running = projector.spawn(Target::Active);

    let last = app.add_topics().await;
    assert!(state.foreground().active(), "API requests mark the foreground");
    let (status, body) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(json!({"query": TOPICS[7].0, "scope": "kb", "k": 3, "mode": "dense", "wait_for": last})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["document_id"], "doc-7", "{body}");
    let projected: i64 = sqlx::query_scalar("SELECT count(*) FROM documents WHERE NOT removed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(projected, TOPICS.len() as i64);
    assert!(state.foreground().yielded() > 0, "no batch ran on the narrow pool");
    let (_, metrics) = app.call("GET", "/metrics", &[], None).await;
    let metrics = metrics.as_str().unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("recall_projector_yielded_batches_total "))
        .expect("the yielded-batches counter");
    assert_ne!(line, "recall_projector_yielded_batches_total 0", "{line}");

    // The piecewise, narrowed path gives the same vectors, in the same order, as the plain one (over
    // several pieces: 400 short chunks are about 10,000 word pieces).
    let inputs: Vec<Vec<u32>> = TOPICS
        .iter()
        .cycle()
        .take(400)
        .flat_map(|(title, text)| backend.chunk(title, text, &[]).unwrap())
        .map(|c| c.input_ids)
        .collect();
    let before = state.foreground().yielded();
    let yielding = backend.embed(&inputs).unwrap();
    assert!(
        state.foreground().yielded() >= before + 2,
        "expected several narrowed pieces"
    );
    let plain = reference.embed(&inputs).unwrap();
    assert_eq!(yielding.len(), plain.len());
    for (a, b) in yielding.iter().zip(&plain) {
        assert!(common::cosine(a, b) >= 0.99999);
    }
    running.stop().await.unwrap();
}

in_both_layouts!(
    add_wait_search_update_and_replay_an_old_receipt,
    readiness_follows_the_model_and_the_projector_and_wait_for_times_out,
);

/// A server whose own precision is f32, over a generation built at int8 (as after `recall rebuild
/// --precision int8` while it ran on): the question is embedded at the generation's precision. A dense
/// search for a document's exact text then finds it at cosine 1 (the same integer arithmetic on the same
/// word pieces), which an f32 question would not reach against the int8 vector.
#[tokio::test]
async fn questions_are_embedded_at_the_generation_precision() {
    use recall::embed::Precision;
    let (databases, _, _) = common::fresh_databases(common::Layout::One).await;
    let state = AppState::new(&databases, ApiConfig::default());
    let app = App {
        router: api::router(state.clone()),
        state,
        store: EventStore::new(databases.log().clone()),
        server: None,
    };
    let text = "Glaciers carve U-shaped valleys as they flow, plucking rock from the valley floor and \
                grinding it against the walls; the debris they leave behind forms moraines.";
    let (status, body) = app
        .call(
            "POST",
            "/v1/documents",
            &[],
            Some(json!({"id": "glacier", "text": text})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let int8 = common::embedder_at(Precision::Int8);
    let f32_embedder = common::model_backend().embedder().clone();
    let (a, b) = (
        int8.encode(&[text]).unwrap().remove(0),
        f32_embedder.encode(&[text]).unwrap().remove(0),
    );
    let across = common::cosine(&a, &b);
    assert!(
        across < 0.99999,
        "int8 and f32 vectors must differ for this test to tell: cosine {across}"
    );
    Projector::new(
        &databases,
        Arc::new(ModelBackend::new(int8, 32)),
        ProjectorOptions::default(),
    )
    .run_until_caught_up(Target::Active)
    .await
    .unwrap();
    let pool = ComputePool::new("test-query", 1, Priority::Normal, None).unwrap();
    app.state
        .set_query_encoder(Arc::new(QueryEncoder::new(f32_embedder, pool)));
    let (status, found) = app
        .call(
            "POST",
            "/v1/search",
            &[],
            Some(json!({"query": text, "mode": "dense", "k": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["results"][0]["document_id"], "glacier", "{found}");
    let score = found["results"][0]["score"].as_f64().unwrap();
    assert!(
        score >= 0.99999,
        "score {score}: the question was not embedded at int8 (f32 would give {across})"
    );
    let report = recall::read_model::status(&databases).await.unwrap();
    assert_eq!(report.projections[0].precision, "int8");
}
