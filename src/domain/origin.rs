//! Where a document's text came from when it was extracted from a file (a PDF, a web page, Markdown):
//! the original's media type, size and SHA-256, and where its pages and sections lie in the text. The
//! event keeps this and not the file, so that a citation ("page 7, section Rollback") can be checked
//! against the original by its hash.

use serde::{Deserialize, Serialize};

use super::DomainError;

/// The most pages or sections one document may describe; far above any real document, it bounds what a
/// hostile payload can make every chunk look through.
pub const MAX_SPANS: usize = 100_000;
/// The deepest heading path kept (Markdown and HTML have six levels).
pub const MAX_HEADING_DEPTH: usize = 6;
/// The longest heading kept, in bytes; longer ones are cut at a character boundary when extracted.
pub const MAX_HEADING_BYTES: usize = 512;

/// The original file of an extracted document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// `application/pdf`, `text/html`, `text/markdown` or `text/plain`.
    pub media_type: String,
    /// The original's size in bytes.
    pub bytes: u64,
    /// The original's SHA-256, lowercase hex.
    pub sha256: String,
    /// PDF pages in order, as character ranges of the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pages: Vec<PageSpan>,
    /// Sections under their heading paths, in order, as character ranges of the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionSpan>,
}

/// One page: its number (1-based, as a viewer shows it) and its text's characters `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageSpan {
    pub page: u32,
    pub start: usize,
    pub end: usize,
}

/// The text under one heading, up to the next heading of any level: the heading path from the top
/// (`["Runbook", "Rollback"]`) and the characters `[start, end)`, the heading's own line included.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionSpan {
    pub path: Vec<String>,
    pub start: usize,
    pub end: usize,
}

/// Known media types of originals; anything else was not extracted by recall.
pub const MEDIA_TYPES: [&str; 4] = ["application/pdf", "text/html", "text/markdown", "text/plain"];

impl Origin {
    /// Checks the origin against the text it describes (`text_chars` characters long): a known media
    /// type, a SHA-256, and pages and sections that are in order, do not overlap and lie inside the text.
    pub fn check(&self, text_chars: usize) -> Result<(), DomainError> {
        let bad = |reason: String| DomainError::InvalidOrigin { reason };
        if !MEDIA_TYPES.contains(&self.media_type.as_str()) {
            return Err(bad(format!(
                "unknown media type {:?}; one of {}",
                self.media_type.chars().take(100).collect::<String>(),
                MEDIA_TYPES.join(", ")
            )));
        }
        if self.sha256.len() != 64
            || !self
                .sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("the sha256 must be 64 lowercase hex digits".into()));
        }
        if self.pages.len() > MAX_SPANS || self.sections.len() > MAX_SPANS {
            return Err(bad(format!("more than {MAX_SPANS} pages or sections")));
        }
        let ranges = |spans: &mut dyn Iterator<Item = (usize, usize)>, what: &str| -> Result<(), DomainError> {
            let mut last_end = 0;
            for (start, end) in spans {
                if start < last_end || end < start || end > text_chars {
                    return Err(bad(format!(
                        "{what} [{start}, {end}) is out of order or outside the text of {text_chars} characters"
                    )));
                }
                last_end = end;
            }
            Ok(())
        };
        ranges(&mut self.pages.iter().map(|p| (p.start, p.end)), "a page")?;
        ranges(&mut self.sections.iter().map(|s| (s.start, s.end)), "a section")?;
        if self.pages.windows(2).any(|w| w[1].page <= w[0].page) || self.pages.first().is_some_and(|p| p.page == 0) {
            return Err(bad("page numbers must start at 1 or later and increase".into()));
        }
        for section in &self.sections {
            if section.path.is_empty() || section.path.len() > MAX_HEADING_DEPTH {
                return Err(bad(format!(
                    "a heading path has {} levels; 1 to {MAX_HEADING_DEPTH}",
                    section.path.len()
                )));
            }
            if section
                .path
                .iter()
                .any(|h| h.len() > MAX_HEADING_BYTES || h.contains('\0'))
            {
                return Err(bad(format!(
                    "a heading is over {MAX_HEADING_BYTES} bytes or holds a NUL"
                )));
            }
        }
        Ok(())
    }

    /// The first and last page that characters `[start, end)` fall on, if the original had pages.
    pub fn pages_of(&self, start: usize, end: usize) -> Option<(u32, u32)> {
        // Pages are in order (checked): skip those that end before the range, stop at the first after it.
        let from = self.pages.partition_point(|p| p.end <= start);
        let mut touching = self.pages[from..]
            .iter()
            .take_while(|p| p.start < end.max(start + 1))
            .filter(|p| p.end > start);
        let first = touching.next()?;
        Some((first.page, touching.last().unwrap_or(first).page))
    }

    /// The heading path of the section holding most of characters `[start, end)`: the one to cite.
    pub fn section_of(&self, start: usize, end: usize) -> Option<&[String]> {
        let from = self.sections.partition_point(|s| s.end <= start);
        self.sections[from..]
            .iter()
            .take_while(|s| s.start < end.max(start + 1))
            .map(|s| (s.end.min(end).saturating_sub(s.start.max(start)), s))
            // The first of equal overlaps: `max_by_key` would take the last.
            .fold(None::<(usize, &SectionSpan)>, |best, (overlap, s)| match best {
                Some((b, _)) if b >= overlap => best,
                _ => Some((overlap, s)),
            })
            .map(|(_, s)| s.path.as_slice())
    }

    /// Where the sections begin (character offsets): the first places a chunk should end at.
    pub fn section_starts(&self) -> Vec<usize> {
        self.sections.iter().map(|s| s.start).collect()
    }
}

/// Byte offset to character offset (what chunks and origins count in), for offsets that arrive in
/// increasing order (with restarts): one pass over the text however many are asked.
pub(crate) struct CharIndex<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        CharIndex {
            text,
            byte: 0,
            chars: 0,
        }
    }

    pub(crate) fn at(&mut self, byte: usize) -> usize {
        if byte < self.byte {
            self.byte = 0;
            self.chars = 0;
        }
        self.chars += self.text[self.byte..byte].chars().count();
        self.byte = byte;
        self.chars
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        Origin {
            media_type: "text/markdown".into(),
            bytes: 10,
            sha256: "a".repeat(64),
            pages: vec![
                PageSpan {
                    page: 1,
                    start: 0,
                    end: 10,
                },
                PageSpan {
                    page: 2,
                    start: 12,
                    end: 30,
                },
            ],
            sections: vec![
                SectionSpan {
                    path: vec!["A".into()],
                    start: 0,
                    end: 8,
                },
                SectionSpan {
                    path: vec!["A".into(), "B".into()],
                    start: 8,
                    end: 30,
                },
            ],
        }
    }

    #[test]
    fn a_chunk_cites_its_pages_and_the_section_holding_most_of_it() {
        let o = origin();
        assert_eq!(o.pages_of(0, 5), Some((1, 1)));
        assert_eq!(o.pages_of(5, 20), Some((1, 2)));
        assert_eq!(o.pages_of(10, 12), None, "the gap between pages is on neither");
        assert_eq!(o.section_of(0, 10).unwrap(), ["A"]);
        assert_eq!(o.section_of(6, 30).unwrap(), ["A", "B"]);
        assert_eq!(o.section_of(0, 16).unwrap(), ["A"], "equal overlaps go to the first");
        assert_eq!(o.check(30), Ok(()));
    }

    #[test]
    fn character_offsets_follow_multibyte_text() {
        let mut index = CharIndex::new("aé€b");
        let at: Vec<usize> = [0, 1, 3, 6, 7].iter().map(|&b| index.at(b)).collect();
        assert_eq!(at, vec![0, 1, 2, 3, 4]);
        assert_eq!(index.at(1), 1, "an earlier offset starts again");
    }

    #[test]
    fn an_origin_that_does_not_fit_its_text_is_refused() {
        assert!(origin().check(29).is_err(), "a page past the end");
        let mut o = origin();
        o.pages.swap(0, 1);
        assert!(o.check(30).is_err(), "pages out of order");
        let mut o = origin();
        o.media_type = "image/png".into();
        assert!(o.check(30).unwrap_err().to_string().contains("unknown media type"));
        let mut o = origin();
        o.sections[0].path.clear();
        assert!(o.check(30).is_err(), "an empty heading path");
        let mut o = origin();
        o.sha256 = "A".repeat(64);
        assert!(o.check(30).is_err(), "upper-case hex");
    }
}
