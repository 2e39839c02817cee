//! `POST /v1/search`: embed the question on the query path, search the read model, answer with a receipt.

use std::time::Instant;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{ApiError, AppState};
use crate::domain::Scope;
use crate::search::{self, SearchMode, SearchRequest, SearchResponse};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    query: String,
    k: Option<usize>,
    mode: Option<SearchMode>,
    scope: Option<String>,
    filter: Option<Value>,
    as_of: Option<i64>,
    wait_for: Option<i64>,
    distinct_documents: Option<bool>,
    other_chunks: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    wait_for: Option<i64>,
}

pub async fn search(
    State(state): State<AppState>,
    params: Result<Query<SearchParams>, QueryRejection>,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Result<Json<SearchResponse>, ApiError> {
    let Query(params) = params?;
    let Json(body) = body?;
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
    state.wait_for(body.wait_for.or(params.wait_for)).await?;
    // The search itself has the request's deadline, however long the wait before it took.
    state
        .within_deadline(answer(&state, &body.query, &request))
        .await
        .map(Json)
}

async fn answer(state: &AppState, question: &str, request: &SearchRequest) -> Result<SearchResponse, ApiError> {
    let _turn = state.read_turn().await?;
    let started = Instant::now();
    let embedding = async {
        if !request.mode.needs_vector() {
            return Ok(None);
        }
        let encoder = state.query_encoder()?;
        let question = question.to_owned();
        let vector = tokio::task::spawn_blocking(move || encoder.encode(&question))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))?;
        state.metrics().query_embed_latency.observe(started.elapsed());
        Ok::<_, ApiError>(Some(vector))
    };
    // The snapshot's round trips to the database overlap the model work instead of following it.
    let (vector, snapshot) = tokio::join!(embedding, search::Snapshot::live(state.pool()));
    let (vector, snapshot) = (vector?, snapshot?);
    let query = search::Query {
        text: question,
        vector: vector.as_deref(),
    };
    let response = snapshot.search(query, request).await?;
    state.metrics().search_latency.observe(started.elapsed());
    Ok(response)
}
