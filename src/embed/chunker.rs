//! Token-aware chunking. A text is tokenised once; windows of word pieces that fit the model's sequence
//! length (with [CLS], the title and [SEP]) are cut with a fixed token overlap, and each maps back to
//! exact character offsets. Every token of the text lands in some chunk: nothing is silently truncated.

use std::sync::Arc;

use tokenizers::Tokenizer;

use super::EmbedError;

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

    pub fn chunk(&self, title: &str, text: &str) -> Result<Vec<Chunk>, EmbedError> {
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

        let mut chars = CharIndex::new(text);
        if ids.is_empty() {
            return Ok(vec![Chunk {
                index: 0,
                char_start: 0,
                char_end: chars.at(text.len()),
                text: text.to_owned(),
                input_ids: input(&[]),
                text_tokens: 0,
            }]);
        }
        let mut chunks = Vec::new();
        let mut start = 0usize;
        loop {
            let end = (start + budget).min(ids.len());
            let byte_start = if start == 0 { 0 } else { offsets[start].0 };
            // A chunk runs up to where the next token after it begins, so the whitespace between tokens
            // is covered too; the last chunk runs to the end of the text.
            let byte_end = if end == ids.len() { text.len() } else { offsets[end].0 };
            chunks.push(Chunk {
                index: chunks.len(),
                char_start: chars.at(byte_start),
                char_end: chars.at(byte_end),
                text: text[byte_start..byte_end].to_owned(),
                input_ids: input(&ids[start..end]),
                text_tokens: end - start,
            });
            if end == ids.len() {
                break;
            }
            start = end - overlap;
        }
        Ok(chunks)
    }
}

/// Byte offset to character offset, for offsets that arrive in increasing order (with restarts).
struct CharIndex<'a> {
    text: &'a str,
    byte: usize,
    chars: usize,
}

impl<'a> CharIndex<'a> {
    fn new(text: &'a str) -> Self {
        CharIndex {
            text,
            byte: 0,
            chars: 0,
        }
    }

    fn at(&mut self, byte: usize) -> usize {
        if byte < self.byte {
            self.byte = 0;
            self.chars = 0;
        }
        self.chars += self.text[self.byte..byte].chars().count();
        self.byte = byte;
        self.chars
    }
}
