//! Newtypes that are parsed once at the edge, so the rest of the system never re-checks them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::DomainError;

/// Size limits a deployment may tune; the defaults follow the documented contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_text_bytes: usize,
}

impl Limits {
    pub const DEFAULT_MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;
    pub const MAX_TITLE_BYTES: usize = 1024;
    pub const MAX_METADATA_BYTES: usize = 64 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: Self::DEFAULT_MAX_TEXT_BYTES,
        }
    }
}

/// A client-chosen or generated document id: 1..256 characters of `[A-Za-z0-9._:/@-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DocumentId(String);

impl DocumentId {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let invalid = |reason| DomainError::InvalidDocumentId {
            id: raw.chars().take(300).collect(),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("it is empty"));
        }
        if raw.chars().count() > 256 {
            return Err(invalid("it is longer than 256 characters"));
        }
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || "._:/@-".contains(c)) {
            return Err(invalid("it contains a character outside the allowed set"));
        }
        Ok(DocumentId(raw.to_owned()))
    }

    /// A fresh, time-ordered id for clients that do not name their documents.
    pub fn generate() -> Self {
        DocumentId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DocumentId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        DocumentId::parse(&value)
    }
}

impl From<DocumentId> for String {
    fn from(value: DocumentId) -> Self {
        value.0
    }
}

impl std::fmt::Display for DocumentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant or collection: 1..64 characters of `[A-Za-z0-9_-]`. It never contains `:`, which is what
/// makes `scope:id` an unambiguous stream name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    pub const DEFAULT: &'static str = "default";

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let invalid = |reason| DomainError::InvalidScope {
            scope: raw.chars().take(100).collect(),
            reason,
        };
        if raw.is_empty() {
            return Err(invalid("it is empty"));
        }
        if raw.len() > 64 {
            return Err(invalid("it is longer than 64 characters"));
        }
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(invalid("it contains a character outside the allowed set"));
        }
        Ok(Scope(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Scope {
    fn default() -> Self {
        Scope(Self::DEFAULT.to_owned())
    }
}

impl TryFrom<String> for Scope {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Scope::parse(&value)
    }
}

impl From<Scope> for String {
    fn from(value: Scope) -> Self {
        value.0
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A document is identified by its scope and id together; this is also its event stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentKey {
    pub scope: Scope,
    pub id: DocumentId,
}

impl DocumentKey {
    pub fn new(scope: Scope, id: DocumentId) -> Self {
        DocumentKey { scope, id }
    }

    /// The event stream name, `scope:id`.
    pub fn stream_id(&self) -> String {
        format!("{}:{}", self.scope, self.id)
    }
}

fn reject_nul(field: &'static str, s: &str) -> Result<(), DomainError> {
    match s.find('\0') {
        Some(offset) => Err(DomainError::ContainsNul { field, offset }),
        None => Ok(()),
    }
}

/// A document title (possibly empty), at most 1 KiB.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        if raw.len() > Limits::MAX_TITLE_BYTES {
            return Err(DomainError::TitleTooLong {
                bytes: raw.len(),
                limit: Limits::MAX_TITLE_BYTES,
            });
        }
        reject_nul("title", raw)?;
        Ok(Title(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Document text: UTF-8, not blank, no NUL, within the configured limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Text(String);

impl Text {
    pub fn parse(raw: String, limits: &Limits) -> Result<Self, DomainError> {
        if raw.len() > limits.max_text_bytes {
            return Err(DomainError::TextTooLong {
                bytes: raw.len(),
                limit: limits.max_text_bytes,
            });
        }
        if raw.trim().is_empty() {
            return Err(DomainError::EmptyText);
        }
        reject_nul("text", &raw)?;
        Ok(Text(raw))
    }

    /// Text read from a file: the bytes must be UTF-8.
    pub fn from_bytes(raw: Vec<u8>, limits: &Limits) -> Result<Self, DomainError> {
        match String::from_utf8(raw) {
            Ok(s) => Text::parse(s, limits),
            Err(e) => Err(DomainError::NotUtf8 {
                offset: e.utf8_error().valid_up_to(),
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free-form metadata: a JSON object of at most 64 KiB serialised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    pub fn parse(value: Value) -> Result<Self, DomainError> {
        let found = match &value {
            Value::Object(_) => "",
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
        };
        let Value::Object(map) = value else {
            return Err(DomainError::MetadataNotObject { found });
        };
        let bytes = serde_json::to_vec(&map).map(|v| v.len()).unwrap_or(usize::MAX);
        if bytes > Limits::MAX_METADATA_BYTES {
            return Err(DomainError::MetadataTooLarge {
                bytes,
                limit: Limits::MAX_METADATA_BYTES,
            });
        }
        if let Some(offset) = serde_json::to_string(&map).ok().and_then(|s| s.find("\\u0000")) {
            return Err(DomainError::ContainsNul {
                field: "metadata",
                offset,
            });
        }
        Ok(Metadata(map))
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// What a document says: the part an update replaces as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentContent {
    pub title: Title,
    pub text: Text,
    pub metadata: Metadata,
    /// The file the text was extracted from, when it was (absent for text given as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: most documents have none, and the aggregate's decisions stay small.
    pub origin: Option<Box<super::Origin>>,
}

impl DocumentContent {
    /// Text given as text: no original file.
    pub fn plain(title: Title, text: Text, metadata: Metadata) -> Self {
        DocumentContent {
            title,
            text,
            metadata,
            origin: None,
        }
    }

    /// Text extracted from a file, with where its pages and sections lie; refused when the origin
    /// does not fit the text.
    pub fn extracted(title: Title, text: Text, metadata: Metadata, origin: super::Origin) -> Result<Self, DomainError> {
        origin.check(text.as_str().chars().count())?;
        Ok(DocumentContent {
            title,
            text,
            metadata,
            origin: Some(Box::new(origin)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn document_ids_accept_the_documented_alphabet() {
        for ok in ["a", "doc-1", "path/to/file.md", "user@host:42", &"x".repeat(256)] {
            assert_eq!(DocumentId::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "has space", "semi;colon", "quote'", "ünïcode", &"x".repeat(257)] {
            let err = DocumentId::parse(bad).unwrap_err();
            assert!(matches!(err, DomainError::InvalidDocumentId { .. }), "{bad}");
        }
        assert_ne!(DocumentId::generate(), DocumentId::generate());
    }

    #[test]
    fn scopes_cannot_contain_the_stream_separator() {
        assert!(Scope::parse("team_a-1").is_ok());
        for bad in ["", "a:b", "a/b", &"s".repeat(65)] {
            assert!(Scope::parse(bad).is_err(), "{bad}");
        }
        let key = DocumentKey::new(Scope::parse("s").unwrap(), DocumentId::parse("a:b").unwrap());
        assert_eq!(key.stream_id(), "s:a:b");
    }

    #[test]
    fn text_rules() {
        let limits = Limits { max_text_bytes: 10 };
        assert_eq!(Text::parse("   \n\t".into(), &limits), Err(DomainError::EmptyText));
        assert_eq!(
            Text::parse("01234567890".into(), &limits),
            Err(DomainError::TextTooLong { bytes: 11, limit: 10 })
        );
        assert_eq!(
            Text::from_bytes(vec![b'o', b'k', 0xff, b'!'], &limits),
            Err(DomainError::NotUtf8 { offset: 2 })
        );
        assert_eq!(
            Text::parse("a\0b".into(), &limits),
            Err(DomainError::ContainsNul {
                field: "text",
                offset: 1
            })
        );
        assert_eq!(Text::parse("fine".into(), &limits).unwrap().as_str(), "fine");
    }

    #[test]
    fn title_limit_is_one_kibibyte() {
        assert!(Title::parse(&"t".repeat(1024)).is_ok());
        assert_eq!(
            Title::parse(&"t".repeat(1025)),
            Err(DomainError::TitleTooLong {
                bytes: 1025,
                limit: 1024
            })
        );
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(Metadata::parse(json!({"k": [1, 2]})).is_ok());
        assert_eq!(
            Metadata::parse(json!([1])),
            Err(DomainError::MetadataNotObject { found: "an array" })
        );
        let big = json!({ "k": "v".repeat(70_000) });
        assert!(matches!(
            Metadata::parse(big),
            Err(DomainError::MetadataTooLarge { .. })
        ));
    }
}
