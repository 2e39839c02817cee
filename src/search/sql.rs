//! The search statements. Every one takes the same parameters, so the caller binds them alike:
//! $1 query vector, $2 generation, $3 scope (or NULL), $4 metadata filter (or NULL), $5 how many,
//! $6 first chunks only, $7 the position searched (the watermark, or as_of), $8 the query text.

use std::sync::LazyLock;

use super::SearchMode;

/// The chunks valid at $7 (with the title and metadata of their own version), as the HNSW index sees them:
/// `current` gives those still current (the index's rows: live, the ones no shard has replaced yet; a
/// chunk a shard added past the watermark is left out), else those closed since $7 (a shard ahead of the
/// watermark replaced them), or as of a past position, every chunk valid then.
fn candidates(which: Candidates) -> String {
    let validity = match which {
        Candidates::Current => "c.valid_to IS NULL AND c.valid_from <= $7",
        Candidates::ClosedSince => "c.valid_to > $7 AND c.valid_from <= $7",
        Candidates::AsOf => "c.valid_from <= $7 AND (c.valid_to IS NULL OR c.valid_to > $7)",
    };
    format!(
        "SELECT c.scope, c.document_id, c.chunk_index, c.embedding, c.lexemes, c.text, c.char_start, c.char_end,
                c.page_start, c.page_end, c.section, v.title, v.metadata
         FROM chunks c
         JOIN document_versions v ON v.generation = c.generation AND v.position = c.valid_from
         WHERE c.generation = $2 AND {validity}
           AND ($3::text IS NULL OR c.scope = $3)
           AND ($4::jsonb IS NULL OR v.metadata @> $4)
           AND (NOT $6::boolean OR c.chunk_index = 0)"
    )
}

#[derive(Clone, Copy)]
enum Candidates {
    Current,
    ClosedSince,
    AsOf,
}

/// The nearest `$5` among `which`, nearest first.
fn nearest(which: Candidates) -> String {
    // A plain subquery, which the planner flattens, so that the ORDER BY reaches the index.
    format!(
        "SELECT c.scope, c.document_id, c.chunk_index, 1 - (c.embedding <=> $1::vector) AS score, c.title, c.text,
                c.char_start, c.char_end, c.page_start, c.page_end, c.section, c.metadata
         FROM ({candidates}) c
         ORDER BY c.embedding <=> $1::vector
         LIMIT $5",
        candidates = candidates(which)
    )
}

/// Nearest first. Live, every search answers as of the watermark ($7): the planner walks the HNSW index
/// over current chunks (scanning on past filtered-out rows until enough are found), and the few chunks
/// that shards ahead of the watermark have closed since are scanned beside it. As of a past position, it
/// scans the chunks valid then.
fn dense(as_of: bool) -> String {
    if as_of {
        return nearest(Candidates::AsOf);
    }
    format!(
        "SELECT * FROM (({current}) UNION ALL ({closed})) hits ORDER BY score DESC LIMIT $5",
        current = nearest(Candidates::Current),
        closed = nearest(Candidates::ClosedSince),
    )
}

/// How many chunks, at most, lexical search scores in full. Candidates come from the query's rarest
/// words first (lowest document frequency), adding words while the candidates stay under this; the
/// commoner words still count in every candidate's score. A chunk holding only common words of the
/// question (which could only score low) is thereby not considered: the price of bounded latency.
const CANDIDATE_BUDGET: u32 = 2000;

/// BM25 (k1 = 1.2, b = 0.75, Lucene's idf) over "title text" in English (stemmed, stop words dropped).
/// A chunk's length is its number of distinct lexemes. Every search scores the chunks valid at $7 (live:
/// the watermark). Live, the corpus statistics come from lexical_stats and lexeme_stats, corrected by the
/// few chunks that shards ahead of the watermark have added or closed since (`delta`); as of a past
/// position they are counted over the chunks valid then. Either way they are the numbers the tables held
/// at that position, so a replay scores as the original.
///
/// The term frequency comes from PostgreSQL itself: ts_rank of a one-lexeme query is
/// 0.1 * H(tf) / (pi^2 / 6) with H(tf) = sum of 1/j^2 for j = 1..tf (its calc_rank_or), and
/// H(tf) ~ pi^2/6 - 1 / (tf + 0.5) inverts that to within a few percent, without unnesting every
/// candidate's tsvector.
fn lexical(as_of: bool) -> String {
    let validity = "c.valid_from <= $7 AND (c.valid_to IS NULL OR c.valid_to > $7)";
    let (delta, document_frequency) = if as_of {
        (
            String::new(),
            format!(
                "(SELECT count(*) FROM chunks c
                  WHERE c.generation = $2 AND {validity} AND ($3::text IS NULL OR c.scope = $3) AND c.lexemes @@ t.q)"
            ),
        )
    } else {
        (
            "delta AS MATERIALIZED (
                 SELECT c.lexemes, -1 AS sign FROM chunks c
                 WHERE c.generation = $2 AND c.valid_from > $7 AND c.valid_to IS NULL
                   AND ($3::text IS NULL OR c.scope = $3)
                 UNION ALL
                 SELECT c.lexemes, 1 FROM chunks c
                 WHERE c.generation = $2 AND c.valid_to > $7 AND c.valid_from <= $7
                   AND ($3::text IS NULL OR c.scope = $3)
             ),"
            .to_owned(),
            "(coalesce((SELECT sum(s.chunks) FROM lexeme_stats s
                        WHERE s.generation = $2 AND s.lexeme = t.lexeme AND ($3::text IS NULL OR s.scope = $3)), 0)
              + (SELECT coalesce(sum(d.sign), 0) FROM delta d WHERE d.lexemes @@ t.q))"
                .to_owned(),
        )
    };
    let filter = "($4::jsonb IS NULL OR EXISTS (
             SELECT 1 FROM document_versions v
             WHERE v.generation = c.generation AND v.position = c.valid_from AND v.metadata @> $4))";
    let details = "SELECT c.scope, c.document_id, c.chunk_index, top.score, v.title, c.text, c.char_start, c.char_end,
                c.page_start, c.page_end, c.section, v.metadata
         FROM top
         JOIN chunks c ON c.generation = $2 AND c.scope = top.scope AND c.document_id = top.document_id
                      AND c.valid_from = top.valid_from AND c.chunk_index = top.chunk_index
         JOIN document_versions v ON v.generation = c.generation AND v.position = c.valid_from";
    format!(
        "WITH {delta} terms AS (
             SELECT lexeme, quoted::tsquery AS q, quoted
             FROM (SELECT DISTINCT t.lexeme,
                          '''' || replace(replace(t.lexeme, '\\', '\\\\'), '''', '''''') || '''' AS quoted
                   FROM unnest(to_tsvector('english', $8)) AS t) quoted_terms
         ),
         df AS (
             SELECT t.lexeme, t.q, t.quoted, coalesce({document_frequency}, 0)::float8 AS df FROM terms t
         ),
         chosen AS (
             SELECT quoted FROM (
                 SELECT quoted, df, sum(df) OVER (ORDER BY df, lexeme) AS running FROM df WHERE df > 0
             ) ranked
             WHERE running - df < {CANDIDATE_BUDGET}
         ),
         stats AS (
             SELECT greatest(sum(chunks), 1)::float8 AS n,
                    greatest(sum(lengths)::float8 / greatest(sum(chunks), 1), 1) AS avglen
             FROM ({stats}) s
         ),
         candidates AS MATERIALIZED (
             SELECT c.scope, c.document_id, c.chunk_index, c.valid_from, c.lexemes
             FROM chunks c
             WHERE c.generation = $2 AND {validity} AND ($3::text IS NULL OR c.scope = $3)
               AND (NOT $6::boolean OR c.chunk_index = 0)
               AND c.lexemes @@ (SELECT string_agg(quoted, ' | ')::tsquery FROM chosen)
               AND {filter}
         ),
         scores AS (
             SELECT m.scope, m.document_id, m.chunk_index, m.valid_from,
                    (SELECT sum(ln(1 + (s.n - d.df + 0.5) / (d.df + 0.5)) * f.tf * 2.2
                                / (f.tf + 1.2 * (0.25 + 0.75 * length(m.lexemes) / s.avglen)))
                     FROM df d CROSS JOIN stats s,
                          LATERAL (SELECT greatest(1.0 / greatest(1.6449340668 - ts_rank(m.lexemes, d.q, 0)
                                                                  * 16.449340668, 1e-6) - 0.5, 1.0) AS tf) f
                     WHERE d.df > 0 AND m.lexemes @@ d.q) AS score
             FROM candidates m
         ),
         top AS (
             SELECT * FROM scores ORDER BY score DESC, scope, document_id, chunk_index LIMIT $5
         )
         {details}
         ORDER BY top.score DESC, c.scope, c.document_id, c.chunk_index",
        stats = stats(as_of)
    )
}

/// The number of chunks and the sum of their lengths: kept current in lexical_stats (one row per scope
/// and shard), corrected to the watermark by `delta`; as of a past position, counted over the chunks
/// valid then, so that a replay scores exactly as the original did.
fn stats(as_of: bool) -> &'static str {
    if as_of {
        "SELECT count(*) AS chunks, coalesce(sum(length(lexemes)), 0) AS lengths
         FROM chunks
         WHERE generation = $2 AND valid_from <= $7 AND (valid_to IS NULL OR valid_to > $7)
           AND ($3::text IS NULL OR scope = $3)"
    } else {
        "SELECT chunks, lengths FROM lexical_stats WHERE generation = $2 AND ($3::text IS NULL OR scope = $3)
         UNION ALL
         SELECT coalesce(sum(sign), 0), coalesce(sum(sign * length(lexemes)), 0) FROM delta"
    }
}

static QUERIES: LazyLock<[String; 4]> = LazyLock::new(|| [dense(false), dense(true), lexical(false), lexical(true)]);

pub(super) fn query(mode: SearchMode, as_of: bool) -> &'static str {
    let lexical = mode == SearchMode::Lexical;
    &QUERIES[usize::from(lexical) * 2 + usize::from(as_of)]
}
