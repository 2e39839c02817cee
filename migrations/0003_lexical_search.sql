-- Lexical retrieval beside the vectors: each chunk carries its document's title (as it was at the
-- chunk's version, so as-of searches see the words they would have seen), and a generated English
-- tsvector over "title text" with a GIN index. The index covers superseded chunks too, so lexical
-- and hybrid searches replay as of a receipt like dense ones.
ALTER TABLE chunks ADD COLUMN title text NOT NULL DEFAULT '';
UPDATE chunks c SET title = d.title
FROM documents d
WHERE d.generation = c.generation AND d.scope = c.scope AND d.id = c.document_id AND c.valid_to IS NULL;
ALTER TABLE chunks ADD COLUMN lexemes tsvector
    GENERATED ALWAYS AS (to_tsvector('english', title || ' ' || text)) STORED;
CREATE INDEX chunks_lexemes_idx ON chunks USING gin (lexemes);

-- BM25 needs, per generation and scope, the number of current chunks and their total length, and each
-- word's document frequency. Statement-level triggers on the projector's writes keep them here, in the
-- projector's own transaction (so a search's snapshot sees them consistent with the chunks), which saves
-- counting over every chunk per query.
CREATE TABLE lexical_stats (
    generation  bigint NOT NULL REFERENCES projections ON DELETE CASCADE,
    scope       text   NOT NULL,
    chunks      bigint NOT NULL,
    lengths     bigint NOT NULL,
    PRIMARY KEY (generation, scope)
);
INSERT INTO lexical_stats
SELECT generation, scope, count(*), coalesce(sum(length(lexemes)), 0)
FROM chunks WHERE valid_to IS NULL GROUP BY generation, scope;

CREATE TABLE lexeme_stats (
    generation  bigint NOT NULL REFERENCES projections ON DELETE CASCADE,
    scope       text   NOT NULL,
    lexeme      text   NOT NULL,
    chunks      bigint NOT NULL,
    PRIMARY KEY (generation, lexeme, scope)
);
INSERT INTO lexeme_stats
SELECT c.generation, c.scope, t.lexeme, count(*)
FROM chunks c, unnest(c.lexemes) t WHERE c.valid_to IS NULL GROUP BY c.generation, c.scope, t.lexeme;

CREATE FUNCTION lexical_stats_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lexical_stats AS s (generation, scope, chunks, lengths)
    SELECT generation, scope, count(*), coalesce(sum(length(lexemes)), 0)
    FROM new_rows WHERE valid_to IS NULL GROUP BY generation, scope
    ON CONFLICT (generation, scope) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, lengths = s.lengths + excluded.lengths;
    INSERT INTO lexeme_stats AS s (generation, scope, lexeme, chunks)
    SELECT n.generation, n.scope, t.lexeme, count(*)
    FROM new_rows n, unnest(n.lexemes) t WHERE n.valid_to IS NULL
    GROUP BY n.generation, n.scope, t.lexeme
    ON CONFLICT (generation, lexeme, scope) DO UPDATE SET chunks = s.chunks + excluded.chunks;
    RETURN NULL;
END $$;

-- A chunk leaves the current set when the projector closes it (valid_to set).
CREATE FUNCTION lexical_stats_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE lexical_stats s
    SET chunks = s.chunks - gone.chunks, lengths = s.lengths - gone.lengths
    FROM (SELECT o.generation, o.scope, count(*) AS chunks, coalesce(sum(length(o.lexemes)), 0) AS lengths
          FROM old_rows o JOIN new_rows n USING (generation, scope, document_id, valid_from, chunk_index)
          WHERE o.valid_to IS NULL AND n.valid_to IS NOT NULL
          GROUP BY o.generation, o.scope) gone
    WHERE s.generation = gone.generation AND s.scope = gone.scope;
    UPDATE lexeme_stats s
    SET chunks = s.chunks - gone.chunks
    FROM (SELECT o.generation, o.scope, t.lexeme, count(*) AS chunks
          FROM old_rows o JOIN new_rows n USING (generation, scope, document_id, valid_from, chunk_index),
               unnest(o.lexemes) t
          WHERE o.valid_to IS NULL AND n.valid_to IS NOT NULL
          GROUP BY o.generation, o.scope, t.lexeme) gone
    WHERE s.generation = gone.generation AND s.lexeme = gone.lexeme AND s.scope = gone.scope;
    RETURN NULL;
END $$;

CREATE TRIGGER chunks_lexical_stats_insert AFTER INSERT ON chunks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_insert();
CREATE TRIGGER chunks_lexical_stats_update AFTER UPDATE ON chunks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_update();
