//! Turning a batch of events into read-model effects, embeddings included. This is the model's part of
//! projection and runs on a blocking thread, outside any database transaction.

use crate::domain::DocumentEvent;
use crate::event_store::RecordedEvent;

use super::EmbedBackend;

#[derive(Debug, Clone)]
pub(crate) struct PreparedChunk {
    pub index: i32,
    pub char_start: i32,
    pub char_end: i32,
    pub text: String,
    pub tokens: i32,
    pub embedding: Vec<f32>,
    /// The first and last page of the original it lies on (PDF).
    pub pages: Option<(i32, i32)>,
    /// The heading path of the section holding most of it (HTML, Markdown).
    pub section: Option<Vec<String>>,
}

/// An event's chunks waiting for their embeddings: the effect they fill, and the original's structure
/// that their citations come from.
struct Pending<'a> {
    effect: usize,
    event: &'a RecordedEvent,
    chunks: Vec<crate::embed::Chunk>,
    origin: Option<Box<crate::domain::Origin>>,
}

/// The event an effect comes from, to park it by if its write is refused.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    event_id: uuid::Uuid,
    stream_id: String,
    event_type: String,
}

impl Source {
    fn of(event: &RecordedEvent) -> Self {
        Source {
            event_id: event.event_id,
            stream_id: event.stream_id.clone(),
            event_type: event.event_type.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Effect {
    Upsert {
        source: Source,
        scope: String,
        id: String,
        version: i64,
        position: i64,
        title: String,
        metadata: serde_json::Value,
        /// The whole text of this version, for the read model's readers.
        text: String,
        /// The original file's media type, size, SHA-256, pages and sections, when it had one.
        origin: Option<serde_json::Value>,
        chunks: Vec<PreparedChunk>,
    },
    Remove {
        source: Source,
        scope: String,
        id: String,
        version: i64,
        position: i64,
    },
    Failed {
        position: i64,
        event_id: uuid::Uuid,
        stream_id: String,
        event_type: String,
        error: String,
    },
}

impl Effect {
    pub fn position(&self) -> i64 {
        match self {
            Effect::Upsert { position, .. } | Effect::Remove { position, .. } | Effect::Failed { position, .. } => {
                *position
            }
        }
    }

    /// Word pieces embedded for this effect.
    pub fn tokens(&self) -> usize {
        match self {
            Effect::Upsert { chunks, .. } => chunks.iter().map(|c| c.tokens as usize).sum(),
            _ => 0,
        }
    }

    /// This effect's event, parked with `error` instead of applied.
    pub fn failed(&self, error: String) -> Effect {
        let (position, event_id, stream_id, event_type) = match self {
            Effect::Failed {
                position,
                event_id,
                stream_id,
                event_type,
                ..
            } => (*position, *event_id, stream_id, event_type),
            Effect::Upsert { position, source, .. } | Effect::Remove { position, source, .. } => {
                (*position, source.event_id, &source.stream_id, &source.event_type)
            }
        };
        Effect::Failed {
            position,
            event_id,
            stream_id: stream_id.clone(),
            event_type: event_type.clone(),
            error,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct PreparedBatch {
    pub effects: Vec<Effect>,
    pub last_position: i64,
    pub tokens: usize,
}

fn failed(event: &RecordedEvent, error: String) -> Effect {
    Effect::Failed {
        position: event.position,
        event_id: event.event_id,
        stream_id: event.stream_id.clone(),
        event_type: event.event_type.clone(),
        error,
    }
}

/// The batch of one event whose preparation panicked: the event parked with the panic's message.
pub(crate) fn panicked(event: &RecordedEvent, panic: &tokio::task::JoinError) -> PreparedBatch {
    PreparedBatch {
        effects: vec![failed(event, format!("chunking or embedding panicked: {panic}"))],
        last_position: event.position,
        tokens: 0,
    }
}

/// Decodes, chunks and embeds a batch. An event that cannot be decoded, chunked or embedded becomes a
/// `Failed` effect on its own; the rest of the batch is unaffected.
pub(crate) fn prepare(backend: &dyn EmbedBackend, events: &[RecordedEvent]) -> PreparedBatch {
    let mut effects = Vec::with_capacity(events.len());
    // (effect index, chunk inputs) for the events that need embeddings.
    let mut pending: Vec<Pending> = Vec::new();
    for event in events {
        let decoded = match DocumentEvent::decode(&event.event_type, event.schema_version, &event.payload) {
            Ok(d) => d,
            Err(e) => {
                effects.push(failed(event, e.to_string()));
                continue;
            }
        };
        match decoded {
            DocumentEvent::Added { scope, id, content } | DocumentEvent::Updated { scope, id, content } => {
                let section_starts = content.origin.as_ref().map(|o| o.section_starts()).unwrap_or_default();
                match backend.chunk(content.title.as_str(), content.text.as_str(), &section_starts) {
                    Ok(chunks) => {
                        pending.push(Pending {
                            effect: effects.len(),
                            event,
                            chunks,
                            origin: content.origin.clone(),
                        });
                        effects.push(Effect::Upsert {
                            source: Source::of(event),
                            scope: scope.to_string(),
                            id: id.to_string(),
                            version: event.version,
                            position: event.position,
                            title: content.title.as_str().to_owned(),
                            metadata: serde_json::Value::Object(content.metadata.as_map().clone()),
                            text: content.text.as_str().to_owned(),
                            origin: content
                                .origin
                                .as_ref()
                                .map(|o| serde_json::to_value(o).expect("an origin serialises")),
                            chunks: Vec::new(),
                        });
                    }
                    Err(e) => effects.push(failed(event, format!("chunking failed: {e}"))),
                }
            }
            DocumentEvent::Removed { scope, id } => effects.push(Effect::Remove {
                source: Source::of(event),
                scope: scope.to_string(),
                id: id.to_string(),
                version: event.version,
                position: event.position,
            }),
        }
    }

    let inputs: Vec<Vec<u32>> = pending
        .iter()
        .flat_map(|p| p.chunks.iter().map(|c| c.input_ids.clone()))
        .collect();
    let tokens = inputs.iter().map(Vec::len).sum();
    let vectors = match backend.embed(&inputs) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "embedding a batch failed; embedding its events one by one");
            None
        }
    };
    let mut next = 0;
    for Pending {
        effect: effect_index,
        event,
        chunks,
        origin,
    } in pending
    {
        let embedded = match &vectors {
            Some(all) => Ok(all[next..next + chunks.len()].to_vec()),
            None => backend.embed(&chunks.iter().map(|c| c.input_ids.clone()).collect::<Vec<_>>()),
        };
        next += chunks.len();
        match embedded {
            Ok(vectors) => {
                if let Effect::Upsert { chunks: out, .. } = &mut effects[effect_index] {
                    *out = chunks
                        .into_iter()
                        .zip(vectors)
                        .map(|(c, embedding)| PreparedChunk {
                            pages: origin
                                .as_ref()
                                .and_then(|o| o.pages_of(c.char_start, c.char_end))
                                .map(|(first, last)| (first as i32, last as i32)),
                            section: origin
                                .as_ref()
                                .and_then(|o| o.section_of(c.char_start, c.char_end))
                                .map(<[String]>::to_vec),
                            index: c.index as i32,
                            char_start: c.char_start as i32,
                            char_end: c.char_end as i32,
                            text: c.text,
                            tokens: c.text_tokens as i32,
                            embedding,
                        })
                        .collect();
                }
            }
            Err(e) => effects[effect_index] = failed(event, format!("embedding failed: {e}")),
        }
    }
    PreparedBatch {
        effects,
        last_position: events.last().map(|e| e.position).unwrap_or(0),
        tokens,
    }
}
