//! recall: a searchable, auditable memory for AI agents.
//!
//! # Layout (in data-flow order)
//! - [`domain`]: pure and synchronous: ids, commands, events, the document aggregate.
//! - [`extract`]: PDF, HTML, Markdown and text files into text with its pages and heading sections,
//!   the risky parsers in a bounded child process.
//! - [`ingest`]: files and JSONL turned into document commands, one item at a time.
//! - [`commands`]: the write path: load a stream, decide, append; no model, no vectors.
//! - [`event_store`]: the append-only log: expected versions, gapless positions, hash chain, readers, NOTIFY.
//! - [`projector`]: tails the log into the pgvector read model: checkpoints, parked failures, rebuild.
//! - [`read_model`]: the read side's state as readers see it: generations, status, parked failures,
//!   a projected document, read-your-writes waits.
//! - [`search`]: dense, lexical and hybrid search over current chunks or as of a past position, with a receipt.
//! - [`api`]: the HTTP API over commands, the read model and search, and the OpenAI-compatible embeddings.
//! - [`mcp`]: the same operations as Model Context Protocol tools and resources (stdio, `/mcp`).
//! - [`server`]: the running service assembled once (API, MCP, query model, projector): `recall serve`,
//!   `recall mcp`, the benchmarks and the tests start it there.
//! - [`embed`]: model files, tokenizer, token-aware chunker, token-budget batches, Candle BERT, pooling.
//! - [`postgres`]: the pool, migrations and the embedded server's lifecycle.
//! - [`runtime`]: the CPU policy: model thread pools, priorities, CPU sets, allocator settings.
//! - [`eval`]: BEIR-style retrieval metrics (nDCG@10, Recall@100, MRR@10) over qrels.
//!
//! Commands enter through [`commands::CommandHandler`], become events in [`event_store::EventStore`],
//! and everything downstream reads the log by position.

pub mod api;
pub mod commands;
pub mod domain;
pub mod embed;
pub mod eval;
pub mod event_store;
pub mod extract;
pub mod ingest;
pub mod mcp;
pub mod postgres;
pub mod projector;
pub mod read_model;
pub mod runtime;
pub mod search;
pub mod server;
