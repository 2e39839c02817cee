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

    /// Every event type is at schema version 1; bump it with an upcaster in `decode` when a shape changes.
    pub fn schema_version(&self) -> i32 {
        1
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
        if schema_version != 1 {
            return Err(fail("unknown schema version; upgrade recall".into()));
        }
        let content = || serde_json::from_str::<ContentPayload>(payload).map_err(|e| fail(e.to_string()));
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
        }
    }

    #[test]
    fn undecodable_payloads_are_errors_not_panics() {
        assert!(DocumentEvent::decode("DocumentAdded", 1, "{}").is_err());
        assert!(DocumentEvent::decode("DocumentAdded", 2, "{}").is_err());
        assert!(DocumentEvent::decode("Nope", 1, "{}").is_err());
        let bad_id = r#"{"scope":"default","id":"bad id","title":"","text":"x","metadata":{}}"#;
        assert!(DocumentEvent::decode("DocumentAdded", 1, bad_id).is_err());
    }
}
