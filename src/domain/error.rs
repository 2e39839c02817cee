use thiserror::Error;

/// Everything a command or its input can violate. Each message says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DomainError {
    #[error("invalid document id {id:?}: {reason}; ids are 1 to 256 characters of A-Z a-z 0-9 . _ : / @ -")]
    InvalidDocumentId { id: String, reason: &'static str },
    #[error("invalid scope {scope:?}: {reason}; scopes are 1 to 64 characters of A-Z a-z 0-9 _ -")]
    InvalidScope { scope: String, reason: &'static str },
    #[error(
        "document {id:?} already exists in scope {scope:?} at version {version}; update it instead, or remove it first"
    )]
    AlreadyExists { scope: String, id: String, version: u64 },
    #[error("document {id:?} does not exist in scope {scope:?}; add it first")]
    NotFound { scope: String, id: String },
    #[error("document {id:?} in scope {scope:?} was removed at version {version}; add it again to bring it back")]
    Removed { scope: String, id: String, version: u64 },
    #[error("version conflict on document {id:?}: expected version {expected}, but it is at version {actual}; reload it and retry")]
    VersionConflict { id: String, expected: u64, actual: u64 },
    #[error("the text is empty or only whitespace; give the document some text")]
    EmptyText,
    #[error("the text is not valid UTF-8 (first bad byte at offset {offset}); convert it to UTF-8 first")]
    NotUtf8 { offset: usize },
    #[error("the {field} contains a NUL character at byte {offset}; remove it (PostgreSQL text cannot hold NUL)")]
    ContainsNul { field: &'static str, offset: usize },
    #[error(
        "the text is {bytes} bytes, over the limit of {limit} bytes; split the document or raise RECALL_MAX_TEXT_BYTES"
    )]
    TextTooLong { bytes: usize, limit: usize },
    #[error("the title is {bytes} bytes, over the limit of {limit} bytes; shorten it")]
    TitleTooLong { bytes: usize, limit: usize },
    #[error("metadata must be a JSON object, not {found}; wrap it as {{\"key\": value}}")]
    MetadataNotObject { found: &'static str },
    #[error("metadata is {bytes} bytes of JSON, over the limit of {limit} bytes; keep large data in the text")]
    MetadataTooLarge { bytes: usize, limit: usize },
    #[error("the document's origin does not describe its text: {reason}")]
    InvalidOrigin { reason: String },
}
