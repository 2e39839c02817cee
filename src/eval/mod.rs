//! Retrieval quality the way BEIR measures it: qrels (graded or binary relevance), each query's ranking
//! of documents (search's distinct-documents ranking: a document ranks by its best chunk), and the mean
//! of nDCG@10, Recall@100 and MRR@10 over the queries that have relevance judgements. Pure and
//! synchronous; `recall eval` feeds it.

mod beir;

pub use beir::{read_corpus, read_queries, Corpus};

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum EvalError {
    #[error("qrels line {line}: {reason}; expected `query-id<TAB>corpus-id<TAB>score`")]
    BadQrels { line: usize, reason: String },
}

/// Relevance judgements: query id -> document id -> grade (above 0 is relevant).
#[derive(Debug, Default, Clone)]
pub struct Qrels(HashMap<String, HashMap<String, i32>>);

impl Qrels {
    /// The BEIR TSV form, with or without its `query-id corpus-id score` header.
    pub fn parse(text: &str) -> Result<Self, EvalError> {
        let mut qrels: HashMap<String, HashMap<String, i32>> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            let bad = |reason: &str| EvalError::BadQrels {
                line: i + 1,
                reason: reason.to_owned(),
            };
            // TREC qrels carry an iteration column: query 0 doc grade.
            let (query, doc, grade) = match fields.as_slice() {
                [q, d, g] => (*q, *d, *g),
                [q, _, d, g] => (*q, *d, *g),
                _ => return Err(bad("wrong number of fields")),
            };
            let Ok(grade) = grade.parse::<i32>() else {
                if i == 0 {
                    continue; // the header
                }
                return Err(bad("the score is not an integer"));
            };
            qrels.entry(query.to_owned()).or_default().insert(doc.to_owned(), grade);
        }
        Ok(Qrels(qrels))
    }

    /// The judged documents of a query, if it has any relevant one.
    pub fn judged(&self, query: &str) -> Option<&HashMap<String, i32>> {
        self.0.get(query).filter(|docs| docs.values().any(|&g| g > 0))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Scores {
    pub ndcg_at_10: f64,
    pub recall_at_100: f64,
    pub mrr_at_10: f64,
}

/// One query's scores. Gains are linear in the grade, as in trec_eval and pytrec_eval (which BEIR uses).
pub fn score(ranking: &[String], judged: &HashMap<String, i32>) -> Scores {
    let grade = |doc: &String| judged.get(doc).copied().unwrap_or(0).max(0) as f64;
    let discount = |i: usize| 1.0 / (i as f64 + 2.0).log2();
    let dcg: f64 = ranking
        .iter()
        .take(10)
        .enumerate()
        .map(|(i, d)| grade(d) * discount(i))
        .sum();
    let mut ideal: Vec<f64> = judged.values().filter(|&&g| g > 0).map(|&g| g as f64).collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, g)| g * discount(i)).sum();
    let relevant = ideal.len();
    let found = ranking.iter().take(100).filter(|d| grade(d) > 0.0).count();
    let first = ranking.iter().take(10).position(|d| grade(d) > 0.0);
    Scores {
        ndcg_at_10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall_at_100: if relevant > 0 {
            found as f64 / relevant as f64
        } else {
            0.0
        },
        mrr_at_10: first.map_or(0.0, |i| 1.0 / (i as f64 + 1.0)),
    }
}

/// The mean of each score.
pub fn mean(scores: &[Scores]) -> Scores {
    let n = scores.len().max(1) as f64;
    Scores {
        ndcg_at_10: scores.iter().map(|s| s.ndcg_at_10).sum::<f64>() / n,
        recall_at_100: scores.iter().map(|s| s.recall_at_100).sum::<f64>() / n,
        mrr_at_10: scores.iter().map(|s| s.mrr_at_10).sum::<f64>() / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranking(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn judged(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn binary_relevance_by_hand() {
        // Relevant: a, c. Ranked: x a y c.
        let s = score(&ranking(&["x", "a", "y", "c"]), &judged(&[("a", 1), ("c", 1)]));
        // DCG = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068; IDCG = 1 + 0.63093.
        let expected = (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((s.ndcg_at_10 - expected).abs() < 1e-12, "{s:?}");
        assert!((expected - 0.65092).abs() < 1e-4);
        assert_eq!(s.mrr_at_10, 0.5);
        assert_eq!(s.recall_at_100, 1.0);
    }

    #[test]
    fn graded_relevance_uses_linear_gains() {
        // Grades b=3, a=1; ranked a then b: DCG = 1 + 3/log2(3); IDCG = 3 + 1/log2(3).
        let s = score(&ranking(&["a", "b"]), &judged(&[("a", 1), ("b", 3)]));
        let expected = (1.0 + 3.0 / 3f64.log2()) / (3.0 + 1.0 / 3f64.log2());
        assert!((s.ndcg_at_10 - expected).abs() < 1e-12, "{s:?}");
        assert_eq!(s.mrr_at_10, 1.0);
    }

    #[test]
    fn cutoffs_apply() {
        let mut ids: Vec<String> = (0..150).map(|i| format!("n{i}")).collect();
        ids[10] = "r1".into(); // rank 11: outside @10, inside @100
        ids[120] = "r2".into(); // rank 121: outside @100
        let s = score(&ids, &judged(&[("r1", 1), ("r2", 1), ("never", 1), ("bad", 0)]));
        assert_eq!(s.ndcg_at_10, 0.0);
        assert_eq!(s.mrr_at_10, 0.0);
        assert!((s.recall_at_100 - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_perfect_ranking_scores_one_and_an_empty_one_zero() {
        let j = judged(&[("a", 2), ("b", 1)]);
        assert_eq!(score(&ranking(&["a", "b"]), &j).ndcg_at_10, 1.0);
        assert_eq!(score(&[], &j), Scores::default());
        let m = mean(&[score(&ranking(&["a", "b"]), &j), Scores::default()]);
        assert_eq!(m.ndcg_at_10, 0.5);
    }

    #[test]
    fn qrels_parse_with_header_or_trec_columns_and_reject_garbage() {
        let q = Qrels::parse("query-id\tcorpus-id\tscore\n1\td1\t1\n1\td2\t0\n2\td3\t0\n").unwrap();
        assert_eq!(q.judged("1").unwrap().len(), 2);
        assert!(
            q.judged("2").is_none(),
            "a query without a relevant document is not evaluated"
        );
        let trec = Qrels::parse("7 0 doc9 2\n").unwrap();
        assert_eq!(trec.judged("7").unwrap()["doc9"], 2);
        assert_eq!(
            Qrels::parse("1\td1\t1\n1\td2\tyes\n").unwrap_err(),
            EvalError::BadQrels {
                line: 2,
                reason: "the score is not an integer".into()
            }
        );
    }
}
