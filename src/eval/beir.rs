//! BEIR's file formats: a corpus (`{"_id", "title", "text"}` a line) and queries (`{"_id", "text"}`).

use std::path::Path;

use serde_json::Value;

use crate::domain::{DocumentContent, DocumentKey, Limits, Scope};
use crate::ingest::{self, IngestError};

/// A corpus read as documents of one scope, and the lines recall refused (BEIR corpora hold a few
/// documents with empty text: they could never be found anyway, so a caller reports and skips them).
#[derive(Debug, Default)]
pub struct Corpus {
    pub documents: Vec<(DocumentKey, DocumentContent)>,
    pub skipped: Vec<IngestError>,
}

pub fn read_corpus(path: &Path, scope: &Scope) -> Result<Corpus, IngestError> {
    let source = path.display().to_string();
    let text = ingest::read_text_file(path).map_err(|error| IngestError::Unreadable {
        source_name: source.clone(),
        error,
    })?;
    let limits = Limits::default();
    let mut corpus = Corpus::default();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        match ingest::parse_jsonl_line(line, i + 1, &source, scope, &limits) {
            Ok(item) => corpus.documents.push((item.key, item.content)),
            Err(error) => corpus.skipped.push(error),
        }
    }
    Ok(corpus)
}

/// Each query's id (when the line has one) and text.
pub fn read_queries(path: &Path) -> Result<Vec<(Option<String>, String)>, IngestError> {
    let source = path.display().to_string();
    let text = ingest::read_text_file(path).map_err(|error| IngestError::Unreadable {
        source_name: source.clone(),
        error,
    })?;
    let mut queries = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = format!("{source}:{}", i + 1);
        let value: Value = serde_json::from_str(line).map_err(|e| IngestError::MalformedJson {
            source_name: at.clone(),
            detail: e.to_string(),
        })?;
        let id = value
            .get("_id")
            .or_else(|| value.get("id"))
            .map(|id| id.as_str().map(str::to_owned).unwrap_or_else(|| id.to_string()));
        let Some(text) = value.get("text").and_then(Value::as_str) else {
            return Err(IngestError::BadField {
                source_name: at,
                detail: "no \"text\" string field; a query line is {\"_id\": \"1\", \"text\": \"...\"}".into(),
            });
        };
        queries.push((id, text.to_owned()));
    }
    Ok(queries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_keep_ids_and_name_the_bad_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q.jsonl");
        std::fs::write(&path, "{\"_id\": 7, \"text\": \"why\"}\n\n{\"text\": \"how\"}\n").expect("write");
        let queries = read_queries(&path).expect("read");
        assert_eq!(queries, vec![(Some("7".into()), "why".into()), (None, "how".into())]);
        std::fs::write(&path, "{\"_id\": \"1\", \"text\": \"a\"}\n{\"_id\": \"2\"}\n").expect("write");
        let error = read_queries(&path).expect_err("no text").to_string();
        assert!(error.contains("q.jsonl:2") && error.contains("\"text\""), "{error}");
    }

    #[test]
    fn a_corpus_skips_what_recall_refuses_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corpus.jsonl");
        std::fs::write(
            &path,
            "{\"_id\": \"a\", \"title\": \"T\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \"\"}\n",
        )
        .expect("write");
        let corpus = read_corpus(&path, &Scope::parse("s").expect("scope")).expect("read");
        assert_eq!(corpus.documents.len(), 1);
        assert_eq!(corpus.skipped.len(), 1);
    }
}
