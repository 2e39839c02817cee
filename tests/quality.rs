//! The quality gate: a judged sample of SciFact (tests/fixtures/scifact-quality: 100 questions, 1,500
//! documents, built by scripts/make-quality-fixture) ingested, projected with the real model into a real
//! PostgreSQL, and searched through every way a user searches: `recall eval`, `recall search --queries`
//! and `POST /v1/search`. A ranking regression in any mode fails here; so does any difference between the
//! three interfaces, or a first page that changes when more results are asked for.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use recall::eval::{self, Qrels};
use serde_json::{json, Value};

const SCOPE: &str = "eval-scifact-quality";

/// nDCG@10 measured on this sample (dense 0.7580, lexical 0.7061, hybrid 0.7662 on 2026-12-06, printed by
/// `cargo test --test quality -- --nocapture`), less a margin of 0.01 for the HNSW graph, whose shape
/// depends on the order of its inserts.
const FLOOR_DENSE: f64 = 0.748;
const FLOOR_LEXICAL: f64 = 0.696;
const FLOOR_HYBRID: f64 = 0.756;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scifact-quality")
        .join(name)
}

/// One ranking: (document id, chunk index) best first.
type Ranking = Vec<(String, i64)>;

fn ranking(results: &Value) -> Ranking {
    results
        .as_array()
        .expect("results")
        .iter()
        .map(|h| {
            (
                h["document_id"].as_str().unwrap().to_owned(),
                h["chunk_index"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Documents in the order of their best chunk.
fn documents(ranking: &Ranking) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ranking
        .iter()
        .filter(|(d, _)| seen.insert(d.clone()))
        .map(|(d, _)| d.clone())
        .collect()
}

fn mean_ndcg(rankings: &BTreeMap<String, Ranking>, qrels: &Qrels) -> f64 {
    let scores: Vec<eval::Scores> = rankings
        .iter()
        .map(|(q, r)| eval::score(&documents(r), qrels.judged(q).expect("judged")))
        .collect();
    eval::mean(&scores).ndcg_at_10
}

fn recall_cli<S: AsRef<std::ffi::OsStr> + std::fmt::Debug>(url: &str, args: &[S]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recall"));
    command.env("DATABASE_URL", url);
    common::recall_ok(command, args)
}

/// `recall eval --json --mode MODE` on the sample, with `extra` arguments: its report.
fn eval_report(url: &str, mode: &str, extra: &[&str]) -> Value {
    let (corpus, queries, qrels) = (fixture("corpus.jsonl"), fixture("queries.jsonl"), fixture("qrels.tsv"));
    let mut args = vec!["eval", "--json", "--mode", mode];
    args.extend(["--corpus", corpus.to_str().unwrap()]);
    args.extend([
        "--queries",
        queries.to_str().unwrap(),
        "--qrels",
        qrels.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    serde_json::from_slice(&recall_cli(url, &args).stdout).unwrap()
}

/// `recall eval`: its report and its TREC run (query -> documents, best first).
fn run_eval(url: &str, mode: &str, run: &Path) -> (Value, BTreeMap<String, Vec<String>>) {
    let report = eval_report(url, mode, &["--run", run.to_str().unwrap()]);
    let mut rankings: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for line in std::fs::read_to_string(run).unwrap().lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 6, "a TREC run line: {line}");
        rankings
            .entry(fields[0].to_owned())
            .or_default()
            .push((fields[3].parse().unwrap(), fields[2].to_owned()));
    }
    let rankings = rankings
        .into_iter()
        .map(|(q, mut docs)| {
            docs.sort();
            (q, docs.into_iter().map(|(_, d)| d).collect())
        })
        .collect();
    (report, rankings)
}

/// `recall search --queries`: query id -> ranking.
fn run_cli_search(url: &str, mode: &str, k: usize, distinct: bool) -> BTreeMap<String, Ranking> {
    let queries = fixture("queries.jsonl").to_str().unwrap().to_owned();
    let k = k.to_string();
    let mut args = vec![
        "search",
        "--json",
        "--queries",
        &queries,
        "-k",
        &k,
        "--mode",
        mode,
        "--scope",
        SCOPE,
    ];
    if distinct {
        args.push("--distinct-documents");
    }
    let out = recall_cli(url, &args);
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).unwrap();
            (v["query_id"].as_str().unwrap().to_owned(), ranking(&v["results"]))
        })
        .collect()
}

/// `POST /v1/search` for every question: query id -> ranking.
fn run_api_search(
    base: &str,
    questions: &[(String, String)],
    mode: &str,
    k: usize,
    distinct: bool,
) -> BTreeMap<String, Ranking> {
    questions
        .iter()
        .map(|(id, text)| {
            let body = json!({"query": text, "k": k, "mode": mode, "scope": SCOPE, "distinct_documents": distinct});
            let response: Value = ureq::post(&format!("{base}/v1/search"))
                .send_json(body)
                .unwrap_or_else(|e| panic!("{id}: {e}"))
                .into_json()
                .unwrap();
            (id.clone(), ranking(&response["results"]))
        })
        .collect()
}

fn first(rankings: &BTreeMap<String, Ranking>, n: usize) -> BTreeMap<String, Ranking> {
    rankings
        .iter()
        .map(|(q, r)| (q.clone(), r.iter().take(n).cloned().collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_mode_meets_its_floor_and_every_interface_ranks_alike() {
    let (_pool, options) = common::fresh_database().await;
    let url = common::url_of(&options);
    let qrels = Qrels::parse(&std::fs::read_to_string(fixture("qrels.tsv")).unwrap()).unwrap();
    let questions: Vec<(String, String)> = std::fs::read_to_string(fixture("queries.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["_id"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(questions.len(), 100);
    let dir = tempfile::tempdir().unwrap();

    // `recall eval` ingests the corpus into its own scope and projects it (the first run does).
    let url_for_eval = url.clone();
    let run_dir = dir.path().to_path_buf();
    let evals = tokio::task::spawn_blocking(move || {
        ["dense", "lexical", "hybrid"].map(|mode| {
            (
                mode,
                run_eval(&url_for_eval, mode, &run_dir.join(format!("{mode}.run"))),
            )
        })
    })
    .await
    .unwrap();

    let (mut serve, base) = common::spawn_serve(&url, None);
    let mut ndcg = BTreeMap::new();
    for (mode, (report, eval_run)) in evals {
        assert_eq!(report["queries"], 100, "{report}");
        assert_eq!(report["documents"], 1500, "{report}");
        let measured = report["ndcg_at_10"].as_f64().unwrap();
        eprintln!("{mode}: {report}");
        ndcg.insert(mode, measured);

        let (url, base, questions) = (url.clone(), base.clone(), questions.clone());
        let (cli, api) = tokio::task::spawn_blocking(move || {
            let mut cli = BTreeMap::new();
            let mut api = BTreeMap::new();
            for k in [10, 100] {
                for distinct in [false, true] {
                    cli.insert((k, distinct), run_cli_search(&url, mode, k, distinct));
                    api.insert((k, distinct), run_api_search(&base, &questions, mode, k, distinct));
                }
            }
            (cli, api)
        })
        .await
        .unwrap();

        for (request, ranked) in &cli {
            assert_eq!(ranked.len(), 100, "{mode} {request:?}: one line per question");
            assert_eq!(
                ranked, &api[request],
                "{mode} {request:?}: the CLI and the API rank alike"
            );
            let (k, distinct) = *request;
            for (q, r) in ranked {
                assert!(r.len() <= k, "{mode} {request:?} {q}");
                if distinct {
                    assert_eq!(documents(r).len(), r.len(), "{mode} {q}: each document once");
                }
            }
        }
        // Asking for more never reorders the first ones.
        for distinct in [false, true] {
            assert_eq!(
                cli[&(10, distinct)],
                first(&cli[&(100, distinct)], 10),
                "{mode}, distinct {distinct}: the top 10 at k = 10 and at k = 100"
            );
        }
        // Documents at their best chunk: the distinct ranking is the chunk ranking's documents.
        for (q, r) in &cli[&(100, false)] {
            let distinct = documents(&cli[&(100, true)][q]);
            let by_chunk = documents(r);
            assert_eq!(&distinct[..by_chunk.len()], &by_chunk[..], "{mode} {q}");
        }
        // `recall eval` ranks with the very same code: its run is the distinct ranking at k = 100.
        let distinct_docs: BTreeMap<String, Vec<String>> = cli[&(100, true)]
            .iter()
            .map(|(q, r)| (q.clone(), documents(r)))
            .collect();
        assert_eq!(
            eval_run, distinct_docs,
            "{mode}: recall eval and recall search rank alike"
        );
        let from_search = mean_ndcg(&cli[&(100, false)], &qrels);
        assert!(
            (from_search - measured).abs() <= 0.001,
            "{mode}: search --queries -k 100 gives {from_search}, eval {measured}"
        );
    }
    serve.kill().unwrap();
    serve.wait().unwrap();

    eprintln!("nDCG@10: {ndcg:?}");
    assert!(ndcg["dense"] >= FLOOR_DENSE, "dense {} < {FLOOR_DENSE}", ndcg["dense"]);
    assert!(
        ndcg["lexical"] >= FLOOR_LEXICAL,
        "lexical {} < {FLOOR_LEXICAL}",
        ndcg["lexical"]
    );
    assert!(
        ndcg["hybrid"] >= FLOOR_HYBRID,
        "hybrid {} < {FLOOR_HYBRID}",
        ndcg["hybrid"]
    );
    let best_single = ndcg["dense"].max(ndcg["lexical"]);
    assert!(
        ndcg["hybrid"] >= best_single - 0.005,
        "hybrid {} must be at least the better single mode ({best_single}) less 0.005",
        ndcg["hybrid"]
    );
}

/// The lower precisions keep dense retrieval's quality: the same sample, projected and searched at bf16
/// and at int8 (each a generation of its own, in a database of its own), meets the f32 floor.
/// (On the whole SciFact train split, `scripts/eval-precision` measures each against f32.)
#[tokio::test]
async fn bf16_and_int8_meet_the_dense_floor() {
    for precision in ["bf16", "int8"] {
        let (_pool, options) = common::fresh_database().await;
        let url = common::url_of(&options);
        let report = tokio::task::spawn_blocking(move || eval_report(&url, "dense", &["--precision", precision]))
            .await
            .unwrap();
        eprintln!("dense at {precision}: {report}");
        assert_eq!(report["queries"], 100, "{report}");
        let ndcg = report["ndcg_at_10"].as_f64().unwrap();
        assert!(
            ndcg >= FLOOR_DENSE,
            "dense nDCG@10 at {precision} is {ndcg}, under the floor {FLOOR_DENSE}"
        );
    }
}
