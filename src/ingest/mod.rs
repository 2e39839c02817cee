//! Turning files and JSONL into document commands. Each input item is parsed alone, so one malformed
//! line or unreadable file is reported with where it came from while the rest still go in.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use thiserror::Error;

use crate::domain::{DocumentContent, DocumentId, DocumentKey, DomainError, Limits, Metadata, Scope, Text, Title};
use crate::extract::{ExtractError, Extractor, Format, Hint};

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
    #[error("{source_name}: {error}")]
    Extract { source_name: String, error: ExtractError },
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
    let line = if line_no == 1 { without_bom(line) } else { line };
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
    let content = DocumentContent::plain(
        Title::parse(record.title.as_deref().unwrap_or("")).map_err(invalid)?,
        Text::parse(text, limits).map_err(invalid)?,
        Metadata::parse(record.metadata.unwrap_or_else(|| Value::Object(Default::default()))).map_err(invalid)?,
    );
    Ok(IngestItem {
        source: source_name.clone(),
        key: DocumentKey::new(scope, id),
        content,
    })
}

/// What a walk of the given paths found: the files to read, sorted, each once; the paths that could not
/// be read; and the entries skipped because they are not regular files (pipes, sockets, devices).
#[derive(Debug, Default)]
pub struct Discovered {
    pub files: Vec<PathBuf>,
    pub errors: Vec<IngestError>,
    pub skipped: Vec<String>,
}

/// The files of the formats recall reads (.pdf, .html, .htm, .md, .markdown, .txt ...) under the given
/// paths (directories recursively), and any file named explicitly whatever its extension. Only regular files are read: a named pipe would block the reader
/// forever. Symlinked directories are followed only when `follow_symlinks` (then a loop is reported and
/// not entered); a file reached by two ways (links, overlapping paths) is listed once.
pub fn discover_files(paths: &[PathBuf], follow_symlinks: bool) -> Discovered {
    use std::os::unix::fs::MetadataExt;
    let mut found = Discovered::default();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        let explicit = path.as_path();
        // The root is followed even when it is a link: the user named it.
        for entry in walkdir::WalkDir::new(path)
            .follow_root_links(true)
            .follow_links(follow_symlinks)
        {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let source_name = e.path().unwrap_or(explicit).display().to_string();
                    let looped = e.loop_ancestor().map(|a| a.display().to_string());
                    let error = match (looped, e.into_io_error()) {
                        (Some(ancestor), _) => {
                            std::io::Error::other(format!("a symlink loop back to {ancestor}; not followed"))
                        }
                        (None, Some(io)) => io,
                        (None, None) => std::io::Error::other("cannot walk it"),
                    };
                    found.errors.push(IngestError::Unreadable { source_name, error });
                    continue;
                }
            };
            let named = entry.depth() == 0;
            let file_type = entry.file_type();
            if file_type.is_dir() {
                continue;
            }
            // What the entry is, links followed (a link inside a directory that is not followed shows
            // here as a link: to a directory, or dangling, it is skipped).
            let target = std::fs::metadata(entry.path());
            if file_type.is_symlink() && !target.as_ref().is_ok_and(|m| !m.is_dir()) {
                found.skipped.push(format!(
                    "{}: a symlink to a directory or to nothing; skipped (use --follow-symlinks to follow links)",
                    entry.path().display()
                ));
                continue;
            }
            let meta = match target {
                Ok(m) => m,
                Err(error) => {
                    found.errors.push(IngestError::Unreadable {
                        source_name: entry.path().display().to_string(),
                        error,
                    });
                    continue;
                }
            };
            if !meta.is_file() {
                let what = format!("not a regular file ({})", kind(&meta.file_type()));
                let source_name = entry.path().display().to_string();
                if named {
                    let error = std::io::Error::other(what);
                    found.errors.push(IngestError::Unreadable { source_name, error });
                } else {
                    found
                        .skipped
                        .push(format!("{source_name}: {what}; only regular files are read"));
                }
                continue;
            }
            // A file named on the command line is taken whatever its extension (its content says what
            // it is); inside directories only the formats recall reads are, so that a repository's
            // binaries are not swept in.
            let wanted = named || Format::from_name(&entry.file_name().to_string_lossy()).is_some();
            if wanted && seen.insert((meta.dev(), meta.ino())) {
                found.files.push(entry.path().to_path_buf());
            }
        }
    }
    found.files.sort();
    found
}

/// Opens a path the CLI was given for reading, refusing anything but a regular file: a named pipe with
/// no writer would block the reader forever, and a device may never end. Opened without blocking and
/// checked through the handle, so that a path swapped for a pipe after a walk cannot hang the reader.
pub fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(std::io::Error::other(format!(
            "not a regular file ({}); give a file, or `-` to read standard input",
            kind(&file_type)
        )));
    }
    Ok(file)
}

/// A file's text without the UTF-8 byte order mark some editors put at its start.
pub fn without_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// Reads a whole regular file as UTF-8 text, without a leading byte order mark.
pub fn read_text_file(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut open_regular_file(path)?, &mut text)?;
    let bom = text.len() - without_bom(&text).len();
    text.drain(..bom);
    Ok(text)
}

fn kind(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else {
        "not a file"
    }
}

/// One file read as a document, with what it was.
#[derive(Debug, Clone)]
pub struct FileItem {
    pub item: IngestItem,
    pub format: Format,
    /// Its PDF pages (0 for other formats).
    pub pages: usize,
    /// The original's size.
    pub bytes: u64,
}

/// Reads one file as a document whose id is its path (or `id` when given), extracted by its format
/// (PDF, HTML, Markdown, text): titled by the file's own title or its file name, with `{"path": ...}`
/// as metadata. A file over the extractor's size limit is refused before it is read.
pub async fn read_file_item(
    path: &Path,
    id: Option<&str>,
    scope: &Scope,
    extractor: &Extractor,
) -> Result<FileItem, IngestError> {
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
    let unreadable = |error| IngestError::Unreadable {
        source_name: source_name.clone(),
        error,
    };
    let limit = extractor.limits().max_file_bytes;
    let extract_error = |error| IngestError::Extract {
        source_name: source_name.clone(),
        error,
    };
    let file = open_regular_file(path).map_err(unreadable)?;
    let len = file.metadata().map_err(unreadable)?.len();
    if len > limit {
        return Err(extract_error(ExtractError::TooLarge { bytes: len, limit }));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // At most one byte past the limit: a file that grows while it is read is still bounded.
    std::io::Read::read_to_end(&mut std::io::Read::take(&file, limit + 1), &mut bytes).map_err(unreadable)?;
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = Metadata::parse(serde_json::json!({ "path": path.to_string_lossy() })).map_err(invalid)?;
    let hint = Hint {
        name: Some(title.clone()),
        media_type: None,
    };
    let (format, content) = extractor
        .document(&bytes, &hint, &title, metadata)
        .await
        .map_err(|error| match error {
            ExtractError::Invalid(error) => invalid(error),
            other => extract_error(other),
        })?;
    let pages = content.origin.as_ref().map_or(0, |o| o.pages.len());
    Ok(FileItem {
        item: IngestItem {
            source: source_name,
            key: DocumentKey::new(scope.clone(), doc_id),
            content,
        },
        format,
        pages,
        bytes: bytes.len() as u64,
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
    fn a_byte_order_mark_before_the_first_line_is_not_json() {
        let bom = "\u{feff}{\"id\": \"a\", \"text\": \"hello\"}";
        let first = parse_jsonl_line(bom, 1, "in.jsonl", &Scope::default(), &Limits::default()).unwrap();
        assert_eq!(first.key.id.as_str(), "a");
        // Anywhere else it is a character the JSON does not allow, and the line says so.
        assert!(parse_jsonl_line(bom, 2, "in.jsonl", &Scope::default(), &Limits::default()).is_err());
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

    fn read(path: &Path, id: Option<&str>) -> Result<FileItem, IngestError> {
        let extractor = Extractor::new(None, Default::default(), Limits::default());
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(read_file_item(path, id, &Scope::default(), &extractor))
    }

    #[test]
    fn binary_files_are_refused_as_not_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob.txt");
        std::fs::write(&path, [0x89, b'P', b'N', b'G', 0xff, 0xfe]).unwrap();
        let err = read(&path, Some("blob")).unwrap_err();
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
    fn directories_yield_the_formats_recall_reads_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("sub/b.md"), "b").unwrap();
        std::fs::write(dir.path().join("sub/d.PDF"), "d").unwrap();
        std::fs::write(dir.path().join("e.htm"), "e").unwrap();
        std::fs::write(dir.path().join("c.bin"), "c").unwrap();
        let found = discover_files(&[dir.path().to_path_buf(), dir.path().join("missing")], false);
        assert_eq!(found.files.len(), 4, "{:?}", found.files);
        assert_eq!(found.errors.len(), 1);
        assert!(found.errors[0].to_string().contains("missing"));
    }

    fn mkfifo(path: &Path) {
        rustix::fs::mkfifoat(rustix::fs::CWD, path, rustix::fs::Mode::from_raw_mode(0o600)).expect("mkfifo");
    }

    #[test]
    fn only_regular_files_are_read_and_a_named_pipe_never_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        mkfifo(&dir.path().join("pipe.txt"));
        let found = discover_files(&[dir.path().to_path_buf()], false);
        assert_eq!(found.files, [dir.path().join("a.txt")]);
        assert!(found.skipped[0].contains("named pipe"), "{:?}", found.skipped);
        // Named explicitly, it is an error that says why, not a hang.
        let named = discover_files(&[dir.path().join("pipe.txt")], false);
        assert!(named.files.is_empty());
        assert!(named.errors[0]
            .to_string()
            .contains("not a regular file (a named pipe)"));
        // Read directly (a path swapped for a pipe after the walk): refused at once.
        let err = read(&dir.path().join("pipe.txt"), None).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn symlink_loops_end_and_a_file_reached_twice_is_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a").unwrap();
        std::fs::write(root.join("b.md"), "b").unwrap();
        std::os::unix::fs::symlink(&root, root.join("self1")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("self2")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("again.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling.txt")).unwrap();

        let plain = discover_files(std::slice::from_ref(&root), false);
        assert_eq!(plain.files.len(), 2, "{:?}", plain.files);
        assert!(plain.errors.is_empty(), "{:?}", plain.errors);
        assert_eq!(
            plain.skipped.len(),
            3,
            "two links to directories and a dangling one: {:?}",
            plain.skipped
        );

        let followed = discover_files(&[root.clone(), root.join("a.txt")], true);
        assert_eq!(followed.files.len(), 2, "{:?}", followed.files);
        let loops = followed
            .errors
            .iter()
            .filter(|e| e.to_string().contains("symlink loop"))
            .count();
        assert_eq!(loops, 2, "{:?}", followed.errors);
        assert_eq!(
            followed.errors.len(),
            3,
            "the loops and the dangling link: {:?}",
            followed.errors
        );
    }
}
