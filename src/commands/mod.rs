//! The write path: load a document's stream, let the pure aggregate decide, append with the version
//! that was loaded. No model and no vectors here, so a command answers as soon as its event commits.

use std::collections::HashMap;

use thiserror::Error;
use uuid::Uuid;

use crate::domain::{
    decide, Decision, DocumentCommand, DocumentContent, DocumentEvent, DocumentKey, DocumentState, DomainError,
    EventDecodeError,
};
use crate::event_store::{AppendRequest, EventStore, EventStoreError, ExpectedVersion, NewEvent, RecordedEvent};

/// Who issued a command and why; stored with its event.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    pub actor: Option<String>,
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    /// A client-chosen event id makes a retried command idempotent.
    pub event_id: Option<Uuid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum CommandOutcome {
    Appended {
        version: u64,
        position: i64,
    },
    /// Nothing would change, so nothing was appended.
    Unchanged {
        version: u64,
    },
}

#[derive(Debug, Error)]
pub enum CommandError {
    #[error(transparent)]
    Rejected(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] EventStoreError),
    #[error("the stored history of {stream_id} cannot be read: {source}; run `recall verify` and upgrade recall if the log is newer")]
    Corrupt {
        stream_id: String,
        #[source]
        source: EventDecodeError,
    },
    #[error("gave up on {stream_id} after {attempts} attempts: other writers kept changing it; retry")]
    Contended { stream_id: String, attempts: u32 },
}

/// How many times a command without an expected version re-decides after losing a race.
const MAX_ATTEMPTS: u32 = 8;

#[derive(Clone)]
pub struct CommandHandler {
    store: EventStore,
}

fn fold(stream_id: &str, events: &[RecordedEvent]) -> Result<DocumentState, CommandError> {
    events.iter().try_fold(DocumentState::Absent, |state, e| {
        DocumentEvent::decode(&e.event_type, e.schema_version, &e.payload)
            .map(|event| state.apply(&event))
            .map_err(|source| CommandError::Corrupt {
                stream_id: stream_id.to_owned(),
                source,
            })
    })
}

fn new_event(event: &DocumentEvent, ctx: &CommandContext) -> NewEvent {
    NewEvent {
        event_id: ctx.event_id.unwrap_or_else(Uuid::now_v7),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.encode(),
        metadata: "{}".to_owned(),
        causation_id: ctx.causation_id,
        correlation_id: ctx.correlation_id,
        actor: ctx.actor.clone(),
    }
}

fn request(key: &DocumentKey, state: &DocumentState, event: &DocumentEvent, ctx: &CommandContext) -> AppendRequest {
    AppendRequest {
        stream_id: key.stream_id(),
        scope: key.scope.to_string(),
        expected: match state.version() {
            0 => ExpectedVersion::NoStream,
            v => ExpectedVersion::Exact(v),
        },
        events: vec![new_event(event, ctx)],
    }
}

impl CommandHandler {
    pub fn new(store: EventStore) -> Self {
        CommandHandler { store }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// The current state of one document, folded from its stream.
    pub async fn load(&self, key: &DocumentKey) -> Result<DocumentState, CommandError> {
        let stream_id = key.stream_id();
        let started = std::time::Instant::now();
        let events = self.store.read_stream(&stream_id, 1).await?;
        self.store.command_timings().read.observe(started.elapsed());
        fold(&stream_id, &events)
    }

    #[tracing::instrument(skip_all, fields(scope = %key.scope, id = %key.id))]
    pub async fn execute(
        &self,
        key: &DocumentKey,
        command: DocumentCommand,
        ctx: &CommandContext,
    ) -> Result<CommandOutcome, CommandError> {
        for _ in 0..MAX_ATTEMPTS {
            let state = self.load(key).await?;
            let event = match decide(key, &state, command.clone())? {
                Decision::Unchanged { version } => return Ok(CommandOutcome::Unchanged { version }),
                Decision::Append(event) => event,
            };
            // A lost race re-loads and re-decides: the aggregate then reports a real conflict if the
            // caller's own expected version no longer holds.
            if let Ok(appended) = self.store.append(request(key, &state, &event, ctx)).await? {
                return Ok(CommandOutcome::Appended {
                    version: appended.version,
                    position: appended.position,
                });
            }
        }
        Err(CommandError::Contended {
            stream_id: key.stream_id(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Adds documents the way bulk ingest does (transactions of 1,000); returns how many were appended
    /// (the rest were already there with the same content). The first rejected document stops it.
    pub async fn add_all(&self, documents: &[(DocumentKey, DocumentContent)]) -> Result<usize, CommandError> {
        let ctx = CommandContext::default();
        let mut appended = 0;
        for batch in documents.chunks(1000) {
            let commands = batch
                .iter()
                .map(|(key, content)| {
                    (
                        key.clone(),
                        DocumentCommand::Add {
                            content: content.clone(),
                        },
                    )
                })
                .collect();
            for outcome in self.execute_batch(commands, &ctx).await? {
                if matches!(outcome?, CommandOutcome::Appended { .. }) {
                    appended += 1;
                }
            }
        }
        Ok(appended)
    }

    /// Many commands in one transaction: each is decided against the state its stream had (and the
    /// commands before it in this batch), rejected alone when invalid, and appended whole or not at all.
    #[tracing::instrument(skip_all, fields(commands = commands.len()))]
    pub async fn execute_batch(
        &self,
        commands: Vec<(DocumentKey, DocumentCommand)>,
        ctx: &CommandContext,
    ) -> Result<Vec<Result<CommandOutcome, CommandError>>, CommandError> {
        let mut stream_ids: Vec<String> = commands.iter().map(|(k, _)| k.stream_id()).collect();
        stream_ids.sort();
        stream_ids.dedup();
        let mut by_stream: HashMap<String, Vec<RecordedEvent>> = HashMap::new();
        for event in self.store.read_streams(&stream_ids).await? {
            by_stream.entry(event.stream_id.clone()).or_default().push(event);
        }
        let mut states: HashMap<String, DocumentState> = HashMap::new();
        for stream_id in &stream_ids {
            let state = fold(stream_id, by_stream.get(stream_id).map(Vec::as_slice).unwrap_or(&[]))?;
            states.insert(stream_id.clone(), state);
        }

        let mut outcomes: Vec<Option<Result<CommandOutcome, CommandError>>> = Vec::with_capacity(commands.len());
        let mut requests = Vec::new();
        let mut request_owner = Vec::new();
        for (i, (key, command)) in commands.iter().enumerate() {
            let state = states.get_mut(&key.stream_id()).expect("loaded above");
            match decide(key, state, command.clone()) {
                Err(e) => outcomes.push(Some(Err(e.into()))),
                Ok(Decision::Unchanged { version }) => outcomes.push(Some(Ok(CommandOutcome::Unchanged { version }))),
                Ok(Decision::Append(event)) => {
                    let event_ctx = CommandContext {
                        event_id: None,
                        ..ctx.clone()
                    };
                    requests.push(request(key, state, &event, &event_ctx));
                    request_owner.push(i);
                    *state = std::mem::take(state).apply(&event);
                    outcomes.push(None);
                }
            }
        }

        let mut retry = Vec::new();
        if !requests.is_empty() {
            for (owner, result) in request_owner.into_iter().zip(self.store.append_batch(requests).await?) {
                outcomes[owner] = match result {
                    Ok(a) => Some(Ok(CommandOutcome::Appended {
                        version: a.version,
                        position: a.position,
                    })),
                    Err(_) => {
                        // A concurrent writer got there first; decide this one again on its own.
                        retry.push(owner);
                        None
                    }
                };
            }
        }
        for owner in retry {
            let (key, command) = &commands[owner];
            outcomes[owner] = Some(self.execute(key, command.clone(), ctx).await);
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every command has an outcome"))
            .collect())
    }
}
