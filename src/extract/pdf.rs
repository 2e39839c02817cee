//! A PDF's text layer, page by page (pdf-extract over lopdf). Each page's text is kept apart so that a
//! chunk can cite its pages; a PDF that needs a password, has no text layer, or is denser than any real
//! document is refused with what to do. The parser panics on some malformed files: that becomes an
//! error here, and the worker process around it bounds time and memory.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pdf_extract::{MediaBox, OutputDev, OutputError, PlainTextOutput, Transform};

use super::{ExtractError, Extracted, Format};
use crate::domain::{Limits, PageSpan};

/// Text-showing operations a document may have; a dense real page has a few thousand.
pub const MAX_TEXT_RUNS: u64 = 2_000_000;

pub fn extract(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    match catch_unwind(AssertUnwindSafe(|| extract_unguarded(bytes, limits))) {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(ExtractError::ParserFailed {
                format: "PDF".into(),
                detail: super::truncate(&detail, 200),
            })
        }
    }
}

fn corrupt(detail: impl std::fmt::Display) -> ExtractError {
    ExtractError::Corrupt {
        format: "PDF".into(),
        detail: super::truncate(&detail.to_string(), 300),
    }
}

fn extract_unguarded(bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let mut doc = pdf_extract::Document::load_mem(bytes).map_err(|e| match e {
        pdf_extract::Error::Decryption(_) => ExtractError::Encrypted,
        other => corrupt(other),
    })?;
    // A PDF protected only by an owner password opens with the empty user password, as viewers do.
    if doc.is_encrypted() && doc.decrypt("").is_err() {
        return Err(ExtractError::Encrypted);
    }
    let title = info_title(&doc);
    let mut counts = Counts {
        text_bytes: 0,
        runs: 0,
        limit_bytes: limits.max_text_bytes,
        over: None,
    };
    let mut text = String::new();
    let mut chars = 0usize;
    let mut pages = Vec::new();
    for (&number, _) in doc.get_pages().iter() {
        let mut page = String::new();
        let mut out = Bounded {
            plain: PlainTextOutput::new(&mut page),
            counts: &mut counts,
        };
        if let Err(e) = pdf_extract::output_doc_page(&doc, &mut out, number) {
            return Err(counts
                .over
                .take()
                .unwrap_or_else(|| corrupt(format!("page {number}: {e}"))));
        }
        let page = page.trim();
        if !page.is_empty() && !text.is_empty() {
            // Pages are paragraphs to the chunker: a chunk prefers to end where a page does.
            text.push_str("\n\n");
            chars += 2;
        }
        let start = chars;
        text.push_str(page);
        chars += page.chars().count();
        pages.push(PageSpan {
            page: number,
            start,
            end: chars,
        });
    }
    if pages.is_empty() {
        return Err(corrupt("it has no pages"));
    }
    Ok(Extracted {
        format: Format::Pdf,
        title,
        text,
        pages,
        sections: Vec::new(),
    })
}

/// The document's own title (its Info dictionary), if it has one.
fn info_title(doc: &pdf_extract::Document) -> Option<String> {
    let info = doc.trailer.get(b"Info").ok()?;
    let info = match info {
        pdf_extract::Object::Reference(id) => doc.get_dictionary(*id).ok()?,
        pdf_extract::Object::Dictionary(d) => d,
        _ => return None,
    };
    let title = pdf_extract::decode_text_string(info.get(b"Title").ok()?).ok()?;
    Some(title.replace('\0', "")).filter(|t| !t.trim().is_empty())
}

/// Plain text of one page, refusing a document whose text passes the text limit or whose text runs pass
/// MAX_TEXT_RUNS: each is stopped as soon as it is seen, not after the whole file is parsed.
struct Bounded<'a> {
    plain: PlainTextOutput<&'a mut String>,
    counts: &'a mut Counts,
}

/// What the pages so far have produced.
struct Counts {
    text_bytes: usize,
    runs: u64,
    limit_bytes: usize,
    over: Option<ExtractError>,
}

impl Bounded<'_> {
    fn stop(&mut self, error: ExtractError) -> Result<(), OutputError> {
        self.counts.over = Some(error);
        Err(OutputError::IoError(std::io::Error::other("over a limit")))
    }
}

impl OutputDev for Bounded<'_> {
    fn begin_page(
        &mut self,
        page_num: u32,
        media_box: &MediaBox,
        art_box: Option<(f64, f64, f64, f64)>,
    ) -> Result<(), OutputError> {
        self.plain.begin_page(page_num, media_box, art_box)
    }
    fn end_page(&mut self) -> Result<(), OutputError> {
        self.plain.end_page()
    }
    fn output_character(
        &mut self,
        trm: &Transform,
        width: f64,
        spacing: f64,
        font_size: f64,
        char: &str,
    ) -> Result<(), OutputError> {
        self.counts.text_bytes += char.len();
        if self.counts.text_bytes > self.counts.limit_bytes {
            let limit = self.counts.limit_bytes;
            return self.stop(ExtractError::TextTooLong { limit });
        }
        self.plain.output_character(trm, width, spacing, font_size, char)
    }
    fn begin_word(&mut self) -> Result<(), OutputError> {
        self.counts.runs += 1;
        if self.counts.runs > MAX_TEXT_RUNS {
            return self.stop(ExtractError::TooComplex {
                format: "PDF".into(),
                what: "text runs".into(),
                limit: MAX_TEXT_RUNS,
            });
        }
        self.plain.begin_word()
    }
    fn end_word(&mut self) -> Result<(), OutputError> {
        self.plain.end_word()
    }
    fn end_line(&mut self) -> Result<(), OutputError> {
        self.plain.end_line()
    }
    // Strokes and fills carry no text: the trait's defaults ignore them, as the plain-text output does.
}
