//! `POST /v1/embeddings` and `GET /v1/models`, as the OpenAI API spells them, so that frameworks that
//! take an OpenAI-compatible embedder (the OpenAI SDKs, LangChain, LlamaIndex) can use recall's model.
//! The texts are embedded on the query path's pool, never behind the projector; a text over the model's
//! 256 word pieces is truncated there, as sentence-transformers does.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::embed::ModelIdentity;

/// The most texts one request may embed.
pub const MAX_INPUTS: usize = 256;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    /// The model's name as `GET /v1/models` lists it (its last path segment, or `recall`, also work).
    model: String,
    /// One text, or an array of 1 to 256 texts.
    #[schema(value_type = Object)]
    input: Value,
    /// `float` (the default) or `base64` (little-endian float32 bytes).
    encoding_format: Option<EncodingFormat>,
    /// Only the model's own dimension (384): its vectors were not trained to be shortened.
    dimensions: Option<usize>,
    /// Accepted and ignored (OpenAI uses it for abuse monitoring).
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Serialize, ToSchema)]
pub struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Embedding>,
    model: String,
    usage: Usage,
}

#[derive(Serialize, ToSchema)]
pub struct Embedding {
    object: &'static str,
    index: usize,
    /// An array of floats, or a base64 string of little-endian float32 bytes.
    #[schema(value_type = Object)]
    embedding: Value,
}

#[derive(Serialize, ToSchema)]
pub struct Usage {
    /// Word pieces read by the model, special tokens included, after truncation.
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize, ToSchema)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelCard>,
}

#[derive(Serialize, ToSchema)]
pub struct ModelCard {
    id: String,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

/// An error in the shape OpenAI's clients parse (`error.message`, `type`, `param`, `code`).
pub struct OpenAiError {
    error: ApiError,
    param: Option<&'static str>,
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        OpenAiError { error, param: None }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let kind = if self.error.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = serde_json::json!({"error": {
            "message": &self.error.message,
            "type": kind,
            "param": self.param,
            "code": self.error.code,
        }});
        let mut response = (self.error.status, Json(body)).into_response();
        self.error.add_status_headers(&mut response);
        response
    }
}

fn invalid(param: &'static str, message: String) -> OpenAiError {
    OpenAiError {
        error: ApiError::bad_request(message),
        param: Some(param),
    }
}

/// Embeddings of one text or a batch.
#[utoipa::path(post, path = "/v1/embeddings",
    request_body = EmbeddingsRequest,
    responses(
        (status = 200, description = "One embedding per input, in input order.", body = EmbeddingsResponse),
        (status = 400, description = "Invalid request (the message and `param` say what).", body = Object),
        (status = 401, description = "Missing or wrong bearer token.", body = Object),
        (status = 404, description = "No such model.", body = Object),
        (status = 503, description = "The model is still loading.", body = Object),
    ))]
pub async fn embeddings(
    State(state): State<AppState>,
    body: Result<Json<EmbeddingsRequest>, JsonRejection>,
) -> Result<Json<EmbeddingsResponse>, OpenAiError> {
    let Json(request) = body.map_err(ApiError::from)?;
    let texts = inputs(request.input)?;
    let encoder = state.query_encoder()?;
    let identity = encoder.embedder().identity().clone();
    if !names_model(&request.model, &identity) {
        return Err(OpenAiError {
            error: ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "the model {:?} is not served here; this server has {:?}",
                    request.model, identity.name
                ),
            ),
            param: Some("model"),
        });
    }
    if let Some(dimensions) = request.dimensions.filter(|&d| d != identity.dimension) {
        return Err(invalid(
            "dimensions",
            format!(
                "{} makes {}-dimensional vectors and was not trained to be shortened, so {dimensions} cannot be \
                 given; leave dimensions out",
                identity.name, identity.dimension
            ),
        ));
    }
    let format = request.encoding_format.unwrap_or(EncodingFormat::Float);
    let work = async move {
        tokio::task::spawn_blocking(move || encoder.encode_many(&texts))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .map_err(|e| ApiError::internal(&e))
    };
    let (vectors, tokens) = state.within_deadline(work).await?;
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| Embedding {
            object: "embedding",
            index,
            embedding: match format {
                EncodingFormat::Float => Value::from(vector),
                EncodingFormat::Base64 => Value::String(base64_floats(&vector)),
            },
        })
        .collect();
    Ok(Json(EmbeddingsResponse {
        object: "list",
        data,
        model: identity.name,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// The model this server embeds with.
#[utoipa::path(get, path = "/v1/models", responses(
    (status = 200, description = "The model `/v1/embeddings` serves.", body = ModelList),
    (status = 503, description = "The model is still loading.", body = Object),
))]
pub async fn models(State(state): State<AppState>) -> Result<Json<ModelList>, OpenAiError> {
    let encoder = state.query_encoder()?;
    Ok(Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: encoder.embedder().identity().name.clone(),
            object: "model",
            created: 0,
            owned_by: "recall",
        }],
    }))
}

fn names_model(requested: &str, identity: &ModelIdentity) -> bool {
    let short = identity.name.rsplit('/').next().unwrap_or(&identity.name);
    requested == identity.name || requested == short || requested == "recall"
}

/// The texts of `input`: a string or a non-empty array of at most MAX_INPUTS strings, none empty.
fn inputs(input: Value) -> Result<Vec<String>, OpenAiError> {
    let texts = match input {
        Value::String(text) => vec![text],
        Value::Array(items) => {
            if items.is_empty() {
                return Err(invalid(
                    "input",
                    "input is an empty array; send at least one text".into(),
                ));
            }
            if items.len() > MAX_INPUTS {
                return Err(invalid(
                    "input",
                    format!(
                        "input has {} texts, over the limit of {MAX_INPUTS} a request; send them in batches",
                        items.len()
                    ),
                ));
            }
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(text) => Ok(text),
                    Value::Number(_) | Value::Array(_) => Err(invalid(
                        "input",
                        "token arrays are not supported (recall tokenizes with its own model); send the text".into(),
                    )),
                    _ => Err(invalid("input", format!("input[{i}] is not a string"))),
                })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(invalid("input", "input must be a string or an array of strings".into())),
    };
    if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
        return Err(invalid(
            "input",
            format!("input[{i}] is empty; every text needs at least one word"),
        ));
    }
    Ok(texts)
}

fn base64_floats(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_take_a_string_or_strings_and_refuse_the_rest() {
        assert_eq!(inputs(Value::from("a")).ok(), Some(vec!["a".to_owned()]));
        assert_eq!(inputs(serde_json::json!(["a", "b"])).ok().map(|v| v.len()), Some(2));
        for bad in [
            serde_json::json!([]),
            serde_json::json!([1, 2]),
            serde_json::json!(["a", ""]),
            serde_json::json!({}),
        ] {
            let error = inputs(bad.clone()).expect_err("refused");
            assert_eq!(error.param, Some("input"), "{bad}");
            assert_eq!(error.error.status, StatusCode::BAD_REQUEST);
        }
        let many = Value::Array(vec![Value::from("x"); MAX_INPUTS + 1]);
        assert!(inputs(many).expect_err("refused").error.message.contains("limit"));
    }

    #[test]
    fn base64_is_little_endian_float32() {
        let encoded = base64_floats(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(bytes, [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat());
    }

    #[test]
    fn the_model_is_named_in_full_by_its_short_name_or_as_recall() {
        let identity = ModelIdentity {
            name: "sentence-transformers/all-MiniLM-L6-v2".into(),
            revision: "r".into(),
            dimension: 384,
            precision: Default::default(),
        };
        for name in ["sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2", "recall"] {
            assert!(names_model(name, &identity), "{name}");
        }
        assert!(!names_model("text-embedding-3-small", &identity));
    }
}
