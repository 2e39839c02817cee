//! Search over the read model, in three modes: dense (the nearest chunks to the query's vector, HNSW over
//! current chunks), lexical (BM25 over each chunk's "title text" tsvector, GIN), and hybrid (the two
//! rankings fused by reciprocal rank). Any mode runs live or as of a past log position (`as_of`), and
//! answers with the position the read model reflected: the receipt that replays it.

mod encoder;
mod sql;

pub use encoder::QueryEncoder;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use thiserror::Error;

use crate::domain::Scope;
use crate::embed::Precision;
use crate::read_model::{ReadSource, Readers};

#[derive(Debug, Error)]
pub enum SearchError {
    #[error("k must be between 1 and {max}, not {k}")]
    BadK { k: usize, max: usize },
    #[error("the query is empty; ask a question with at least one word")]
    EmptyQuery,
    #[error("the query is {bytes} bytes, over the limit of {max}; ask a shorter question")]
    QueryTooLong { bytes: usize, max: usize },
    #[error(
        "as_of position {as_of} is ahead of what the read model reflects ({checkpoint}); wait for it or search live"
    )]
    AsOfAhead { as_of: i64, checkpoint: i64 },
    #[error("as_of must be a log position (0 or more, from a search's `position`), not {0}")]
    BadAsOf(i64),
    #[error("the filter must be a JSON object of metadata keys and values, such as {{\"topic\": \"rust\"}}")]
    BadFilter,
    #[error("{mode} search needs the query's embedding")]
    NoVector { mode: &'static str },
    #[error("there is no read model yet; run `recall project`")]
    NoReadModel,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// The most results one search may ask for, through any interface.
pub const MAX_K: usize = 100;

/// The longest accepted question; the model reads at most its first 256 word pieces anyway.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// How deep each ranking goes when results are fused or grouped by document: the same depth for every
/// k up to MAX_K, so that asking for more results never reorders the first ones (a deeper list would
/// give a chunk ranked low on one side a share it did not have before).
const RANKING_DEPTH: usize = 3 * MAX_K;

/// Candidates the HNSW scan keeps while searching (pgvector's `hnsw.ef_search`): with the graph built at
/// ef_construction 128 (migrations/0005), 140 finds 0.99 of the exact top 10 at 112k chunks.
const HNSW_EF_SEARCH: usize = 140;

/// Reciprocal rank fusion's constant: a hit at rank r adds 1 / (RRF_K + r).
const RRF_K: f64 = 60.0;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest chunks by cosine similarity of embeddings.
    Dense,
    /// BM25 over the chunks' words (English stemming, stop words dropped).
    Lexical,
    /// Dense and lexical rankings fused by reciprocal rank (the default: best on every benchmark we ran).
    #[default]
    Hybrid,
}

impl SearchMode {
    pub fn needs_vector(self) -> bool {
        self != SearchMode::Lexical
    }

    fn name(self) -> &'static str {
        match self {
            SearchMode::Dense => "dense",
            SearchMode::Lexical => "lexical",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub k: usize,
    pub mode: SearchMode,
    pub scope: Option<Scope>,
    /// Metadata that matching documents must contain (`@>`).
    pub filter: Option<serde_json::Value>,
    /// Search the chunks that were current at this log position instead of the current ones.
    pub as_of: Option<i64>,
    /// Consider only each document's first chunk: the BEIR/MTEB protocol, which embeds a document
    /// truncated at max_seq_length (used by `recall eval` to compare with published numbers).
    pub first_chunk_only: bool,
    /// Each document once, at its best chunk: k distinct documents (or fewer, when the best
    /// RANKING_DEPTH chunks of each ranking hold fewer).
    pub distinct_documents: bool,
    /// With `distinct_documents`: list the document's other matching chunks (offsets and scores).
    pub other_chunks: bool,
}

impl SearchRequest {
    /// The one definition of a valid search, which every interface (CLI, HTTP API, evaluation) calls
    /// before any work, with the question's text (and no vector yet): a question with a word in it and
    /// not too long, k within 1..=MAX_K, a filter that is an object, an as_of that is a position. A
    /// library caller may search densely by a vector of its own with no text.
    pub fn validate(&self, query: Query<'_>) -> Result<(), SearchError> {
        let by_vector_alone = query.vector.is_some() && self.mode == SearchMode::Dense;
        if query.text.trim().is_empty() && !by_vector_alone {
            return Err(SearchError::EmptyQuery);
        }
        if query.text.len() > MAX_QUERY_BYTES {
            return Err(SearchError::QueryTooLong {
                bytes: query.text.len(),
                max: MAX_QUERY_BYTES,
            });
        }
        if self.k == 0 || self.k > MAX_K {
            return Err(SearchError::BadK { k: self.k, max: MAX_K });
        }
        if self.filter.as_ref().is_some_and(|f| !f.is_object()) {
            return Err(SearchError::BadFilter);
        }
        if let Some(p) = self.as_of.filter(|&p| p < 0) {
            return Err(SearchError::BadAsOf(p));
        }
        Ok(())
    }
}

impl Default for SearchRequest {
    fn default() -> Self {
        SearchRequest {
            k: 10,
            mode: SearchMode::default(),
            scope: None,
            filter: None,
            as_of: None,
            first_chunk_only: false,
            distinct_documents: false,
            other_chunks: false,
        }
    }
}

/// What is searched for: the question's text (lexical) and its embedding (dense), as the mode needs.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub text: &'a str,
    pub vector: Option<&'a [f32]>,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SearchHit {
    pub scope: String,
    pub document_id: String,
    pub chunk_index: i32,
    /// Cosine similarity (dense), BM25 (lexical) or the fused reciprocal-rank score (hybrid).
    pub score: f64,
    pub title: String,
    /// The chunk's text.
    pub text: String,
    /// Where the chunk lies in the document's text, in characters (Unicode scalar values), end exclusive.
    pub char_start: i32,
    pub char_end: i32,
    /// The first and last page of the original PDF the chunk lies on (absent for other documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_start: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_end: Option<i32>,
    /// The heading path of the section holding most of the chunk (`["Runbook", "Rollback"]`), for
    /// documents extracted from HTML or Markdown with headings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section: Option<Vec<String>>,
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// With `distinct_documents` and `other_chunks`: the document's other matching chunks, best first.
    #[sqlx(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_chunks: Option<Vec<ChunkMatch>>,
}

impl SearchHit {
    /// Where to check the chunk in the original, in words: `page 7, Runbook > Rollback`; `None` for a
    /// document given as text.
    pub fn citation(&self) -> Option<String> {
        let pages = match (self.page_start, self.page_end) {
            (Some(a), Some(b)) if a == b => Some(format!("page {a}")),
            (Some(a), Some(b)) => Some(format!("pages {a}-{b}")),
            _ => None,
        };
        let section = self.section.as_ref().map(|s| s.join(" > "));
        let parts: Vec<String> = pages.into_iter().chain(section).collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Where another matching chunk of a document lies, and how well it matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct ChunkMatch {
    pub chunk_index: i32,
    pub char_start: i32,
    pub char_end: i32,
    pub score: f64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema, schemars::JsonSchema)]
pub struct SearchResponse {
    /// The receipt: the log position the read model reflected when it answered. Searching again with
    /// `as_of` set to it gives the same results later.
    pub position: i64,
    pub results: Vec<SearchHit>,
}

pub async fn search(pool: &PgPool, query: Query<'_>, request: &SearchRequest) -> Result<SearchResponse, SearchError> {
    request.validate(query)?;
    Snapshot::open(pool, false).await?.search(query, request).await
}

/// The same search on a replica when one can answer (see [`Readers`]: one that has reached `as_of`, for a
/// replay), else on the primary.
pub async fn search_on(
    readers: &Readers,
    query: Query<'_>,
    request: &SearchRequest,
) -> Result<SearchResponse, SearchError> {
    request.validate(query)?;
    // A replay goes to a server that has reached its position.
    let (snapshot, _) = Snapshot::live_from(readers, request.as_of).await?;
    snapshot.search(query, request).await
}

/// The same search by an exact scan of every candidate chunk instead of the HNSW index: slow, but the
/// ground truth that the index's recall is measured against.
pub async fn search_exact(
    pool: &PgPool,
    query: Query<'_>,
    request: &SearchRequest,
) -> Result<SearchResponse, SearchError> {
    request.validate(query)?;
    Snapshot::open(pool, true).await?.search(query, request).await
}

/// The read model at one moment, with the position it reflects: one transaction whose snapshot the
/// receipt and the rows share, so the receipt describes exactly what was searched. Opening it costs two
/// round trips to the server; the HTTP API opens it while the question is being embedded, so that they
/// are not on the answer's path.
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    generation: i64,
    checkpoint: i64,
    precision: Precision,
}

impl Snapshot {
    /// A snapshot for a live (HNSW) search.
    pub async fn live(pool: &PgPool) -> Result<Self, SearchError> {
        Self::open(pool, false).await
    }

    /// A live snapshot on a replica that has reached `at_least` when one has (see [`Readers::pick`]),
    /// else on the primary; a replica that fails to answer is left out and the primary asked instead.
    pub async fn live_from(readers: &Readers, at_least: Option<i64>) -> Result<(Self, ReadSource), SearchError> {
        readers
            .read(
                at_least,
                |pool| async move { Self::open(&pool, false).await },
                |e| match e {
                    SearchError::Database(e) => Some(e),
                    _ => None,
                },
            )
            .await
    }

    async fn open(pool: &PgPool, exact: bool) -> Result<Self, SearchError> {
        // Each round trip to the server is a wake-up that can wait for a CPU under load, so the
        // transaction's options go with its BEGIN, and its settings with the first read (the snapshot is
        // taken there).
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        // Settings for this transaction only, applied by the statement that reads the checkpoint:
        // - the HNSW scan keeps going past rows that scopes and filters drop (iterative scan), and looks
        //   at HNSW_EF_SEARCH candidates (at 112k chunks, pgvector's default of 40 gave recall@10 0.91;
        //   each candidate more costs time: ~5 ms at 200, ~4 at 140 on the development VM);
        // - every execution is planned with its own parameters: a generic plan cannot see the LIMIT or
        //   the query's words and may scan every chunk instead of using the indexes;
        // - an exact search turns the index off.
        // set_config is volatile, so PostgreSQL evaluates the subquery although no column of it is read.
        let (generation, checkpoint, precision): (i64, i64, String) = sqlx::query_as(
            "SELECT p.generation, projection_watermark(p.generation), p.precision
             FROM (SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
                          set_config('hnsw.ef_search', $1, true),
                          set_config('plan_cache_mode', 'force_custom_plan', true),
                          set_config('enable_indexscan', $2, true)) AS settings,
                  projections p
             WHERE p.status = $3",
        )
        .bind(HNSW_EF_SEARCH.to_string())
        .bind(if exact { "off" } else { "on" })
        .bind(crate::read_model::GenerationStatus::Active.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(SearchError::NoReadModel)?;
        Ok(Snapshot {
            tx,
            generation,
            checkpoint,
            // The table's CHECK admits only the three names.
            precision: precision.parse().unwrap_or_default(),
        })
    }

    /// The precision the generation's vectors were computed in: a question's vector must be too.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Runs the search in this snapshot. The transaction only read, so ending it either way is the same:
    /// it is dropped, which queues a ROLLBACK that goes out as the connection returns to the pool, and
    /// the answer does not wait a round trip for it.
    #[tracing::instrument(skip_all, fields(k = request.k, mode = request.mode.name(), as_of = ?request.as_of))]
    pub async fn search(mut self, query: Query<'_>, request: &SearchRequest) -> Result<SearchResponse, SearchError> {
        request.validate(query)?;
        let vector = match (request.mode.needs_vector(), query.vector) {
            (true, None) => {
                return Err(SearchError::NoVector {
                    mode: request.mode.name(),
                })
            }
            (_, v) => v.map(|v| pgvector::Vector::from(v.to_vec())),
        };
        let position = match request.as_of {
            None => self.checkpoint,
            Some(p) if p > self.checkpoint => {
                return Err(SearchError::AsOfAhead {
                    as_of: p,
                    checkpoint: self.checkpoint,
                })
            }
            Some(p) => p,
        };
        let scope = request.scope.as_ref().map(|s| s.as_str().to_owned());
        // Fusion needs more than k from each side (a chunk ranked low by one and high by the other may
        // win), and k documents need more than k chunks.
        let depth = if request.mode == SearchMode::Hybrid || request.distinct_documents {
            RANKING_DEPTH
        } else {
            request.k
        };
        let ranked = |mode: SearchMode| {
            let sql = sql::query(mode, request.as_of.is_some());
            sqlx::query_as::<_, SearchHit>(sql)
                .bind(vector.clone())
                .bind(self.generation)
                .bind(scope.clone())
                .bind(request.filter.clone())
                .bind(depth as i64)
                .bind(request.first_chunk_only)
                .bind(position)
                .bind(query.text)
        };
        let ranking = match request.mode {
            SearchMode::Dense | SearchMode::Lexical => sorted(ranked(request.mode).fetch_all(&mut *self.tx).await?),
            SearchMode::Hybrid => {
                let dense = ranked(SearchMode::Dense).fetch_all(&mut *self.tx).await?;
                let lexical = ranked(SearchMode::Lexical).fetch_all(&mut *self.tx).await?;
                fuse(dense, lexical)
            }
        };
        let mut results = if request.distinct_documents {
            distinct_documents(ranking, request.other_chunks)
        } else {
            ranking
        };
        results.truncate(request.k);
        Ok(SearchResponse { position, results })
    }
}

/// Best first, ties in a fixed order so that a replay lists them alike. (The relaxed index scan may
/// return near-ties slightly out of order, and fused scores tie often.)
fn sorted(mut hits: Vec<SearchHit>) -> Vec<SearchHit> {
    hits.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| (&a.scope, &a.document_id, a.chunk_index).cmp(&(&b.scope, &b.document_id, b.chunk_index)))
    });
    hits
}

/// Reciprocal rank fusion: each chunk scores the sum of 1 / (60 + rank) over the rankings it is in. Each
/// ranking's ranks come from its own scores (sorted here), never from the order the rows arrived in.
/// Returns the fused ranking, best first.
fn fuse(dense: Vec<SearchHit>, lexical: Vec<SearchHit>) -> Vec<SearchHit> {
    let mut fused: HashMap<(String, String, i32), SearchHit> = HashMap::new();
    for ranking in [sorted(dense), sorted(lexical)] {
        for (rank, hit) in ranking.into_iter().enumerate() {
            let share = 1.0 / (RRF_K + rank as f64 + 1.0);
            fused
                .entry((hit.scope.clone(), hit.document_id.clone(), hit.chunk_index))
                .and_modify(|h| h.score += share)
                .or_insert(SearchHit { score: share, ..hit });
        }
    }
    sorted(fused.into_values().collect())
}

/// Each document once, at its best chunk, in the order of those chunks (`ranking` best first); with
/// `other_chunks`, the document's other chunks in the ranking go with it.
fn distinct_documents(ranking: Vec<SearchHit>, other_chunks: bool) -> Vec<SearchHit> {
    let mut position: HashMap<(String, String), usize> = HashMap::new();
    let mut documents: Vec<SearchHit> = Vec::new();
    for hit in ranking {
        let key = (hit.scope.clone(), hit.document_id.clone());
        match position.get(&key) {
            Some(&i) => {
                if let Some(others) = documents[i].other_chunks.as_mut() {
                    others.push(ChunkMatch {
                        chunk_index: hit.chunk_index,
                        char_start: hit.char_start,
                        char_end: hit.char_end,
                        score: hit.score,
                    });
                }
            }
            None => {
                position.insert(key, documents.len());
                documents.push(SearchHit {
                    other_chunks: other_chunks.then(Vec::new),
                    ..hit
                });
            }
        }
    }
    documents
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f64) -> SearchHit {
        SearchHit {
            scope: "s".into(),
            document_id: id.into(),
            chunk_index: 0,
            score,
            title: String::new(),
            text: String::new(),
            char_start: 0,
            char_end: 0,
            page_start: None,
            page_end: None,
            section: None,
            metadata: serde_json::json!({}),
            other_chunks: None,
        }
    }

    #[test]
    fn fusion_rewards_agreement_between_the_rankings() {
        let dense = vec![hit("a", 0.9), hit("b", 0.8), hit("c", 0.7)];
        let lexical = vec![hit("c", 12.0), hit("b", 9.0), hit("d", 3.0)];
        let fused = fuse(dense, lexical);
        let order: Vec<&str> = fused.iter().map(|h| h.document_id.as_str()).collect();
        // c: 1/63 + 1/61 = 0.032267; b: 2/62 = 0.032258; a: 1/61; d: 1/63.
        assert_eq!(order, ["c", "b", "a", "d"]);
        assert!((fused[0].score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
        assert!((fused[3].score - 1.0 / 63.0).abs() < 1e-12);
    }

    fn chunk(id: &str, index: i32, score: f64) -> SearchHit {
        SearchHit {
            chunk_index: index,
            char_start: index * 100,
            char_end: index * 100 + 120,
            ..hit(id, score)
        }
    }

    fn keys(hits: &[SearchHit]) -> Vec<(String, i32, u64)> {
        hits.iter()
            .map(|h| (h.document_id.clone(), h.chunk_index, h.score.to_bits()))
            .collect()
    }

    proptest::proptest! {
        /// The SQL may return rows in any order: fusion ranks each list by its own scores, so the answer
        /// is the same whatever order either list arrives in (ties included).
        #[test]
        fn fusion_ignores_the_order_rows_arrive_in(
            dense in proptest::collection::vec((0u8..40, 0i32..3, 0u16..50), 0..60),
            lexical in proptest::collection::vec((0u8..40, 0i32..3, 0u16..50), 0..60),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let dedupe = |rows: Vec<(u8, i32, u16)>| {
                let mut seen = std::collections::HashSet::new();
                rows.into_iter()
                    .filter(|(d, c, _)| seen.insert((*d, *c)))
                    .map(|(d, c, s)| chunk(&format!("d{d}"), c, f64::from(s) / 10.0))
                    .collect::<Vec<_>>()
            };
            let (dense, lexical) = (dedupe(dense), dedupe(lexical));
            let shuffle = |mut v: Vec<SearchHit>, salt: u64| {
                // A fixed permutation per seed: sort by a hash of the key.
                v.sort_by_key(|h| {
                    use std::hash::{Hash, Hasher};
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    (seed ^ salt, &h.document_id, h.chunk_index).hash(&mut hasher);
                    hasher.finish()
                });
                v
            };
            let expected = fuse(sorted(dense.clone()), sorted(lexical.clone()));
            let shuffled = fuse(shuffle(dense.clone(), 1), shuffle(lexical.clone(), 2));
            let reversed = fuse(sorted(dense).into_iter().rev().collect(), sorted(lexical).into_iter().rev().collect());
            proptest::prop_assert_eq!(keys(&expected), keys(&shuffled));
            proptest::prop_assert_eq!(keys(&expected), keys(&reversed));
            for pair in expected.windows(2) {
                proptest::prop_assert!(pair[0].score >= pair[1].score);
            }
        }
    }

    #[test]
    fn a_document_ranks_once_at_its_best_chunk_with_its_other_chunks_if_asked() {
        let ranking = sorted(vec![
            chunk("a", 2, 0.9),
            chunk("b", 0, 0.8),
            chunk("a", 0, 0.7),
            chunk("c", 1, 0.6),
            chunk("b", 3, 0.5),
        ]);
        let plain = distinct_documents(ranking.clone(), false);
        let order: Vec<(&str, i32)> = plain.iter().map(|h| (h.document_id.as_str(), h.chunk_index)).collect();
        assert_eq!(order, [("a", 2), ("b", 0), ("c", 1)]);
        assert!(plain.iter().all(|h| h.other_chunks.is_none()));

        let with_others = distinct_documents(ranking, true);
        let others = |i: usize| -> Vec<(i32, i32, i32)> {
            with_others[i]
                .other_chunks
                .as_ref()
                .unwrap()
                .iter()
                .map(|m| (m.chunk_index, m.char_start, m.char_end))
                .collect()
        };
        assert_eq!(others(0), [(0, 0, 120)]);
        assert_eq!(others(1), [(3, 300, 420)]);
        assert!(others(2).is_empty());
    }

    #[test]
    fn one_definition_of_a_valid_request() {
        fn text(text: &str) -> Query<'_> {
            Query { text, vector: None }
        }
        let request = SearchRequest::default();
        assert!(matches!(request.validate(text("")), Err(SearchError::EmptyQuery)));
        assert!(matches!(request.validate(text(" \n\t")), Err(SearchError::EmptyQuery)));
        assert!(matches!(
            request.validate(text(&"x".repeat(MAX_QUERY_BYTES + 1))),
            Err(SearchError::QueryTooLong { .. })
        ));
        assert!(request.validate(text("a question")).is_ok());
        // A vector of the caller's own may stand alone, for a dense search only.
        let vector = [0.5f32; 4];
        let by_vector = Query {
            text: "",
            vector: Some(&vector),
        };
        assert!(SearchRequest {
            mode: SearchMode::Dense,
            ..SearchRequest::default()
        }
        .validate(by_vector)
        .is_ok());
        assert!(matches!(request.validate(by_vector), Err(SearchError::EmptyQuery)));
        for k in [0, MAX_K + 1] {
            assert!(matches!(
                SearchRequest {
                    k,
                    ..SearchRequest::default()
                }
                .validate(text("q")),
                Err(SearchError::BadK { .. })
            ));
        }
        let bad_filter = SearchRequest {
            filter: Some(serde_json::json!([1])),
            ..SearchRequest::default()
        };
        assert!(matches!(bad_filter.validate(text("q")), Err(SearchError::BadFilter)));
        let bad_as_of = SearchRequest {
            as_of: Some(-1),
            ..SearchRequest::default()
        };
        assert!(matches!(bad_as_of.validate(text("q")), Err(SearchError::BadAsOf(-1))));
    }
}
