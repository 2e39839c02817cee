//! recall as a Model Context Protocol server, through the official SDK (`rmcp`): the same operations as
//! the HTTP API (the same validation, limits, deadlines, codes and messages: each tool calls the shared
//! function behind its HTTP route), as tools with input and output schemas, and documents as resources
//! (`recall://SCOPE/ID`). Served over stdio by `recall mcp` and over Streamable HTTP at `/mcp` of
//! `recall serve`, behind the same bearer tokens as `/v1`.

use std::sync::Arc;

use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ListResourceTemplatesResult, ListResourcesResult,
    PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::documents::{self, CommandResult, DocumentView, History};
use crate::api::search::{self as search_api, SearchBody};
use crate::api::{ApiError, AppState};
use crate::commands::CommandContext;
use crate::domain::{DocumentCommand, DocumentKey};
use crate::read_model::{self, StatusReport};
use crate::search::{SearchMode, SearchResponse};

/// Documents listed per page of `resources/list`.
const RESOURCE_PAGE: i64 = 100;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// The question or topic, in natural language (at most 16 KiB). Ask the way the answer would be
    /// written: "what causes X", not a list of keywords.
    pub query: String,
    /// How many results, best first (1 to 100; default 10).
    #[schemars(range(min = 1, max = 100))]
    pub k: Option<usize>,
    /// `hybrid` (default: meaning and exact words fused, the best on every benchmark), `dense` (meaning
    /// only: paraphrases, other wording) or `lexical` (BM25: exact names, codes, rare terms).
    pub mode: Option<SearchMode>,
    /// Only this scope's documents (a tenant or collection). Default: every scope.
    pub scope: Option<String>,
    /// Metadata the documents must contain, as a JSON object, such as {"topic": "rust"}.
    pub filter: Option<serde_json::Map<String, Value>>,
    /// Search the memory as it was at this log position (a `position` from an earlier answer): the same
    /// results as then, whatever changed since.
    #[schemars(range(min = 0))]
    pub as_of: Option<i64>,
    /// Wait until the memory includes this log position first (the `position` an add or update
    /// answered), so that a document just written is found. Waits at most 30 s.
    #[schemars(range(min = 0))]
    pub wait_for: Option<i64>,
    /// Each document at most once, at its best passage: up to k distinct documents.
    pub distinct_documents: Option<bool>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddArgs {
    /// The document's text (plain text or Markdown; at most the server's text limit, 1 MiB by default).
    pub text: String,
    /// A title, searched with the text.
    pub title: Option<String>,
    /// 1 to 256 of A-Z a-z 0-9 . _ : / @ -; generated when absent. Adding the same id again with the same
    /// content does nothing; with other content it is refused with code `already_exists` (use update_document).
    pub id: Option<String>,
    /// The scope (tenant or collection; letters, digits, _ and -). Default: "default".
    pub scope: Option<String>,
    /// A JSON object stored with the document; searches can filter on it.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateArgs {
    /// The document's id.
    pub id: String,
    /// The new text: it replaces the whole text.
    pub text: String,
    /// The new title (empty when absent: an update replaces the whole document).
    pub title: Option<String>,
    pub scope: Option<String>,
    /// The new metadata (empty when absent).
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// The version the document must be at (from get_document or an earlier answer); refused with
    /// code `version_conflict` when someone changed it since. Absent: any version.
    #[schemars(range(min = 1))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveArgs {
    pub id: String,
    pub scope: Option<String>,
    /// The version the document must be at; refused with code `version_conflict` otherwise. Absent: any
    /// version.
    #[schemars(range(min = 1))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GetArgs {
    pub id: String,
    pub scope: Option<String>,
    /// Wait until the memory includes this log position first (read-your-writes). Waits at most 30 s.
    #[schemars(range(min = 0))]
    pub wait_for: Option<i64>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryArgs {
    pub id: String,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusArgs {}

/// The MCP face of one running recall: cheap to clone (the factory of the HTTP transport makes one per
/// session).
#[derive(Clone)]
pub struct RecallMcp {
    state: AppState,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl RecallMcp {
    pub fn new(state: AppState) -> Self {
        RecallMcp {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// Search the memory for passages that answer a question.
    #[tool(
        description = "Search recall's memory for the passages that best answer a question. Use it before \
            answering from memory, and cite what you use by document id and character offsets. Each hit has the \
            document id, title, the passage's text, its character offsets in the document and a score (higher is \
            better; scores compare within one answer only). The answer's `position` is a receipt: pass it as \
            `as_of` to see the same results later, or after an add pass the add's `position` as `wait_for`. \
            Limits: k from 1 to 100, a query of at most 16 KiB.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<SearchResponse>()
    )]
    async fn search(&self, Parameters(args): Parameters<SearchArgs>) -> CallToolResult {
        let body = SearchBody {
            query: args.query,
            k: args.k,
            mode: args.mode,
            scope: args.scope,
            filter: args.filter.map(Value::Object),
            as_of: args.as_of,
            wait_for: args.wait_for,
            distinct_documents: args.distinct_documents,
            other_chunks: None,
        };
        answer(search_api::run(&self.state, body).await, render_search)
    }

    /// Add a document to the memory.
    #[tool(
        description = "Add a document (a note, a fact, a page) to recall's memory, where search can find it a \
            moment later. Answers the document's id, version and the log `position` of the change: pass that \
            position as `wait_for` to a search to be sure the new document is found. Adding the same id and \
            content again changes nothing (safe to retry); the same id with other content is refused with code \
            `already_exists` (use update_document).",
        annotations(read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<CommandResult>()
    )]
    async fn add_document(&self, Parameters(args): Parameters<AddArgs>) -> CallToolResult {
        let result = async {
            let key = documents::new_key(args.scope.as_deref(), args.id.as_deref())?;
            let content = documents::content(&self.state, args.title, args.text, args.metadata.map(Value::Object))?;
            self.command("add", &key, DocumentCommand::Add { content }).await
        };
        answer(result.await, render_command)
    }

    /// Replace a document's text, title and metadata.
    #[tool(
        description = "Replace a document in recall's memory: its text, title and metadata all become the ones \
            given (what is left out becomes empty). Pass `expected_version` (from get_document) to be refused with \
            code `version_conflict` instead of overwriting someone else's change. The old versions stay in the history.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<CommandResult>()
    )]
    async fn update_document(&self, Parameters(args): Parameters<UpdateArgs>) -> CallToolResult {
        let result = async {
            let key = documents::key(args.scope.as_deref(), &args.id)?;
            let content = documents::content(&self.state, args.title, args.text, args.metadata.map(Value::Object))?;
            let command = DocumentCommand::Update {
                content,
                expected_version: args.expected_version,
            };
            self.command("update", &key, command).await
        };
        answer(result.await, render_command)
    }

    /// Remove a document from the memory.
    #[tool(
        description = "Remove a document from recall's memory: searches stop finding it, but its history is \
            kept (and a search with an earlier `as_of` still sees it). Pass `expected_version` to be refused with \
            code `version_conflict` if it changed since you read it.",
        annotations(read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false),
        output_schema = schema_for_output::<CommandResult>()
    )]
    async fn remove_document(&self, Parameters(args): Parameters<RemoveArgs>) -> CallToolResult {
        let result = async {
            let key = documents::key(args.scope.as_deref(), &args.id)?;
            let command = DocumentCommand::Remove {
                expected_version: args.expected_version,
            };
            self.command("remove", &key, command).await
        };
        answer(result.await, render_command)
    }

    /// One whole document.
    #[tool(
        description = "Read one whole document of recall's memory (text, title, metadata, version), for when a \
            search hit is not enough context. Code `not_found` when it is not there (or not searchable yet: pass \
            the add's `position` as `wait_for`), `removed` when it was removed.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<DocumentView>()
    )]
    async fn get_document(&self, Parameters(args): Parameters<GetArgs>) -> CallToolResult {
        let result = async {
            let key = documents::key(args.scope.as_deref(), &args.id)?;
            documents::document(&self.state, &key, args.wait_for).await
        };
        answer(result.await, |d: &DocumentView| {
            format!(
                "{}/{} v{} \"{}\" ({} characters)\n\n{}",
                d.scope,
                d.id,
                d.version,
                d.title,
                d.text.chars().count(),
                d.text
            )
        })
    }

    /// Every change of a document.
    #[tool(
        description = "The history of one document in recall's memory: every change (added, updated, removed) \
            with its log position, time, actor and content, oldest first. Use it to see what a document said \
            before, or who changed it and when.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<History>()
    )]
    async fn document_history(&self, Parameters(args): Parameters<HistoryArgs>) -> CallToolResult {
        let result = async {
            let key = documents::key(args.scope.as_deref(), &args.id)?;
            documents::history_of(&self.state, &key).await
        };
        answer(result.await, |h: &History| {
            let lines: Vec<String> = h
                .events
                .iter()
                .map(|e| {
                    format!(
                        "position {} v{} {} at {}",
                        e.position, e.version, e.event_type, e.recorded_at
                    )
                })
                .collect();
            format!("{}/{}: {} events\n{}", h.scope, h.id, h.events.len(), lines.join("\n"))
        })
    }

    /// How current the memory is.
    #[tool(
        description = "The state of recall's memory: the log's head position, and for each read-model generation \
            its checkpoint, lag behind the log, document and passage counts and parked failures. A search sees \
            everything up to the active generation's checkpoint.",
        annotations(read_only_hint = true, open_world_hint = false),
        output_schema = schema_for_output::<StatusReport>()
    )]
    async fn status(&self, Parameters(_): Parameters<StatusArgs>) -> CallToolResult {
        let result = async {
            let _turn = self.state.read_turn().await?;
            Ok::<_, ApiError>(read_model::status(self.state.databases()).await?)
        };
        answer(self.state.within_deadline(result).await, |r: &StatusReport| {
            match r.active() {
                Some(a) => format!(
                    "log head {}; active generation {} at {} ({} behind), {} documents, {} passages, {} parked failures",
                    r.head, a.generation, a.checkpoint, a.lag_events, a.documents, a.current_chunks, a.parked_failures
                ),
                None => format!("log head {}; no read model yet", r.head),
            }
        })
    }
}

impl RecallMcp {
    async fn command(
        &self,
        name: &'static str,
        key: &DocumentKey,
        command: DocumentCommand,
    ) -> Result<CommandResult, ApiError> {
        let ctx = CommandContext {
            actor: self.state.config().actor.clone(),
            ..CommandContext::default()
        };
        let outcome = documents::execute(&self.state, name, key, command, &ctx).await?;
        Ok(CommandResult::new(key, outcome))
    }
}

/// A structured result with a short text rendering, or a tool error carrying the HTTP API's error object.
fn answer<T: Serialize>(result: Result<T, ApiError>, render: impl FnOnce(&T) -> String) -> CallToolResult {
    match result {
        Ok(value) => {
            let text = render(&value);
            let json = serde_json::to_value(&value).unwrap_or(Value::Null);
            let mut result = CallToolResult::structured(json);
            result.content = vec![ContentBlock::text(text)];
            result
        }
        Err(error) => CallToolResult::error(vec![ContentBlock::text(error_json(&error).to_string())]),
    }
}

fn error_json(error: &ApiError) -> Value {
    serde_json::to_value(error.body()).unwrap_or(Value::Null)
}

fn render_search(response: &SearchResponse) -> String {
    let mut text = format!(
        "{} results (receipt: position {})",
        response.results.len(),
        response.position
    );
    for (rank, hit) in response.results.iter().enumerate() {
        let passage: String = hit.text.chars().take(300).collect();
        let cited = hit.citation().map(|c| format!(" ({c})")).unwrap_or_default();
        text.push_str(&format!(
            "\n\n{}. {}/{} \"{}\"{cited} characters {}..{} (score {:.4})\n{}",
            rank + 1,
            hit.scope,
            hit.document_id,
            hit.title,
            hit.char_start,
            hit.char_end,
            hit.score,
            passage
        ));
    }
    text
}

fn render_command(result: &CommandResult) -> String {
    match result.position {
        Some(position) => format!(
            "{}/{} is at version {} (log position {position}; pass it as wait_for to search it)",
            result.scope, result.id, result.version
        ),
        None => format!("{}/{} unchanged at version {}", result.scope, result.id, result.version),
    }
}

/// `recall://SCOPE/ID` (an id may itself hold `/`).
fn resource_uri(scope: &str, id: &str) -> String {
    format!("recall://{scope}/{id}")
}

fn parse_resource_uri(uri: &str) -> Result<DocumentKey, McpError> {
    let bad = |why: String| McpError::invalid_params(format!("{why}; a document's URI is recall://SCOPE/ID"), None);
    let rest = uri
        .strip_prefix("recall://")
        .ok_or_else(|| bad(format!("{uri:?} is not a recall:// URI")))?;
    let (scope, id) = rest
        .split_once('/')
        .ok_or_else(|| bad(format!("{uri:?} has no document id")))?;
    documents::key(Some(scope), id).map_err(|e| bad(e.message))
}

/// A failure of a resource request as a protocol error, with the HTTP API's code in its data.
fn resource_error(error: ApiError) -> McpError {
    let data = Some(error_json(&error));
    if error.status == axum::http::StatusCode::NOT_FOUND || error.status == axum::http::StatusCode::GONE {
        McpError::resource_not_found(error.message, data)
    } else if error.status.is_client_error() {
        McpError::invalid_params(error.message, data)
    } else {
        McpError::internal_error(error.message, data)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for RecallMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_resources().build())
            .with_server_info(Implementation::new("recall", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "recall is a searchable, auditable memory. Search it (tool `search`) before answering from what \
                 was stored, add what should be remembered (`add_document`), and cite documents by id. Every \
                 change is kept in a history; every answer carries a log position (a receipt).",
            )
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let after = match request.and_then(|r| r.cursor) {
            Some(cursor) => Some(parse_resource_uri(&cursor).map_err(|_| {
                McpError::invalid_params("the cursor is not one this server gave; start again without one", None)
            })?),
            None => None,
        };
        let page = async {
            let _turn = self.state.read_turn().await?;
            Ok::<_, ApiError>(read_model::list_documents(self.state.read_model(), after.as_ref(), RESOURCE_PAGE).await?)
        };
        let page = self.state.within_deadline(page).await.map_err(resource_error)?;
        let next_cursor = (page.len() as i64 == RESOURCE_PAGE)
            .then(|| page.last().map(|d| resource_uri(&d.scope, &d.id)))
            .flatten();
        let resources = page
            .into_iter()
            .map(|d| {
                let name = if d.title.is_empty() {
                    d.id.clone()
                } else {
                    d.title.clone()
                };
                Resource::new(resource_uri(&d.scope, &d.id), name)
                    .with_title(d.title)
                    .with_mime_type("text/plain")
                    .with_size(d.bytes as u64)
            })
            .collect();
        let mut result = ListResourcesResult::with_all_items(resources);
        result.next_cursor = next_cursor;
        Ok(result)
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let key = parse_resource_uri(&request.uri)?;
        let document = documents::document(&self.state, &key, None)
            .await
            .map_err(resource_error)?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(document.text, request.uri.clone()).with_mime_type("text/plain")
        ])
        .into())
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new("recall://{scope}/{id}", "document").with_mime_type("text/plain"),
        ]))
    }
}

/// The Streamable HTTP transport, for `/mcp`. Sessions end when `state`'s shutdown is signalled.
pub fn http_service(state: AppState) -> StreamableHttpService<RecallMcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default().with_cancellation_token(state.shutdown().child_token());
    // Without tokens the server listens on loopback only, and the Host check (the SDK's default:
    // loopback names) keeps a web page from reaching it by DNS rebinding; with tokens, they protect it
    // and any host name may be used.
    if !state.config().tokens.is_empty() {
        config = config.disable_allowed_hosts();
    }
    let handler = RecallMcp::new(state);
    StreamableHttpService::new(
        move || Ok(handler.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
