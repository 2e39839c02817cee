//! Files people have (PDF, web pages, Markdown, plain text) into a document's text and its structure:
//! PDF pages, the heading tree. The format is sniffed from the content, with the name or declared media
//! type as a tie-breaker. PDF and HTML parsers run in a child process with time and memory bounds
//! (`Extractor`), so that one hostile file cannot hang or exhaust the process that asked; Markdown and
//! plain text are parsed in linear time in-process.

mod html;
mod markdown;
mod pdf;
mod sandbox;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::domain::{DocumentContent, DomainError, Limits, Metadata, Origin, PageSpan, SectionSpan, Text, Title};

pub use sandbox::{run_worker, ExtractLimits, Extractor, WorkerArgs};

/// The formats recall extracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Pdf,
    Html,
    Markdown,
    Text,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Pdf, Format::Html, Format::Markdown, Format::Text];

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Pdf => "application/pdf",
            Format::Html => "text/html",
            Format::Markdown => "text/markdown",
            Format::Text => "text/plain",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Pdf => "pdf",
            Format::Html => "html",
            Format::Markdown => "markdown",
            Format::Text => "text",
        }
    }

    /// The format a media type names (parameters such as `; charset=utf-8` ignored); `None` for
    /// `application/octet-stream` and anything recall does not read.
    pub fn from_media_type(media_type: &str) -> Option<Format> {
        let essence = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/pdf" | "application/x-pdf" => Some(Format::Pdf),
            "text/html" | "application/xhtml+xml" => Some(Format::Html),
            "text/markdown" | "text/x-markdown" => Some(Format::Markdown),
            "text/plain" => Some(Format::Text),
            _ => None,
        }
    }

    /// The format a file name's extension suggests.
    pub fn from_name(name: &str) -> Option<Format> {
        let extension = std::path::Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "pdf" => Some(Format::Pdf),
            "html" | "htm" | "xhtml" => Some(Format::Html),
            "md" | "markdown" | "mdown" | "mkd" => Some(Format::Markdown),
            "txt" | "text" => Some(Format::Text),
            _ => None,
        }
    }

    /// What the bytes are. A PDF is known by its header wherever it came from; otherwise a declared
    /// media type or the name's extension decides, and without either, HTML is known by its opening
    /// tags (the WHATWG sniffing rule) and the rest is read as text.
    pub fn sniff(bytes: &[u8], hint: &Hint) -> Format {
        if looks_like_pdf(bytes) {
            return Format::Pdf;
        }
        if let Some(declared) = hint.media_type.as_deref().and_then(Format::from_media_type) {
            return declared;
        }
        if let Some(named) = hint.name.as_deref().and_then(Format::from_name) {
            return named;
        }
        if looks_like_html(bytes) {
            Format::Html
        } else {
            Format::Text
        }
    }
}

/// What the caller knows about a file besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct Hint {
    /// Its file name (for the extension and the default title).
    pub name: Option<String>,
    /// Its declared media type (an HTTP Content-Type).
    pub media_type: Option<String>,
}

/// PDF readers accept the header anywhere in the first 1,024 bytes.
fn looks_like_pdf(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(1024)].windows(5).any(|w| w == b"%PDF-")
}

fn looks_like_html(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(1024)];
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = head.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(head.len());
    let head = head[start..].to_ascii_lowercase();
    const TAGS: [&[u8]; 17] = [
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<script",
        b"<iframe",
        b"<h1",
        b"<div",
        b"<font",
        b"<table",
        b"<a",
        b"<style",
        b"<title",
        b"<b",
        b"<body",
        b"<br",
        b"<p",
        b"<!--",
    ];
    TAGS.iter().any(|tag| {
        head.starts_with(tag)
            // A tag name ends at a space or `>` (so `<bold` is not `<b`); `<!--` needs no end.
            && (tag == b"<!--" || tag == b"<!doctype html" || matches!(head.get(tag.len()), Some(b' ' | b'>' | b'\t' | b'\n' | b'\r')))
    })
}

/// A document's text as extracted, with where its pages and sections lie (character offsets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extracted {
    pub format: Format,
    /// The title the file gives itself (an HTML page's title, a PDF's), if any.
    pub title: Option<String>,
    pub text: String,
    pub pages: Vec<PageSpan>,
    pub sections: Vec<SectionSpan>,
}

/// Why a file could not be turned into a document. Nothing is appended for it.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ExtractError {
    #[error("the file is {bytes} bytes, over the limit of {limit} bytes; split it or raise RECALL_MAX_FILE_BYTES")]
    TooLarge { bytes: u64, limit: u64 },
    #[error("the PDF is encrypted with a password; decrypt it first (for example `qpdf --decrypt --password=... in.pdf out.pdf`)")]
    Encrypted,
    #[error("the PDF has no text layer ({pages} pages of images only): run OCR first (for example `ocrmypdf in.pdf out.pdf`)")]
    NoTextLayer { pages: u32 },
    #[error("not a readable {format}: {detail}; is the file complete and not corrupt?")]
    Corrupt { format: String, detail: String },
    #[error("the HTML has no readable content (no text outside navigation, scripts and markup)")]
    NoContent,
    #[error("the {format} has more than {limit} {what}; a file this dense is refused rather than parsed")]
    TooComplex { format: String, what: String, limit: u64 },
    #[error("extracting the {format} took longer than {seconds} s; raise RECALL_EXTRACT_TIMEOUT if the file is sound")]
    TimedOut { format: String, seconds: u64 },
    #[error("extracting the {format} needed more than {mib} MiB of memory (a decompression bomb, or a page of millions of operations?); raise RECALL_EXTRACT_MEMORY_MB if the file is sound")]
    OutOfMemory { format: String, mib: u64 },
    #[error("the {format} parser failed on this file ({detail}); it is probably corrupt")]
    ParserFailed { format: String, detail: String },
    #[error("cannot run the extractor {program:?}: {detail}; set RECALL_EXTRACT_PROGRAM to the recall binary")]
    NoWorker { program: String, detail: String },
    #[error("the extracted text passed the limit of {limit} bytes; split the document or raise RECALL_MAX_TEXT_BYTES")]
    TextTooLong { limit: usize },
    /// The document the file became breaks a rule of the domain (its text is empty, not UTF-8...).
    #[error("{0}")]
    #[serde(skip)]
    Invalid(DomainError),
}

impl From<DomainError> for ExtractError {
    fn from(error: DomainError) -> Self {
        ExtractError::Invalid(error)
    }
}

/// Extracts `bytes` (already sniffed as `format`) in this process, with no time or memory bound: what
/// the sandboxed worker runs, and what Markdown and plain text use directly.
pub fn extract_in_process(bytes: &[u8], format: Format, limits: &Limits) -> Result<Extracted, ExtractError> {
    match format {
        Format::Pdf => pdf::extract(bytes, limits),
        Format::Html => html::extract(bytes, limits),
        Format::Markdown => {
            let text = utf8(bytes)?;
            let sections = markdown::sections(&text);
            Ok(Extracted {
                format,
                title: None,
                text,
                pages: Vec::new(),
                sections,
            })
        }
        Format::Text => Ok(Extracted {
            format,
            title: None,
            text: utf8(bytes)?,
            pages: Vec::new(),
            sections: Vec::new(),
        }),
    }
}

fn utf8(bytes: &[u8]) -> Result<String, ExtractError> {
    let text = std::str::from_utf8(without_bom(bytes)).map_err(|e| DomainError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    Ok(text.to_owned())
}

/// Bytes without the UTF-8 byte order mark some editors put at the start.
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

impl Extracted {
    /// The document: its text checked against the limits, its title (the file's own, else
    /// `fallback_title`), and the origin (the original's media type, size and SHA-256 with the pages and
    /// sections). Plain text keeps no origin: the text is the file.
    pub fn into_content(
        self,
        original: &[u8],
        fallback_title: &str,
        metadata: Metadata,
        limits: &Limits,
    ) -> Result<DocumentContent, ExtractError> {
        let title = match self.title.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => Title::parse(&truncate(t, Limits::MAX_TITLE_BYTES))?,
            _ => Title::parse(&truncate(fallback_title, Limits::MAX_TITLE_BYTES))?,
        };
        if self.format == Format::Pdf && self.text.trim().is_empty() {
            return Err(ExtractError::NoTextLayer {
                pages: self.pages.len() as u32,
            });
        }
        let text = Text::parse(self.text, limits)?;
        if self.format == Format::Text {
            return Ok(DocumentContent::plain(title, text, metadata));
        }
        let origin = Origin {
            media_type: self.format.media_type().to_owned(),
            bytes: original.len() as u64,
            sha256: hex::encode(Sha256::digest(original)),
            pages: self.pages,
            sections: self.sections,
        };
        Ok(DocumentContent::extracted(title, text, metadata, origin)?)
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(name: Option<&str>, media_type: Option<&str>) -> Hint {
        Hint {
            name: name.map(str::to_owned),
            media_type: media_type.map(str::to_owned),
        }
    }

    #[test]
    fn the_content_decides_before_the_name() {
        assert_eq!(Format::sniff(b"%PDF-1.7\n...", &hint(Some("a.txt"), None)), Format::Pdf);
        assert_eq!(Format::sniff(b"  <!DOCTYPE html><p>x", &hint(None, None)), Format::Html);
        assert_eq!(Format::sniff(b"<p>hello</p>", &hint(None, None)), Format::Html);
        assert_eq!(
            Format::sniff(b"<bold>not a tag we know", &hint(None, None)),
            Format::Text
        );
        assert_eq!(
            Format::sniff(b"<div>in markdown</div>", &hint(Some("a.md"), None)),
            Format::Markdown
        );
        assert_eq!(
            Format::sniff(b"# Title", &hint(None, Some("text/markdown; charset=utf-8"))),
            Format::Markdown
        );
        assert_eq!(Format::sniff(b"# Title", &hint(Some("notes"), None)), Format::Text);
        assert_eq!(Format::from_name("Page.HTM"), Some(Format::Html));
    }
}
