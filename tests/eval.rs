//! `recall eval` end to end on a tiny BEIR-style dataset whose answers are unambiguous: it ingests the
//! corpus into its own scope, projects it, and scores every mode; re-running it adds nothing.

mod common;

use std::process::Command;

#[tokio::test]
async fn eval_ingests_projects_and_scores_every_mode() {
    let (pool, options) = common::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny");
    std::fs::create_dir(&data).unwrap();
    let corpus = [
        (
            "d1",
            "Sourdough",
            "A sourdough starter is fed flour and water daily to keep its wild yeast alive.",
        ),
        (
            "d2",
            "Glaciers",
            "Glaciers carve U-shaped valleys as moving ice grinds the bedrock beneath them.",
        ),
        (
            "d3",
            "Password storage",
            "Passwords should be stored with a slow salted hash such as Argon2 or bcrypt.",
        ),
        (
            "d4",
            "Tides",
            "The gravitational pull of the Moon raises the ocean tides twice a day.",
        ),
        (
            "d5",
            "Chess",
            "The Sicilian Defence answers the king's pawn opening with the c-pawn.",
        ),
    ];
    let lines: Vec<String> = corpus
        .iter()
        .map(|(id, title, text)| serde_json::json!({"_id": id, "title": title, "text": text}).to_string())
        .collect();
    std::fs::write(data.join("corpus.jsonl"), lines.join("\n")).unwrap();
    std::fs::write(
        data.join("queries.jsonl"),
        [
            r#"{"_id": "q1", "text": "how do I keep the yeast in my sourdough starter alive"}"#,
            r#"{"_id": "q2", "text": "what makes the ocean tides rise"}"#,
            r#"{"_id": "q3", "text": "safe way to store user passwords with a hash"}"#,
            r#"{"_id": "q4", "text": "a query without judgements is skipped"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    std::fs::write(
        data.join("qrels.tsv"),
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td4\t2\nq3\td3\t1\n",
    )
    .unwrap();

    let eval = |mode: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_recall"))
            .args(["eval", "--json", "--mode", mode])
            .arg("--corpus")
            .arg(data.join("corpus.jsonl"))
            .arg("--queries")
            .arg(data.join("queries.jsonl"))
            .arg("--qrels")
            .arg(data.join("qrels.tsv"))
            .env("DATABASE_URL", common::url_of(&options))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (report, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    for mode in ["dense", "lexical", "hybrid"] {
        let (report, stderr) = eval(mode);
        assert_eq!(report["queries"], 3, "{report}");
        assert_eq!(report["scope"], "eval-tiny");
        assert_eq!(report["ndcg_at_10"], 1.0, "{mode}: {report}");
        assert_eq!(report["mrr_at_10"], 1.0, "{mode}: {report}");
        assert_eq!(report["recall_at_100"], 1.0, "{mode}: {report}");
        if mode != "dense" {
            assert!(
                stderr.contains("(0 newly added)"),
                "a re-run must not add anything: {stderr}"
            );
        }
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 5);
}
