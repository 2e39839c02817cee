//! Turning files and JSONL into document commands. Each input item is parsed alone, so one malformed
//! line or unreadable file is reported with where it came from while the rest still go in.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::domain::{DocumentContent, DocumentId, DocumentKey, DomainError, Limits, Metadata, Scope, Text, Title};

/// One document ready to add, and where it came from (for error reports).
#[derive(Debug, Clone)]
pub struct IngestItem {
    pub source: String,
    pub key: DocumentKey,
    pub content: DocumentContent,
}

#[derive(Debug, Error)]
pub enum IngestError {
    #[error("{source_name}: not valid JSON ({detail}); each line must be one JSON object like {{\"id\": \"a\", \"text\": \"...\"}}")]
    MalformedJson { source_name: String, detail: String },
    #[error("{source_name}: {detail}")]
    BadField { source_name: String, detail: String },
    #[error("{source_name}: {error}")]
    // The message already carries the error, so it is not also a `source` (which would print it twice).
    Invalid { source_name: String, error: DomainError },
    #[error("{source_name}: cannot read: {error}")]
    Unreadable { source_name: String, error: std::io::Error },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlRecord {
    id: Option<String>,
    #[serde(rename = "_id")]
    beir_id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    text: Option<String>,
    #[serde(default)]
    metadata: Option<Value>,
    scope: Option<String>,
}

/// Parses one JSONL line (`{"id"|"_id", "title"?, "text", "metadata"?, "scope"?}`); `line_no` is 1-based.
pub fn parse_jsonl_line(
    line: &str,
    line_no: usize,
    origin: &str,
    default_scope: &Scope,
    limits: &Limits,
) -> Result<IngestItem, IngestError> {
    let source_name = format!("{origin}:{line_no}");
    // A UTF-8 byte order mark, which some editors put at the start of a file, is not part of the JSON.
    let line = if line_no == 1 {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    };
    let record: JsonlRecord = serde_json::from_str(line).map_err(|e| {
        let detail = e.to_string();
        if e.is_data() {
            IngestError::BadField {
                source_name: source_name.clone(),
                detail: format!("{detail}; fields are id (or _id), title, text, metadata, scope"),
            }
        } else {
            IngestError::MalformedJson {
                source_name: source_name.clone(),
                detail,
            }
        }
    })?;
    let invalid = |error| IngestError::Invalid {
        source_name: source_name.clone(),
        error,
    };
    let id = match (record.id, record.beir_id) {
        (Some(_), Some(_)) => {
            return Err(IngestError::BadField {
                source_name,
                detail: "both \"id\" and \"_id\" are given; keep one".into(),
            })
        }
        (Some(id), None) | (None, Some(id)) => DocumentId::parse(&id).map_err(invalid)?,
        (None, None) => DocumentId::generate(),
    };
    let scope = match record.scope {
        Some(s) => Scope::parse(&s).map_err(invalid)?,
        None => default_scope.clone(),
    };
    let Some(text) = record.text else {
        return Err(IngestError::BadField {
            source_name,
            detail: "the \"text\" field is missing".into(),
        });
    };
    let content = DocumentContent {
        title: Title::parse(record.title.as_deref().unwrap_or("")).map_err(invalid)?,
        text: Text::parse(text, limits).map_err(invalid)?,
        metadata: Metadata::parse(record.metadata.unwrap_or_else(|| Value::Object(Default::default())))
            .map_err(invalid)?,
    };
    Ok(IngestItem {
        source: source_name.clone(),
        key: DocumentKey::new(scope, id),
        content,
    })
}

/// The .txt and .md files under the given paths (directories recursively), sorted for a stable order.
/// Paths that cannot be read are returned as errors alongside.
pub fn discover_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<IngestError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        walk(path, true, &mut files, &mut errors);
    }
    files.sort();
    files.dedup();
    (files, errors)
}

fn walk(path: &Path, explicit: bool, files: &mut Vec<PathBuf>, errors: &mut Vec<IngestError>) {
    let unreadable = |error| IngestError::Unreadable {
        source_name: path.display().to_string(),
        error,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => return errors.push(unreadable(e)),
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => return errors.push(unreadable(e)),
        };
        for entry in entries {
            match entry {
                Ok(entry) => walk(&entry.path(), false, files, errors),
                Err(e) => errors.push(unreadable(e)),
            }
        }
    } else if explicit || matches!(path.extension().and_then(|e| e.to_str()), Some("txt" | "md")) {
        // A file named on the command line is taken whatever its extension; inside directories only
        // .txt and .md are, so that a repository's binaries are not swept in.
        files.push(path.to_path_buf());
    }
}

/// Reads one file as a document whose id is its path (or `id` when given) and whose title is its file name.
pub fn read_file_item(
    path: &Path,
    id: Option<&str>,
    scope: &Scope,
    limits: &Limits,
) -> Result<IngestItem, IngestError> {
    let source_name = path.display().to_string();
    let invalid = |error| IngestError::Invalid {
        source_name: source_name.clone(),
        error,
    };
    let raw_id = match id {
        Some(id) => id.to_owned(),
        None => path.to_string_lossy().trim_start_matches("./").to_owned(),
    };
    let doc_id = DocumentId::parse(&raw_id).map_err(invalid)?;
    let len = std::fs::metadata(path)
        .map_err(|error| IngestError::Unreadable {
            source_name: source_name.clone(),
            error,
        })?
        .len();
    if len as usize > limits.max_text_bytes {
        return Err(invalid(DomainError::TextTooLong {
            bytes: len as usize,
            limit: limits.max_text_bytes,
        }));
    }
    let bytes = std::fs::read(path).map_err(|error| IngestError::Unreadable {
        source_name: source_name.clone(),
        error,
    })?;
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let content = DocumentContent {
        title: Title::parse(&title).map_err(invalid)?,
        text: Text::from_bytes(bytes, limits).map_err(invalid)?,
        metadata: Metadata::parse(serde_json::json!({ "path": path.to_string_lossy() })).map_err(invalid)?,
    };
    Ok(IngestItem {
        source: source_name,
        key: DocumentKey::new(scope.clone(), doc_id),
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<IngestItem, IngestError> {
        parse_jsonl_line(line, 7, "in.jsonl", &Scope::default(), &Limits::default())
    }

    #[test]
    fn accepts_recall_and_beir_shapes() {
        let item = parse(r#"{"id": "a", "title": "T", "text": "hello", "metadata": {"k": 1}}"#).unwrap();
        assert_eq!(item.key.id.as_str(), "a");
        assert_eq!(item.content.title.as_str(), "T");
        let beir = parse(r#"{"_id": "4983", "title": "", "text": "abstract"}"#).unwrap();
        assert_eq!(beir.key.id.as_str(), "4983");
        let generated = parse(r#"{"text": "no id"}"#).unwrap();
        assert_eq!(generated.key.id.as_str().len(), 36);
    }

    #[test]
    fn malformed_lines_name_their_line_and_say_why() {
        let err = parse("{not json").unwrap_err().to_string();
        assert!(err.starts_with("in.jsonl:7: not valid JSON"), "{err}");
        let err = parse(r#"{"id": "a"}"#).unwrap_err().to_string();
        assert!(err.contains("\"text\" field is missing"), "{err}");
        let err = parse(r#"{"id": "a", "text": "x", "colour": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = parse(r#"{"id": "a", "text": 5}"#).unwrap_err().to_string();
        assert!(err.contains("invalid type"), "{err}");
        let err = parse(r#"{"id": "a b", "text": "x"}"#).unwrap_err().to_string();
        assert!(err.contains("invalid document id"), "{err}");
        let err = parse(r#"{"id": "a", "text": "  "}"#).unwrap_err().to_string();
        assert!(err.contains("empty or only whitespace"), "{err}");
        let err = parse(r#"{"id": "a", "text": "x", "metadata": [1]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be a JSON object"), "{err}");
    }

    #[test]
    fn binary_files_are_refused_as_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.txt");
        std::fs::write(&path, [0x89, b'P', b'N', b'G', 0xff, 0xfe]).unwrap();
        let err = read_file_item(&path, Some("blob"), &Scope::default(), &Limits::default()).unwrap_err();
        assert!(
            matches!(
                err,
                IngestError::Invalid {
                    error: DomainError::NotUtf8 { offset: 0 },
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn directories_yield_text_and_markdown_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "b").unwrap();
        std::fs::write(dir.path().join("c.bin"), "c").unwrap();
        let (files, errors) = discover_files(&[dir.path().to_path_buf(), dir.path().join("missing")]);
        assert_eq!(files.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("missing"));
    }
}
