//! `POST /v1/search`: embed the question on the query path, search the read model, answer with a receipt.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::domain::Scope;
use crate::embed::Precision;
use crate::search::{self, QueryEncoder, SearchMode, SearchRequest, SearchResponse};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SearchRequest)]
pub struct SearchBody {
    /// The question, in natural language (at most 16 KiB).
    pub(crate) query: String,
    /// How many results.
    #[schema(minimum = 1, maximum = 100, default = 10)]
    pub(crate) k: Option<usize>,
    /// Embeddings, BM25, or both fused by reciprocal rank (the default).
    pub(crate) mode: Option<SearchMode>,
    /// Only this scope's documents.
    pub(crate) scope: Option<String>,
    /// Metadata the documents must contain (a JSON object).
    #[schema(value_type = Option<Object>)]
    pub(crate) filter: Option<Value>,
    /// Search as of this log position (a receipt).
    #[schema(minimum = 0)]
    pub(crate) as_of: Option<i64>,
    /// Wait until the read model has passed this log position first.
    #[schema(minimum = 0)]
    pub(crate) wait_for: Option<i64>,
    /// Each document once, at its best chunk: up to k distinct documents.
    #[schema(default = false)]
    pub(crate) distinct_documents: Option<bool>,
    /// With distinct_documents: each result lists its document's other matching chunks.
    #[schema(default = false)]
    pub(crate) other_chunks: Option<bool>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Wait until the read model has passed this log position first (as the body's `wait_for`).
    #[param(minimum = 0)]
    wait_for: Option<i64>,
}

/// The chunks nearest a question, with a receipt.
#[utoipa::path(post, path = "/v1/search",
    params(SearchParams),
    request_body = SearchBody,
    responses(
        (status = 200, description = "Results, best first, and the receipt position.", body = SearchResponse),
        (status = 400, description = "Invalid request (an empty or over-long query, k out of 1..100, a bad filter or as_of, unknown field).", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token.", body = ErrorBody),
        (status = 409, description = "as_of is ahead of what the read model reflects.", body = ErrorBody),
        (status = 503, description = "The model is loading, there is no read model yet, or the database is unavailable.", body = ErrorBody),
        (status = 504, description = "wait_for timed out.", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    params: Result<Query<SearchParams>, QueryRejection>,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let Query(params) = params?;
    let Json(mut body) = body?;
    body.wait_for = body.wait_for.or(params.wait_for);
    run(&state, body).await.map(Json)
}

/// A search as every front end asks it: validated before any waiting or model work, then within the
/// request deadline however long the wait took.
pub(crate) async fn run(state: &AppState, body: SearchBody) -> Result<SearchResponse, ApiError> {
    let request = SearchRequest {
        k: body.k.unwrap_or(10),
        mode: body.mode.unwrap_or_default(),
        scope: body.scope.as_deref().map(Scope::parse).transpose()?,
        filter: body.filter,
        as_of: body.as_of,
        first_chunk_only: false,
        distinct_documents: body.distinct_documents.unwrap_or(false),
        other_chunks: body.other_chunks.unwrap_or(false),
    };
    // Before any waiting or model work.
    request.validate(search::Query {
        text: &body.query,
        vector: None,
    })?;
    state.wait_for(body.wait_for).await?;
    state
        // A replay (as_of) needs a server that has reached its position as much as a wait does.
        .within_deadline(answer(state, &body.query, &request, body.wait_for.max(request.as_of)))
        .await
}

/// `at_least`: the position waited for or replayed, which the server that answers (a replica if one has
/// replayed it, else the primary) must have reached.
async fn answer(
    state: &AppState,
    question: &str,
    request: &SearchRequest,
    at_least: Option<i64>,
) -> Result<SearchResponse, ApiError> {
    let _turn = state.read_turn().await?;
    let started = Instant::now();
    let embedding = async {
        if !request.mode.needs_vector() {
            return Ok(None);
        }
        let encoder = state.query_encoder()?;
        let precision = encoder.embedder().precision();
        let vector = embed_question(&encoder, question, precision).await?;
        state.metrics().query_embed_latency.observe(started.elapsed());
        Ok::<_, ApiError>(Some((vector, encoder, precision)))
    };
    // The snapshot's round trips to the database overlap the model work instead of following it.
    let (embedded, snapshot) = tokio::join!(embedding, search::Snapshot::live_from(state.readers(), at_least));
    let (embedded, (snapshot, _)) = (embedded?, snapshot?);
    // The question was embedded at this server's precision, ahead of knowing the generation's; a
    // generation built at another (after `recall rebuild --precision`) has it embedded again at its own.
    let vector = match embedded {
        Some((_, encoder, precision)) if precision != snapshot.precision() => {
            Some(embed_question(&encoder, question, snapshot.precision()).await?)
        }
        embedded => embedded.map(|(vector, _, _)| vector),
    };
    let query = search::Query {
        text: question,
        vector: vector.as_deref(),
    };
    let response = snapshot.search(query, request).await?;
    state.metrics().search_latency.observe(started.elapsed());
    Ok(response)
}

/// The question's vector at `precision`, on the query pool, off the async runtime.
async fn embed_question(
    encoder: &Arc<QueryEncoder>,
    question: &str,
    precision: Precision,
) -> Result<Vec<f32>, ApiError> {
    let (encoder, question) = (encoder.clone(), question.to_owned());
    tokio::task::spawn_blocking(move || encoder.encode_at(&question, precision))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| ApiError::internal(&e))
}
