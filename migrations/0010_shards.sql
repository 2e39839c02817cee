-- Projection partitioned into shards that workers anywhere take through leases held here.
--
-- A generation's log is split into a fixed number of shards (chosen when it is created) by a hash of the
-- event's stream, so that one document's events stay in order in one shard. Each shard has its own
-- checkpoint, moved in the same transaction as its effects; a worker holds a shard by a lease it renews
-- (heartbeat), and a write only commits while its worker still owns the shard (fencing). The generation's
-- position, which receipts carry, is the watermark: the lowest shard checkpoint, below which every shard
-- has passed.

-- The stream's hash, from md5 (whose value never changes with the server's version, unlike hashtext),
-- stored with the event so that a shard's events are found without hashing the whole log each time.
CREATE FUNCTION recall_stream_hash(stream_id text) RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT ('x' || substr(md5(stream_id), 1, 7))::bit(28)::integer $$;
ALTER TABLE events ADD COLUMN stream_hash integer GENERATED ALWAYS AS (recall_stream_hash(stream_id)) STORED;

ALTER TABLE projections ADD COLUMN shards integer NOT NULL DEFAULT 16 CHECK (shards BETWEEN 1 AND 1024);

CREATE TABLE projection_shards (
    generation     bigint      NOT NULL REFERENCES projections ON DELETE CASCADE,
    shard          integer     NOT NULL,
    -- The last log position whose effects in this shard are in the read model.
    checkpoint     bigint      NOT NULL DEFAULT 0,
    -- The worker holding the lease, until when; NULL: free.
    owner          uuid,
    lease_expires  timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (generation, shard),
    CHECK (shard >= 0)
);
INSERT INTO projection_shards (generation, shard, checkpoint)
SELECT p.generation, s, p.checkpoint FROM projections p, generate_series(0, p.shards - 1) AS s;
ALTER TABLE projections DROP COLUMN checkpoint;

CREATE FUNCTION projection_shards_create() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO projection_shards (generation, shard) SELECT NEW.generation, generate_series(0, NEW.shards - 1);
    RETURN NULL;
END $$;
CREATE TRIGGER projections_create_shards AFTER INSERT ON projections
    FOR EACH ROW EXECUTE FUNCTION projection_shards_create();

-- The watermark: every shard has projected the log up to it. Read in the same snapshot as the rows.
CREATE FUNCTION projection_watermark(g bigint) RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS
$$ SELECT coalesce(min(checkpoint), 0) FROM projection_shards WHERE generation = g $$;

-- Workers, for fair shares (a worker counts while its heartbeat is younger than the lease) and status.
CREATE TABLE projection_workers (
    id            uuid        PRIMARY KEY,
    generation    bigint      REFERENCES projections ON DELETE SET NULL,
    name          text        NOT NULL,
    device        text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- BM25's statistics per shard as well: workers write different shards concurrently, and rows that two of
-- them updated would serialise their transactions (or deadlock them). Readers sum over the shards.
CREATE FUNCTION recall_shard(scope text, document_id text, shards integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT recall_stream_hash(scope || ':' || document_id) % shards $$;

ALTER TABLE lexical_stats ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE lexical_stats DROP CONSTRAINT lexical_stats_pkey;
ALTER TABLE lexeme_stats ADD COLUMN shard integer NOT NULL DEFAULT 0;
ALTER TABLE lexeme_stats DROP CONSTRAINT lexeme_stats_pkey;
DELETE FROM lexical_stats;
DELETE FROM lexeme_stats;
INSERT INTO lexical_stats (generation, scope, shard, chunks, lengths)
SELECT c.generation, c.scope, recall_shard(c.scope, c.document_id, p.shards), count(*),
       coalesce(sum(length(c.lexemes)), 0)
FROM chunks c JOIN projections p USING (generation) WHERE c.valid_to IS NULL GROUP BY 1, 2, 3;
INSERT INTO lexeme_stats (generation, scope, shard, lexeme, chunks)
SELECT c.generation, c.scope, recall_shard(c.scope, c.document_id, p.shards), t.lexeme, count(*)
FROM chunks c JOIN projections p USING (generation), unnest(c.lexemes) t
WHERE c.valid_to IS NULL GROUP BY 1, 2, 3, 4;
ALTER TABLE lexical_stats ADD PRIMARY KEY (generation, scope, shard);
ALTER TABLE lexeme_stats ADD PRIMARY KEY (generation, lexeme, scope, shard);

CREATE OR REPLACE FUNCTION lexical_stats_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO lexical_stats AS s (generation, scope, shard, chunks, lengths)
    SELECT n.generation, n.scope, recall_shard(n.scope, n.document_id, p.shards), count(*),
           coalesce(sum(length(n.lexemes)), 0)
    FROM new_rows n JOIN projections p USING (generation) WHERE n.valid_to IS NULL GROUP BY 1, 2, 3
    ON CONFLICT (generation, scope, shard) DO UPDATE
        SET chunks = s.chunks + excluded.chunks, lengths = s.lengths + excluded.lengths;
    INSERT INTO lexeme_stats AS s (generation, scope, shard, lexeme, chunks)
    SELECT n.generation, n.scope, recall_shard(n.scope, n.document_id, p.shards), t.lexeme, count(*)
    FROM new_rows n JOIN projections p USING (generation), unnest(n.lexemes) t WHERE n.valid_to IS NULL
    GROUP BY 1, 2, 3, 4
    ON CONFLICT (generation, lexeme, scope, shard) DO UPDATE SET chunks = s.chunks + excluded.chunks;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION lexical_stats_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE lexical_stats s
    SET chunks = s.chunks - gone.chunks, lengths = s.lengths - gone.lengths
    FROM (SELECT o.generation, o.scope, recall_shard(o.scope, o.document_id, p.shards) AS shard,
                 count(*) AS chunks, coalesce(sum(length(o.lexemes)), 0) AS lengths
          FROM old_rows o JOIN new_rows n USING (generation, scope, document_id, valid_from, chunk_index)
               JOIN projections p ON p.generation = o.generation
          WHERE o.valid_to IS NULL AND n.valid_to IS NOT NULL
          GROUP BY 1, 2, 3) gone
    WHERE s.generation = gone.generation AND s.scope = gone.scope AND s.shard = gone.shard;
    UPDATE lexeme_stats s
    SET chunks = s.chunks - gone.chunks
    FROM (SELECT o.generation, o.scope, recall_shard(o.scope, o.document_id, p.shards) AS shard, t.lexeme,
                 count(*) AS chunks
          FROM old_rows o JOIN new_rows n USING (generation, scope, document_id, valid_from, chunk_index)
               JOIN projections p ON p.generation = o.generation, unnest(o.lexemes) t
          WHERE o.valid_to IS NULL AND n.valid_to IS NOT NULL
          GROUP BY 1, 2, 3, 4) gone
    WHERE s.generation = gone.generation AND s.lexeme = gone.lexeme AND s.scope = gone.scope
      AND s.shard = gone.shard;
    RETURN NULL;
END $$;

-- A live search answers as of the watermark, which a fast shard may have passed: the chunks it added
-- since (valid_from above the watermark) are left out, and the ones it closed since (valid_to above it)
-- are put back, both found by these indexes in a set as small as the shards' spread.
CREATE INDEX chunks_valid_from_idx ON chunks (generation, valid_from);
CREATE INDEX chunks_closed_idx ON chunks (generation, valid_to) WHERE valid_to IS NOT NULL;
