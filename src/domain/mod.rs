//! The pure, synchronous core: identifiers parsed once, the document commands and events, and the
//! document aggregate that decides which events a command produces. No I/O happens here, so every rule
//! is a plain unit test.

mod aggregate;
mod error;
mod events;
mod origin;
mod values;

pub use aggregate::{decide, Decision, DocumentCommand, DocumentState};
pub use error::DomainError;
pub use events::{DocumentEvent, EventDecodeError};
pub(crate) use origin::CharIndex;
pub use origin::{Origin, PageSpan, SectionSpan, MAX_HEADING_BYTES, MAX_HEADING_DEPTH, MEDIA_TYPES};
pub use values::{DocumentContent, DocumentId, DocumentKey, Limits, Metadata, Scope, Text, Title};
