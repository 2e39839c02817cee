//! The document aggregate: `decide(&state, command)` says which event a command produces, and
//! `DocumentState::apply` folds events back into state. Both are pure, so the rules read as given/when/then.

use super::{DocumentContent, DocumentEvent, DocumentKey, DomainError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DocumentCommand {
    /// Adding identical content to a live document is `Unchanged`, so that re-running an ingest is safe.
    Add {
        content: DocumentContent,
    },
    Update {
        content: DocumentContent,
        expected_version: Option<u64>,
    },
    Remove {
        expected_version: Option<u64>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DocumentState {
    #[default]
    Absent,
    Live {
        version: u64,
        content: DocumentContent,
    },
    Removed {
        version: u64,
    },
}

/// What a valid command leads to: one event to append, or nothing because nothing would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Append(DocumentEvent),
    Unchanged { version: u64 },
}

impl DocumentState {
    pub fn version(&self) -> u64 {
        match self {
            DocumentState::Absent => 0,
            DocumentState::Live { version, .. } | DocumentState::Removed { version } => *version,
        }
    }

    pub fn apply(self, event: &DocumentEvent) -> DocumentState {
        let version = self.version() + 1;
        match event {
            DocumentEvent::Added { content, .. } | DocumentEvent::Updated { content, .. } => DocumentState::Live {
                version,
                content: content.clone(),
            },
            DocumentEvent::Removed { .. } => DocumentState::Removed { version },
        }
    }
}

fn check_expected(key: &DocumentKey, expected: Option<u64>, actual: u64) -> Result<(), DomainError> {
    match expected {
        Some(expected) if expected != actual => Err(DomainError::VersionConflict {
            id: key.id.to_string(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

pub fn decide(key: &DocumentKey, state: &DocumentState, command: DocumentCommand) -> Result<Decision, DomainError> {
    let scope = key.scope.clone();
    let id = key.id.clone();
    let not_found = || DomainError::NotFound {
        scope: key.scope.to_string(),
        id: key.id.to_string(),
    };
    let removed = |version| DomainError::Removed {
        scope: key.scope.to_string(),
        id: key.id.to_string(),
        version,
    };
    match (state, command) {
        (DocumentState::Absent | DocumentState::Removed { .. }, DocumentCommand::Add { content }) => {
            Ok(Decision::Append(DocumentEvent::Added { scope, id, content }))
        }
        (
            DocumentState::Live {
                version,
                content: current,
            },
            DocumentCommand::Add { content },
        ) => {
            if *current == content {
                Ok(Decision::Unchanged { version: *version })
            } else {
                Err(DomainError::AlreadyExists {
                    scope: key.scope.to_string(),
                    id: key.id.to_string(),
                    version: *version,
                })
            }
        }
        (DocumentState::Absent, DocumentCommand::Update { .. } | DocumentCommand::Remove { .. }) => Err(not_found()),
        (DocumentState::Removed { version }, DocumentCommand::Update { .. } | DocumentCommand::Remove { .. }) => {
            Err(removed(*version))
        }
        (
            DocumentState::Live {
                version,
                content: current,
            },
            DocumentCommand::Update {
                content,
                expected_version,
            },
        ) => {
            check_expected(key, expected_version, *version)?;
            if *current == content {
                Ok(Decision::Unchanged { version: *version })
            } else {
                Ok(Decision::Append(DocumentEvent::Updated { scope, id, content }))
            }
        }
        (DocumentState::Live { version, .. }, DocumentCommand::Remove { expected_version }) => {
            check_expected(key, expected_version, *version)?;
            Ok(Decision::Append(DocumentEvent::Removed { scope, id }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{DocumentId, Limits, Metadata, Scope, Text, Title};

    fn key() -> DocumentKey {
        DocumentKey::new(Scope::default(), DocumentId::parse("doc").unwrap())
    }

    fn content(text: &str) -> DocumentContent {
        DocumentContent {
            title: Title::parse("title").unwrap(),
            text: Text::parse(text.into(), &Limits::default()).unwrap(),
            metadata: Metadata::default(),
            origin: None,
        }
    }

    /// given: the events so far; when: the command; then: the decision.
    fn given(events: &[DocumentEvent]) -> DocumentState {
        events.iter().fold(DocumentState::Absent, DocumentState::apply)
    }

    fn added(text: &str) -> DocumentEvent {
        DocumentEvent::Added {
            scope: Scope::default(),
            id: key().id,
            content: content(text),
        }
    }

    fn removed() -> DocumentEvent {
        DocumentEvent::Removed {
            scope: Scope::default(),
            id: key().id,
        }
    }

    #[test]
    fn adding_a_new_document_appends_document_added() {
        let decision = decide(&key(), &given(&[]), DocumentCommand::Add { content: content("a") });
        assert_eq!(decision, Ok(Decision::Append(added("a"))));
    }

    #[test]
    fn adding_an_existing_id_with_other_content_is_refused() {
        let decision = decide(
            &key(),
            &given(&[added("a")]),
            DocumentCommand::Add { content: content("b") },
        );
        assert!(matches!(decision, Err(DomainError::AlreadyExists { version: 1, .. })));
    }

    #[test]
    fn adding_identical_content_again_changes_nothing() {
        let decision = decide(
            &key(),
            &given(&[added("a")]),
            DocumentCommand::Add { content: content("a") },
        );
        assert_eq!(decision, Ok(Decision::Unchanged { version: 1 }));
    }

    #[test]
    fn a_removed_document_can_be_added_again() {
        let state = given(&[added("a"), removed()]);
        assert_eq!(state.version(), 2);
        let decision = decide(&key(), &state, DocumentCommand::Add { content: content("b") });
        assert_eq!(decision, Ok(Decision::Append(added("b"))));
    }

    #[test]
    fn updating_or_removing_a_missing_document_is_not_found() {
        let update = DocumentCommand::Update {
            content: content("a"),
            expected_version: None,
        };
        assert!(matches!(
            decide(&key(), &given(&[]), update),
            Err(DomainError::NotFound { .. })
        ));
        let remove = DocumentCommand::Remove { expected_version: None };
        assert!(matches!(
            decide(&key(), &given(&[]), remove),
            Err(DomainError::NotFound { .. })
        ));
    }

    #[test]
    fn updating_or_removing_a_removed_document_is_refused() {
        let state = given(&[added("a"), removed()]);
        let update = DocumentCommand::Update {
            content: content("b"),
            expected_version: None,
        };
        assert!(matches!(
            decide(&key(), &state, update),
            Err(DomainError::Removed { version: 2, .. })
        ));
        let remove = DocumentCommand::Remove { expected_version: None };
        assert!(matches!(
            decide(&key(), &state, remove),
            Err(DomainError::Removed { .. })
        ));
    }

    #[test]
    fn an_update_that_changes_nothing_appends_nothing() {
        let update = DocumentCommand::Update {
            content: content("a"),
            expected_version: Some(1),
        };
        assert_eq!(
            decide(&key(), &given(&[added("a")]), update),
            Ok(Decision::Unchanged { version: 1 })
        );
    }

    #[test]
    fn an_update_appends_document_updated() {
        let update = DocumentCommand::Update {
            content: content("b"),
            expected_version: Some(1),
        };
        let expected = DocumentEvent::Updated {
            scope: Scope::default(),
            id: key().id,
            content: content("b"),
        };
        assert_eq!(
            decide(&key(), &given(&[added("a")]), update),
            Ok(Decision::Append(expected))
        );
    }

    #[test]
    fn a_stale_expected_version_is_a_conflict() {
        let state = given(&[
            added("a"),
            DocumentEvent::Updated {
                scope: Scope::default(),
                id: key().id,
                content: content("b"),
            },
        ]);
        let update = DocumentCommand::Update {
            content: content("c"),
            expected_version: Some(1),
        };
        assert_eq!(
            decide(&key(), &state, update),
            Err(DomainError::VersionConflict {
                id: "doc".into(),
                expected: 1,
                actual: 2
            })
        );
        let remove = DocumentCommand::Remove {
            expected_version: Some(5),
        };
        assert!(matches!(
            decide(&key(), &state, remove),
            Err(DomainError::VersionConflict { .. })
        ));
    }

    #[test]
    fn removing_a_live_document_appends_document_removed() {
        let remove = DocumentCommand::Remove {
            expected_version: Some(1),
        };
        assert_eq!(
            decide(&key(), &given(&[added("a")]), remove),
            Ok(Decision::Append(removed()))
        );
    }
}
