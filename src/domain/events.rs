//! The document events: past tense, each with a stable type name and a schema version, so that a
//! payload written today can still be read after the shape changes.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{DocumentContent, DocumentId, Scope};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentEvent {
    Added {
        scope: Scope,
        id: DocumentId,
        content: DocumentContent,
    },
    Updated {
        scope: Scope,
        id: DocumentId,
        content: DocumentContent,
    },
    Removed {
        scope: Scope,
        id: DocumentId,
    },
}

/// A stored event whose type or payload this build cannot read.
#[derive(Debug, Error)]
#[error("cannot decode {event_type} (schema version {schema_version}): {reason}")]
pub struct EventDecodeError {
    pub event_type: String,
    pub schema_version: i32,
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentPayload {
    scope: Scope,
    id: DocumentId,
    #[serde(flatten)]
    content: DocumentContent,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemovedPayload {
    scope: Scope,
    id: DocumentId,
}

impl DocumentEvent {
    pub const ADDED: &'static str = "DocumentAdded";
    pub const UPDATED: &'static str = "DocumentUpdated";
    pub const REMOVED: &'static str = "DocumentRemoved";

    pub fn event_type(&self) -> &'static str {
        match self {
            DocumentEvent::Added { .. } => Self::ADDED,
            DocumentEvent::Updated { .. } => Self::UPDATED,
            DocumentEvent::Removed { .. } => Self::REMOVED,
        }
    }

    /// Schema version 2 adds the extracted file's origin (media type, size, SHA-256, pages, sections) to
    /// a content event; an event without one is written as version 1, byte for byte as before, so that
    /// older builds still read it. A build that meets a version it does not know says to upgrade.
    pub fn schema_version(&self) -> i32 {
        match self.content() {
            Some(DocumentContent { origin: Some(_), .. }) => 2,
            _ => 1,
        }
    }

    pub fn content(&self) -> Option<&DocumentContent> {
        match self {
            DocumentEvent::Added { content, .. } | DocumentEvent::Updated { content, .. } => Some(content),
            DocumentEvent::Removed { .. } => None,
        }
    }

    /// The payload as JSON text; this exact text is stored and hashed.
    pub fn encode(&self) -> String {
        let json = match self.clone() {
            DocumentEvent::Added { scope, id, content } | DocumentEvent::Updated { scope, id, content } => {
                serde_json::to_string(&ContentPayload { scope, id, content })
            }
            DocumentEvent::Removed { scope, id } => serde_json::to_string(&RemovedPayload { scope, id }),
        };
        json.expect("document events always serialise")
    }

    pub fn decode(event_type: &str, schema_version: i32, payload: &str) -> Result<Self, EventDecodeError> {
        let fail = |reason: String| EventDecodeError {
            event_type: event_type.to_owned(),
            schema_version,
            reason,
        };
        if !(1..=2).contains(&schema_version) {
            return Err(fail("unknown schema version; upgrade recall".into()));
        }
        let content = || {
            let p = serde_json::from_str::<ContentPayload>(payload).map_err(|e| fail(e.to_string()))?;
            match &p.content.origin {
                Some(_) if schema_version < 2 => Err(fail("an origin in a version 1 event".into())),
                Some(origin) => origin
                    .check(p.content.text.as_str().chars().count())
                    .map(|()| p)
                    .map_err(|e| fail(e.to_string())),
                None => Ok(p),
            }
        };
        match event_type {
            Self::ADDED => content().map(|p| DocumentEvent::Added {
                scope: p.scope,
                id: p.id,
                content: p.content,
            }),
            Self::UPDATED => content().map(|p| DocumentEvent::Updated {
                scope: p.scope,
                id: p.id,
                content: p.content,
            }),
            Self::REMOVED => serde_json::from_str::<RemovedPayload>(payload)
                .map(|p| DocumentEvent::Removed {
                    scope: p.scope,
                    id: p.id,
                })
                .map_err(|e| fail(e.to_string())),
            _ => Err(fail("unknown event type".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Limits, Metadata, Text, Title};

    #[test]
    fn events_round_trip_through_their_payload() {
        let content = DocumentContent {
            title: Title::parse("T").unwrap(),
            text: Text::parse("body".into(), &Limits::default()).unwrap(),
            metadata: Metadata::parse(serde_json::json!({"lang": "en"})).unwrap(),
            origin: None,
        };
        let scope = Scope::default();
        let id = DocumentId::parse("d1").unwrap();
        for event in [
            DocumentEvent::Added {
                scope: scope.clone(),
                id: id.clone(),
                content: content.clone(),
            },
            DocumentEvent::Updated {
                scope: scope.clone(),
                id: id.clone(),
                content,
            },
            DocumentEvent::Removed { scope, id },
        ] {
            let back = DocumentEvent::decode(event.event_type(), 1, &event.encode()).unwrap();
            assert_eq!(back, event);
            assert_eq!(event.schema_version(), 1);
        }
    }

    #[test]
    fn an_extracted_document_is_a_version_2_event_and_a_plain_one_is_unchanged() {
        let text = Text::parse("# A\nbody".into(), &Limits::default()).unwrap();
        let origin = crate::domain::Origin {
            media_type: "text/markdown".into(),
            bytes: 9,
            sha256: "0".repeat(64),
            pages: vec![],
            sections: vec![crate::domain::SectionSpan {
                path: vec!["A".into()],
                start: 0,
                end: 8,
            }],
        };
        let content =
            DocumentContent::extracted(Title::parse("A").unwrap(), text.clone(), Metadata::default(), origin).unwrap();
        let event = DocumentEvent::Added {
            scope: Scope::default(),
            id: DocumentId::parse("d").unwrap(),
            content,
        };
        assert_eq!(event.schema_version(), 2);
        assert_eq!(
            DocumentEvent::decode(event.event_type(), 2, &event.encode()).unwrap(),
            event
        );
        assert!(DocumentEvent::decode(event.event_type(), 1, &event.encode()).is_err());
        // A page past the text's end is refused on the way in and on the way back.
        let bad = event.encode().replace("\"end\":8", "\"end\":99");
        assert_ne!(bad, event.encode());
        assert!(DocumentEvent::decode(event.event_type(), 2, &bad).is_err());
        let plain = DocumentContent::plain(Title::default(), text, Metadata::default());
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            "{\"title\":\"\",\"text\":\"# A\\nbody\",\"metadata\":{}}",
            "a plain document's payload is what older builds wrote"
        );
    }

    #[test]
    fn undecodable_payloads_are_errors_not_panics() {
        assert!(DocumentEvent::decode("DocumentAdded", 1, "{}").is_err());
        assert!(DocumentEvent::decode("DocumentAdded", 3, "{}").is_err());
        assert!(DocumentEvent::decode("Nope", 1, "{}").is_err());
        let bad_id = r#"{"scope":"default","id":"bad id","title":"","text":"x","metadata":{}}"#;
        assert!(DocumentEvent::decode("DocumentAdded", 1, bad_id).is_err());
    }
}
