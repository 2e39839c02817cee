//! Documents people have: PDF, HTML and Markdown files (tests/fixtures/documents, made by
//! scripts/make-document-fixtures) extracted with their pages and sections, in the bounded worker
//! process; hostile files refused with what to do and nothing appended; ingest by the CLI and upload by
//! the HTTP API; search results citing pages and heading paths, with the real model.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use serde_json::Value;
use sha2::Digest;
use tower::ServiceExt;

use recall::api::{self, ApiConfig, AppState};
use recall::domain::Limits;
use recall::event_store::EventStore;
use recall::extract::{ExtractError, ExtractLimits, Extracted, Extractor, Format, Hint};
use recall::projector::{Projector, ProjectorOptions, Target};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/documents")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn extractor_with(limits: ExtractLimits) -> Extractor {
    Extractor::new(Some(env!("CARGO_BIN_EXE_recall").into()), limits, Limits::default())
}

fn extractor() -> Extractor {
    extractor_with(ExtractLimits::default())
}

fn named(name: &str) -> Hint {
    Hint {
        name: Some(name.into()),
        media_type: None,
    }
}

async fn extract(name: &str) -> Extracted {
    extractor().extract(&read(name), &named(name)).await.unwrap()
}

fn span(text: &str, start: usize, end: usize) -> String {
    text.chars().skip(start).take(end - start).collect()
}

#[tokio::test]
async fn a_pdf_keeps_its_pages_and_title() {
    let pdf = extract("runbook.pdf").await;
    assert_eq!(pdf.format, Format::Pdf);
    assert_eq!(pdf.title.as_deref(), Some("Payments deployment runbook"));
    assert_eq!(pdf.pages.iter().map(|p| p.page).collect::<Vec<_>>(), [1, 2, 3]);
    let page = |n: usize| span(&pdf.text, pdf.pages[n].start, pdf.pages[n].end);
    assert!(page(0).starts_with("Deployment runbook"), "{}", page(0));
    assert!(page(1).contains("redeploy the previous release tag"), "{}", page(1));
    assert!(!page(0).contains("redeploy"));
    // The table's cells are text too, on the page they are printed on.
    assert!(
        page(2).contains("Database on-call") && page(2).contains("SecOps"),
        "{}",
        page(2)
    );
}

#[tokio::test]
async fn a_web_page_keeps_its_article_and_heading_tree_without_the_boilerplate() {
    let html = extract("caching.html").await;
    assert_eq!(html.format, Format::Html);
    assert!(
        html.title.as_deref().unwrap().starts_with("Caching guide"),
        "{:?}",
        html.title
    );
    for boilerplate in ["Sign in", "Pricing", "Copyright", "More guides"] {
        assert!(
            !html.text.contains(boilerplate),
            "{boilerplate} is navigation, not content: {}",
            html.text
        );
    }
    assert!(html.text.contains("surrogate key tag"));
    let paths: Vec<Vec<&str>> = html
        .sections
        .iter()
        .map(|s| s.path.iter().map(String::as_str).collect())
        .collect();
    // The article's h1 repeats the page's title, which Readability keeps as the title: the tree starts
    // below it.
    assert!(paths.contains(&vec!["Invalidation", "Purging by tag"]), "{paths:?}");
    assert!(paths.contains(&vec!["Limits"]), "{paths:?}");
    let purge = html
        .sections
        .iter()
        .find(|s| s.path.last().unwrap() == "Purging by tag")
        .unwrap();
    assert!(span(&html.text, purge.start, purge.end).contains("rate limited to ten a minute"));
}

#[tokio::test]
async fn markdown_keeps_its_text_as_written_and_its_heading_tree() {
    let md = extract("operations.md").await;
    assert_eq!(md.format, Format::Markdown);
    assert_eq!(md.text, String::from_utf8(read("operations.md")).unwrap());
    let paging = md.sections.iter().find(|s| s.path.last().unwrap() == "Paging").unwrap();
    assert_eq!(paging.path, ["Operations guide", "Incidents", "Paging"]);
    assert!(span(&md.text, paging.start, paging.end).starts_with("### Paging"));
}

#[tokio::test]
async fn the_content_says_what_a_file_is_whatever_its_name() {
    let disguised = extractor()
        .extract(&read("runbook.pdf"), &named("notes.txt"))
        .await
        .unwrap();
    assert_eq!(disguised.format, Format::Pdf);
    let unnamed = extractor()
        .extract(&read("caching.html"), &Hint::default())
        .await
        .unwrap();
    assert_eq!(unnamed.format, Format::Html);
}

/// A stand-in for the recall binary whose worker never answers: the deadline must end it.
fn hanging_worker(dir: &Path) -> PathBuf {
    let script = dir.join("hanging-recall");
    std::fs::write(&script, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(&mut std::fs::metadata(&script).unwrap().permissions(), 0o755);
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    script
}

#[tokio::test]
async fn hostile_files_get_a_clear_error_within_their_bounds() {
    let small = ExtractLimits {
        memory_bytes: 256 << 20,
        timeout: Duration::from_secs(20),
        ..ExtractLimits::default()
    };
    let run = |name: &'static str| async move { extractor_with(small).extract(&read(name), &named(name)).await };

    assert_eq!(run("encrypted.pdf").await.unwrap_err(), ExtractError::Encrypted);
    let scanned = extractor()
        .document(
            &read("scanned.pdf"),
            &named("scanned.pdf"),
            "scanned.pdf",
            Default::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(scanned, ExtractError::NoTextLayer { pages: 2 });
    assert!(scanned.to_string().contains("run OCR first"), "{scanned}");

    let started = Instant::now();
    let bomb = run("bomb.pdf").await.unwrap_err();
    assert!(matches!(bomb, ExtractError::OutOfMemory { mib: 256, .. }), "{bomb}");
    let runs = run("tiny-runs.pdf").await.unwrap_err();
    assert!(
        matches!(
            runs,
            ExtractError::OutOfMemory { .. } | ExtractError::TooComplex { .. } | ExtractError::TimedOut { .. }
        ),
        "{runs}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "bounded: {:?}",
        started.elapsed()
    );

    // Truncated and corrupt files.
    let whole = read("runbook.pdf");
    for cut in [whole.len() / 3, whole.len() / 2, whole.len() - 40] {
        match extractor().extract(&whole[..cut], &named("cut.pdf")).await {
            Err(ExtractError::Corrupt { .. } | ExtractError::ParserFailed { .. }) => {}
            // A cut that leaves every page whole may still read; what it reads is a prefix of the text.
            Ok(partial) => assert!(partial.pages.len() <= 3),
            Err(other) => panic!("a truncated PDF: {other}"),
        }
    }
    let garbage = extractor()
        .extract(
            b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF",
            &named("x.pdf"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            garbage,
            ExtractError::Corrupt { .. } | ExtractError::ParserFailed { .. }
        ),
        "{garbage}"
    );

    // Size: refused before any parsing.
    let tiny = extractor_with(ExtractLimits {
        max_file_bytes: 1000,
        ..ExtractLimits::default()
    });
    let err = tiny
        .extract(&read("runbook.pdf"), &named("runbook.pdf"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RECALL_MAX_FILE_BYTES"), "{err}");

    // HTML: a page of boilerplate only, and one with more elements than any real page.
    let empty = extractor()
        .extract(
            b"<html><head><script>var a = 1;</script></head><body>  </body></html>",
            &named("e.html"),
        )
        .await;
    assert!(matches!(empty, Err(ExtractError::NoContent)), "{empty:?}");
    let dense = "<html><body>".to_string() + &"<p>a</p>".repeat(600_000) + "</body></html>";
    let err = extractor()
        .extract(dense.as_bytes(), &named("d.html"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExtractError::TooComplex { .. }), "{err}");

    // A worker that never answers is killed at the deadline.
    let dir = tempfile::tempdir().unwrap();
    let hanging = Extractor::new(
        Some(hanging_worker(dir.path())),
        ExtractLimits {
            timeout: Duration::from_secs(1),
            ..ExtractLimits::default()
        },
        Limits::default(),
    );
    let started = Instant::now();
    let err = hanging
        .extract(&read("runbook.pdf"), &named("r.pdf"))
        .await
        .unwrap_err();
    assert!(matches!(err, ExtractError::TimedOut { seconds: 1, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // And without a recall binary to run, the message says how to name one.
    let none = Extractor::new(None, ExtractLimits::default(), Limits::default());
    let err = none.extract(&read("runbook.pdf"), &named("r.pdf")).await.unwrap_err();
    assert!(err.to_string().contains("RECALL_EXTRACT_PROGRAM"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Whatever follows a PDF header or makes up a page, extraction ends in a document whose structure
    /// fits its text, or in an error; never a panic or a hang.
    #[test]
    fn any_file_ends_in_a_document_or_an_error(
        tail in proptest::collection::vec(any::<u8>(), 0..4000),
        cut in 0usize..3000,
        html in "(<(p|h[1-6]|div|nav|ul|li|table|td|a)>|[a-z ]{1,30}|</(p|h[1-6]|div|ul)>){0,80}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let extractor = extractor();
        let whole = read("runbook.pdf");
        let mut mangled = whole[..cut.min(whole.len())].to_vec();
        mangled.extend_from_slice(&tail);
        let inputs: [(&[u8], &str); 3] = [(&mangled, "m.pdf"), (html.as_bytes(), "h.html"), (html.as_bytes(), "h.md")];
        for (bytes, name) in inputs {
            let result = runtime.block_on(extractor.document(bytes, &named(name), name, Default::default()));
            if let Ok((_, content)) = result {
                let origin = content.origin.expect("extracted formats keep their origin");
                prop_assert!(origin.check(content.text.as_str().chars().count()).is_ok());
            }
        }
    }
}

async fn body_json(response: axum::response::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn upload(method: &str, uri: &str, media_type: &str, body: Vec<u8>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", media_type)
        .header("content-disposition", "attachment; filename=\"upload.bin\"")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn the_api_takes_files_as_the_body_and_refuses_bad_ones_appending_nothing() {
    let (databases, _, _) = common::fresh_databases(common::Layout::One).await;
    let store = EventStore::new(databases.log().clone());
    let config = ApiConfig {
        extractor: extractor(),
        ..ApiConfig::default()
    };
    let router = api::router(AppState::new(&databases, config));
    let call = |request| async { body_json(router.clone().oneshot(request).await.unwrap()).await };

    let (status, body) = call(upload(
        "POST",
        "/v1/documents?id=runbook&scope=ops",
        "application/pdf",
        read("runbook.pdf"),
    ))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let head = store.head().await.unwrap();

    for (media_type, file, status, code) in [
        (
            "application/pdf",
            "encrypted.pdf",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unreadable_file",
        ),
        (
            "application/pdf",
            "scanned.pdf",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unreadable_file",
        ),
        (
            "application/octet-stream",
            "encrypted.pdf",
            StatusCode::UNPROCESSABLE_ENTITY,
            "unreadable_file",
        ),
        (
            "image/png",
            "runbook.pdf",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ] {
        let (got, body) = call(upload("POST", "/v1/documents?id=bad", media_type, read(file))).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{file}: {body}"
        );
    }
    let (status, body) = call(upload("POST", "/v1/documents?colour=red", "text/plain", b"x".to_vec())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(store.head().await.unwrap(), head, "refused files append nothing");

    // PUT replaces a document with a file; sniffed from octet-stream, titled by the query.
    let (status, body) = call(upload(
        "PUT",
        "/v1/documents/runbook?scope=ops&title=Ops%20guide",
        "application/octet-stream",
        read("operations.md"),
    ))
    .await;
    assert_eq!((status, body["version"].as_u64()), (StatusCode::OK, Some(2)), "{body}");
    let events = store.read_stream("ops:runbook", 0).await.unwrap();
    let payload: Value = serde_json::from_str(&events[1].payload).unwrap();
    assert_eq!(events[1].schema_version, 1, "text given as a file is text");
    assert_eq!(payload["title"], "Ops guide");
    // Octet-stream without a name that says Markdown is read as text: the file name here is upload.bin.
    assert_eq!(payload.get("origin"), None, "{payload}");
    let (status, body) = call(upload(
        "PUT",
        "/v1/documents/runbook?scope=ops",
        "text/markdown",
        read("operations.md"),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let events = store.read_stream("ops:runbook", 0).await.unwrap();
    let payload: Value = serde_json::from_str(&events[2].payload).unwrap();
    assert_eq!(payload["origin"]["media_type"], "text/markdown");
    assert_eq!(payload["title"], "upload.bin");
    assert_eq!(events[2].schema_version, 2);
    let first: Value = serde_json::from_str(&events[0].payload).unwrap();
    assert_eq!(
        first["origin"]["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(read("runbook.pdf"))),
        "the event names the original by its hash"
    );
    assert!(
        first.get("original").is_none() && !events[0].payload.contains("%PDF"),
        "not the binary"
    );
}

#[tokio::test]
async fn an_ingested_directory_is_searchable_with_pages_and_sections_cited() {
    let (databases, options, _) = common::fresh_databases(common::Layout::One).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("nested")).unwrap();
    for (name, to) in [
        ("runbook.pdf", "runbook.pdf"),
        ("caching.html", "nested/caching.html"),
        ("operations.md", "operations.md"),
        ("encrypted.pdf", "nested/encrypted.pdf"),
        ("scanned.pdf", "scanned.pdf"),
    ] {
        std::fs::copy(fixture(name), dir.path().join(to)).unwrap();
    }
    std::fs::write(
        dir.path().join("notes.txt"),
        "Plain notes: the staging cluster is rebuilt every night.",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recall"))
        .current_dir(dir.path())
        .args(["ingest", ".", "--scope", "docs", "--json"])
        .env("DATABASE_URL", common::url_of(&options))
        .output()
        .unwrap();
    assert!(!out.status.success(), "two files are refused, so the ingest says so");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(
        (summary["appended"].as_u64(), summary["rejected"].as_u64()),
        (Some(4), Some(2)),
        "{lines:?}"
    );
    assert_eq!(summary["formats"]["pdf"]["files"], 1);
    assert_eq!(summary["formats"]["pdf"]["pages"], 3);
    assert_eq!(summary["formats"]["html"]["files"], 1);
    assert_eq!(summary["formats"]["markdown"]["files"], 1);
    assert_eq!(summary["formats"]["text"]["files"], 1);
    let rejected: Vec<String> = lines
        .iter()
        .filter(|l| l["status"] == "rejected")
        .map(|l| format!("{} {}", l["source"], l["error"]))
        .collect();
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("encrypted.pdf") && r.contains("password")),
        "{rejected:?}"
    );
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("scanned.pdf") && r.contains("run OCR first")),
        "{rejected:?}"
    );

    Projector::new(&databases, common::model_backend(), ProjectorOptions::default())
        .run_until_caught_up(Target::Active)
        .await
        .unwrap();
    let search = |query: &str| {
        let out = common::recall_ok(
            {
                let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_recall"));
                c.env("DATABASE_URL", common::url_of(&options));
                c
            },
            &[
                "search", query, "--scope", "docs", "--mode", "dense", "-k", "3", "--json",
            ],
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["results"][0].clone()
    };
    let hit = search("how do I roll back a failed release?");
    assert_eq!(hit["document_id"], "runbook.pdf", "{hit}");
    let (first, last) = (hit["page_start"].as_i64().unwrap(), hit["page_end"].as_i64().unwrap());
    assert!(
        first <= 2 && 2 <= last && last - first <= 1,
        "the rollback page, cited: {hit}"
    );
    let hit = search("how often can operators purge responses by surrogate key");
    assert_eq!(hit["document_id"], "nested/caching.html", "{hit}");
    assert!(
        hit["section"].as_array().is_some_and(|s| !s.is_empty()),
        "a heading path: {hit}"
    );
    let hit = search("what happens when I do not acknowledge a page in time");
    assert_eq!(hit["document_id"], "operations.md", "{hit}");
    assert!(hit.get("page_start").is_none(), "no pages outside PDFs: {hit}");
    // The text file has no origin and no citation, as before.
    let hit = search("when is the staging cluster rebuilt");
    assert_eq!(hit["document_id"], "notes.txt", "{hit}");
    assert!(hit.get("section").is_none(), "{hit}");
}
