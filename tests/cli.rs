//! The `recall` binary as users run it, against a fresh database per test.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

struct Cli {
    url: String,
}

impl Cli {
    async fn new() -> Self {
        let (pool, options) = common::fresh_database().await;
        pool.close().await;
        Cli {
            url: common::url_of(&options),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_recall"))
            .args(args)
            .env("DATABASE_URL", &self.url)
            .env_remove("RECALL_HOME")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input).unwrap();
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    fn head(&self) -> usize {
        let out = self.run(&["log", "--json", "--limit", "100000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().count()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn ingest_files_and_directories_reporting_what_it_rejects() {
    let cli = Cli::new().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("notes")).unwrap();
    std::fs::write(dir.path().join("notes/a.md"), "# Alpha\nThe first note.").unwrap();
    std::fs::write(dir.path().join("notes/b.txt"), "The second note.").unwrap();
    std::fs::write(dir.path().join("notes/empty.txt"), "   \n").unwrap();
    std::fs::write(dir.path().join("notes/binary.txt"), [0xff, 0xd8, 0xff, 0xe0, 0, 1]).unwrap();
    std::fs::write(dir.path().join("notes/ignored.bin"), "not taken from a directory").unwrap();
    let notes = dir.path().join("notes");
    let missing = dir.path().join("missing");

    let out = cli.run(&["ingest", notes.to_str().unwrap(), missing.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("appended 2, unchanged 0, rejected 3"), "{stderr}");
    assert!(stderr.contains("empty or only whitespace"), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(stderr.contains("missing") && stderr.contains("cannot read"), "{stderr}");
    assert_eq!(cli.head(), 2);

    // Re-running is safe: identical documents are unchanged, nothing is appended.
    let out = cli.run(&[
        "ingest",
        notes.join("a.md").to_str().unwrap(),
        notes.join("b.txt").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("appended 0, unchanged 2, rejected 0"));
    assert_eq!(cli.head(), 2);
}

#[tokio::test]
async fn ingest_jsonl_rejects_bad_lines_alone_and_names_them() {
    let cli = Cli::new().await;
    let input = concat!(
        r#"{"_id": "1", "title": "One", "text": "first"}"#,
        "\n",
        "{not json\n",
        r#"{"id": "2", "text": "second", "metadata": {"lang": "en"}}"#,
        "\n",
        "\n",
        r#"{"id": "3", "text": "third", "metadata": "nope"}"#,
        "\n",
        r#"{"id": "bad id", "text": "x"}"#,
        "\n",
        r#"{"id": "4", "text": "x", "extra": true}"#,
        "\n",
    );
    let out = cli.run_with_stdin(&["ingest", "--jsonl", "-", "--scope", "beir"], Some(input.as_bytes()));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("-:2: not valid JSON"), "{stderr}");
    assert!(stderr.contains("-:5: metadata must be a JSON object"), "{stderr}");
    assert!(stderr.contains("-:6: invalid document id"), "{stderr}");
    assert!(stderr.contains("-:7: unknown field `extra`"), "{stderr}");
    assert!(stderr.contains("appended 2, unchanged 0, rejected 4"), "{stderr}");
    assert_eq!(cli.head(), 2);

    let out = cli.run(&["history", "1", "--scope", "beir", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let event: serde_json::Value = serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(event["event_type"], "DocumentAdded");
    assert_eq!(event["payload"]["title"], "One");
    assert_eq!(event["scope"], "beir");
}

#[tokio::test]
async fn update_remove_history_log_and_verify() {
    let cli = Cli::new().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("doc.txt");
    std::fs::write(&file, "version one").unwrap();
    let out = cli.run(&["ingest", file.to_str().unwrap(), "--id", "doc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    std::fs::write(&file, "version two").unwrap();
    let out = cli.run(&[
        "update",
        "doc",
        "--file",
        file.to_str().unwrap(),
        "--expected-version",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let outcome: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(
        outcome["outcome"],
        serde_json::json!({"status": "appended", "version": 2, "position": 2})
    );

    // A stale expected version is a clear error and appends nothing.
    std::fs::write(&file, "version three").unwrap();
    let out = cli.run(&[
        "update",
        "doc",
        "--file",
        file.to_str().unwrap(),
        "--expected-version",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expected version 1, but it is at version 2"),
        "{}",
        text(&out.stderr)
    );

    // The same text again changes nothing.
    std::fs::write(&file, "version two").unwrap();
    let out = cli.run(&["update", "doc", "--file", file.to_str().unwrap()]);
    assert!(text(&out.stdout).contains("unchanged"), "{}", text(&out.stdout));

    let out = cli.run(&["remove", "doc"]);
    assert!(out.status.success());
    let out = cli.run(&["remove", "doc"]);
    assert!(text(&out.stderr).contains("was removed"), "{}", text(&out.stderr));

    let out = cli.run(&["history", "doc"]);
    let history = text(&out.stdout);
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(history.contains("DocumentRemoved"));

    let out = cli.run(&["log", "--from", "1", "--json"]);
    let positions: Vec<i64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["position"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(positions, vec![2, 3]);

    let out = cli.run(&["verify"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("ok: 3 events"), "{}", text(&out.stdout));
}

#[tokio::test]
async fn verify_fails_at_the_tampered_position() {
    let cli = Cli::new().await;
    let input: String = (0..5)
        .map(|i| format!("{{\"id\": \"d{i}\", \"text\": \"text {i}\"}}\n"))
        .collect();
    assert!(cli
        .run_with_stdin(&["ingest", "--jsonl", "-"], Some(input.as_bytes()))
        .status
        .success());
    let pool = sqlx::PgPool::connect(&cli.url).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE events SET actor = 'mallory' WHERE position = 3")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let out = cli.run(&["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(report["first_bad_position"], 3);
}

#[tokio::test]
async fn bad_arguments_get_clear_errors() {
    let cli = Cli::new().await;
    let out = cli.run(&["update", "doc", "--file", "/nonexistent/file.txt"]);
    assert!(
        text(&out.stderr).contains("cannot read /nonexistent/file.txt"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["remove", "no such id"]);
    assert!(
        text(&out.stderr).contains("invalid document id"),
        "{}",
        text(&out.stderr)
    );
    let out = cli.run(&["ingest", "--jsonl", "-", "--scope", "a:b"]);
    assert!(text(&out.stderr).contains("invalid scope"), "{}", text(&out.stderr));
    let big = dir_with_file(&vec![b'a'; 2048]);
    let out = cli.run(&[
        "ingest",
        big.path().join("f.txt").to_str().unwrap(),
        "--max-text-bytes",
        "1024",
    ]);
    assert!(
        text(&out.stderr).contains("over the limit of 1024 bytes"),
        "{}",
        text(&out.stderr)
    );
    // The same definition of an invalid search as the HTTP API's.
    for (args, says) in [
        (vec!["search", ""], "the query is empty"),
        (vec!["search", "   ", "--mode", "lexical"], "the query is empty"),
        (vec!["search", "a question", "-k", "0"], "k must be between 1 and 100"),
        (vec!["search", "a question", "-k", "101"], "k must be between 1 and 100"),
        (
            vec!["search", "a question", "--filter", "[1]"],
            "the filter must be a JSON object",
        ),
    ] {
        let out = cli.run(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    let long = "word ".repeat(4000);
    let out = cli.run(&["search", &long]);
    assert!(
        text(&out.stderr).contains("over the limit of 16384"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(cli.head(), 0);
}

fn dir_with_file(contents: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.txt"), contents).unwrap();
    dir
}

/// Every path the CLI reads must be a regular file: a named pipe with no writer is refused at once with
/// a reason (it would block a reader forever), never waited on; a byte order mark before a file's first
/// line is not part of its data.
#[tokio::test]
async fn named_pipes_are_refused_at_once_and_byte_order_marks_ignored() {
    let cli = Cli::new().await;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.to_str().unwrap();
    for args in [
        vec!["ingest", fifo],
        vec!["ingest", "--jsonl", fifo],
        vec!["update", "doc", "--file", fifo],
        vec!["search", "--queries", fifo, "--mode", "lexical"],
        vec!["embed", fifo],
    ] {
        // A reader that blocked would never answer: give it ten seconds, then fail.
        let mut child = Command::new(env!("CARGO_BIN_EXE_recall"))
            .args(&args)
            .env("DATABASE_URL", &cli.url)
            .env_remove("RECALL_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                child.kill().unwrap();
                panic!("{args:?} blocked on a named pipe");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains("not a regular file (a named pipe)"),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert_eq!(cli.head(), 0);

    let jsonl = dir.path().join("bom.jsonl");
    std::fs::write(
        &jsonl,
        "\u{feff}{\"id\": \"bom\", \"text\": \"a lantern on the shore\"}\n",
    )
    .unwrap();
    let out = cli.run(&["ingest", "--jsonl", jsonl.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cli.head(), 1);
    let out = cli.run(&["project", "--until-caught-up"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let queries = dir.path().join("queries.jsonl");
    std::fs::write(&queries, "\u{feff}{\"_id\": \"q1\", \"text\": \"lantern\"}\n").unwrap();
    let out = cli.run(&["search", "--queries", queries.to_str().unwrap(), "--mode", "lexical"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\"query_id\":\"q1\""),
        "{}",
        text(&out.stdout)
    );
}

/// `recall rebuild --precision int8` switches the read model over; a worker at the old precision is then
/// refused with the way out in its message, `recall status` names the precision, and `recall search` (at
/// the default f32) embeds its question at the generation's int8: a document's exact text comes back at
/// cosine 1, which an f32 question against the int8 vectors would not reach.
#[tokio::test]
async fn a_rebuild_switches_the_precision_and_workers_and_questions_follow() {
    let cli = Cli::new().await;
    let glacier = "Glaciers carve U-shaped valleys as they flow, plucking rock from the valley floor and grinding it against the walls.";
    let input = format!(
        "{}\n{}\n",
        json_line("glacier", glacier),
        json_line("tide", "Tides follow the moon.")
    );
    let out = cli.run_with_stdin(&["ingest", "--jsonl", "-"], Some(input.as_bytes()));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cli.run(&["project", "--until-caught-up"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let search = |extra: &[&str]| {
        let mut args = vec!["search", glacier, "--mode", "dense", "-k", "1", "--json"];
        args.extend_from_slice(extra);
        let out = cli.run(&args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["results"][0]["document_id"], "glacier", "{answer}");
        answer["results"][0]["score"].as_f64().unwrap()
    };
    assert!(search(&[]) >= 0.99999);

    let out = cli.run(&["rebuild", "--precision", "int8"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("at int8"), "{stderr}");
    let out = cli.run(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let active: Vec<&serde_json::Value> = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "active")
        .collect();
    assert_eq!(active.len(), 1, "{status}");
    assert_eq!(active[0]["precision"], "int8", "{status}");

    // A worker at f32 (the default) is refused, and told how to fit.
    let out = cli.run(&["project", "--until-caught-up"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "an f32 worker projected an int8 generation");
    assert!(
        stderr.contains("at int8, not") && stderr.contains("--precision"),
        "{stderr}"
    );
    let out = cli.run(&["project", "--until-caught-up", "--precision", "int8"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The question at the generation's int8 whatever this command's own precision.
    assert!(search(&[]) >= 0.99999);
    assert!(search(&["--precision", "bf16"]) >= 0.99999);
}

fn json_line(id: &str, text: &str) -> String {
    serde_json::json!({"id": id, "text": text}).to_string()
}
