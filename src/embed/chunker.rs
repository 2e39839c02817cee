//! Token-aware chunking. A text is tokenised once; windows of word pieces that fit the model's sequence
//! length (with [CLS], the title and [SEP]) are cut with a token overlap, and each maps back to exact
//! character offsets. Every token of the text lands in some chunk: nothing is silently truncated.
//!
//! A window that cannot hold the rest of the text ends at the most natural place inside it: at a
//! section's heading (then the next chunk starts there, with no overlap across the heading), else in
//! its second half at a paragraph break, a sentence's end or a line break, and only then between two
//! word pieces.

use std::sync::Arc;

use tokenizers::Tokenizer;

use super::EmbedError;
use crate::domain::CharIndex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// The model's sequence length, special tokens included.
    pub max_tokens: usize,
    /// Word pieces shared by consecutive chunks.
    pub overlap: usize,
    /// Embed "title text" rather than the text alone (how BEIR/MTEB evaluate this model).
    pub title_prefix: bool,
}

/// One chunk of a document: where it lies in the text and the exact model input for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    /// Offsets in Unicode scalar values (characters), end exclusive.
    pub char_start: usize,
    pub char_end: usize,
    pub text: String,
    /// [CLS] + title + window + [SEP], ready for the model.
    pub input_ids: Vec<u32>,
    /// Word pieces of the text in this chunk (title and special tokens excluded).
    pub text_tokens: usize,
}

#[derive(Clone)]
pub struct Chunker {
    tokenizer: Arc<Tokenizer>,
    cls: u32,
    sep: u32,
    options: ChunkOptions,
}

impl Chunker {
    pub(crate) fn new(tokenizer: Arc<Tokenizer>, cls: u32, sep: u32, options: ChunkOptions) -> Self {
        Chunker {
            tokenizer,
            cls,
            sep,
            options,
        }
    }

    pub fn options(&self) -> ChunkOptions {
        self.options
    }

    /// The chunks of `text`; `section_starts` are the character offsets where its sections begin
    /// (ascending; empty for text without headings), the first places a chunk ends at.
    pub fn chunk(&self, title: &str, text: &str, section_starts: &[usize]) -> Result<Vec<Chunk>, EmbedError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        let offsets = encoding.get_offsets();
        let mut title_ids = if self.options.title_prefix && !title.trim().is_empty() {
            self.tokenizer
                .encode(title, false)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?
                .get_ids()
                .to_vec()
        } else {
            Vec::new()
        };
        // A very long title may take at most half of the sequence; the text always gets the rest.
        title_ids.truncate((self.options.max_tokens - 2) / 2);
        let budget = self.options.max_tokens - 2 - title_ids.len();
        let overlap = self.options.overlap.min(budget / 2);
        let input = |window: &[u32]| {
            let mut v = Vec::with_capacity(window.len() + title_ids.len() + 2);
            v.push(self.cls);
            v.extend_from_slice(&title_ids);
            v.extend_from_slice(window);
            v.push(self.sep);
            v
        };

        // Where each token begins, in bytes and characters; a chunk runs up to where the next token after
        // it begins, so the whitespace between tokens is covered too, and the last one to the end.
        // (Kept non-decreasing, whatever the tokenizer reports, so that every slice is a valid range.)
        let mut byte_starts: Vec<usize> = Vec::with_capacity(ids.len() + 1);
        for i in 0..=ids.len() {
            let at = match i {
                0 => 0,
                i if i == ids.len() => text.len(),
                i => offsets[i].0.min(text.len()),
            };
            byte_starts.push(at.max(byte_starts.last().copied().unwrap_or(0)));
        }
        let mut chars = CharIndex::new(text);
        let char_starts: Vec<usize> = byte_starts.iter().map(|&b| chars.at(b)).collect();
        let byte_at = |i: usize| byte_starts[i];
        let char_at = |i: usize| char_starts[i];

        let mut chunks = Vec::new();
        let mut push = |byte_start: usize, byte_end: usize, char_start: usize, window: &[u32]| {
            let text = &text[byte_start..byte_end];
            chunks.push(Chunk {
                index: chunks.len(),
                char_start,
                char_end: char_start + text.chars().count(),
                text: text.to_owned(),
                input_ids: input(window),
                text_tokens: window.len(),
            });
        };
        if ids.is_empty() {
            // Nothing the model reads (whitespace, control characters): kept, in bounded pieces.
            for (from, to, at) in pieces(text, 0, text.len(), 0) {
                push(from, to, at, &[]);
            }
            return Ok(chunks);
        }
        // The tokens that open a section: a chunk ending just before one ends at the heading.
        let heading_tokens: Vec<usize> = section_starts
            .iter()
            .map(|&h| char_starts[..ids.len()].partition_point(|&c| c < h))
            .filter(|&j| j > 0 && j < ids.len())
            .collect();
        let boundary = Boundaries {
            text,
            offsets,
            byte_starts: &byte_starts,
            heading_tokens: &heading_tokens,
        };
        let mut start = 0usize;
        loop {
            // As many tokens as fit the budget in word pieces and in characters.
            let mut end = start;
            while end < ids.len() && end - start < budget && char_at(end + 1) - char_at(start) <= MAX_CHUNK_CHARS {
                end += 1;
            }
            let mut at_heading = false;
            if end < ids.len() && end > start + 1 {
                (end, at_heading) = boundary.natural_end(start, end);
            }
            if end == start {
                // One word piece (with the text up to the next) spans more characters than a chunk may
                // hold: an unknown "word" of megabytes, say. Its text is cut into pieces of the limit,
                // each embedded as that word piece, so that no row exceeds what PostgreSQL can index.
                for (from, to, at) in pieces(text, byte_at(start), byte_at(start + 1), char_at(start)) {
                    push(from, to, at, &ids[start..start + 1]);
                }
                end = start + 1;
            } else {
                push(byte_at(start), byte_at(end), char_at(start), &ids[start..end]);
            }
            if end == ids.len() {
                break;
            }
            // The overlap, unless the window was too short (cut by characters) to step past it, or it
            // ended at a heading: a new section starts clean.
            start = if end - start > overlap && !at_heading {
                end - overlap
            } else {
                end
            };
        }
        Ok(chunks)
    }
}

/// Where a window of tokens may end: token `j` ends a chunk `[start, j)`, and the text between token
/// `j - 1` and token `j` says how natural a place that is.
struct Boundaries<'a> {
    text: &'a str,
    offsets: &'a [(usize, usize)],
    byte_starts: &'a [usize],
    heading_tokens: &'a [usize],
}

impl Boundaries<'_> {
    /// The end for a full window `[start, end)` (`end` is before the text's last token), and whether
    /// it is at a heading. A heading wins anywhere past the window's first eighth (a short section
    /// before it is a chunk of its own); a paragraph break, a sentence's end or a line break win in its
    /// second half, so that chunks stay at least half full.
    fn natural_end(&self, start: usize, end: usize) -> (usize, bool) {
        let len = end - start;
        let earliest_heading = start + (len / 8).max(1);
        if let Some(&j) = self
            .heading_tokens
            .iter()
            .rev()
            .find(|&&j| j >= earliest_heading && j <= end)
        {
            return (j, true);
        }
        let earliest = start + (len / 2).max(1);
        let gap = |j: usize| {
            let from = self.offsets[j - 1]
                .1
                .clamp(self.byte_starts[j - 1], self.byte_starts[j]);
            &self.text[from..self.byte_starts[j]]
        };
        let paragraph = |j: usize| gap(j).matches('\n').count() >= 2;
        let sentence = |j: usize| {
            let g = gap(j);
            let before = &self.text[self.byte_starts[j - 1]..self.byte_starts[j] - g.len()];
            !g.is_empty() && before.ends_with(['.', '!', '?', '。', '！', '？'])
        };
        let line = |j: usize| gap(j).contains('\n');
        for natural in [&paragraph as &dyn Fn(usize) -> bool, &sentence, &line] {
            if let Some(j) = (earliest..=end).rev().find(|&j| natural(j)) {
                return (j, false);
            }
        }
        (end, false)
    }
}

/// The most characters one chunk holds, whatever the tokenizer makes of the text: ordinary prose fills
/// its 256 word pieces in about 1,200, so only text the tokenizer cannot split (no separators, control
/// characters) reaches it. Bounds each row's text and its tsvector (PostgreSQL refuses over 1 MB).
pub const MAX_CHUNK_CHARS: usize = 4096;

/// `text[from..to]` cut into pieces of at most MAX_CHUNK_CHARS characters (one empty piece for an empty
/// range): (byte start, byte end, character start), given the character offset of `from`.
fn pieces(text: &str, from: usize, to: usize, char_from: usize) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    let mut piece_start = from;
    let mut piece_char = char_from;
    for (n, (i, _)) in text[from..to].char_indices().enumerate() {
        if n > 0 && n % MAX_CHUNK_CHARS == 0 {
            out.push((piece_start, from + i, piece_char));
            piece_start = from + i;
            piece_char = char_from + n;
        }
    }
    out.push((piece_start, to, piece_char));
    out
}
