-- The pgvector read model, built by the projector from the event log. Each rebuild fills a new
-- generation while the active one keeps serving; a generation records the model that embedded it.
CREATE TABLE projections (
    generation      bigserial   PRIMARY KEY,
    name            text        NOT NULL DEFAULT 'chunks',
    status          text        NOT NULL CHECK (status IN ('building', 'active', 'retired')),
    model_name      text        NOT NULL,
    model_revision  text        NOT NULL,
    dimension       integer     NOT NULL,
    -- The last log position whose effect is in this generation; moves in the same transaction as the rows.
    checkpoint      bigint      NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX projections_one_active ON projections (name) WHERE status = 'active';

CREATE TABLE documents (
    generation  bigint      NOT NULL REFERENCES projections ON DELETE CASCADE,
    scope       text        NOT NULL,
    id          text        NOT NULL,
    title       text        NOT NULL,
    metadata    jsonb       NOT NULL,
    version     bigint      NOT NULL,
    removed     boolean     NOT NULL,
    position    bigint      NOT NULL,
    PRIMARY KEY (generation, scope, id)
);

-- Chunks are never overwritten: a change closes the old ones (`valid_to`) and adds new ones, so a search
-- can be replayed as of any past position. Live searches use the partial indexes over current chunks.
CREATE TABLE chunks (
    generation   bigint      NOT NULL REFERENCES projections ON DELETE CASCADE,
    scope        text        NOT NULL,
    document_id  text        NOT NULL,
    valid_from   bigint      NOT NULL,
    chunk_index  integer     NOT NULL,
    valid_to     bigint,
    char_start   integer     NOT NULL,
    char_end     integer     NOT NULL,
    text         text        NOT NULL,
    tokens       integer     NOT NULL,
    embedding    vector(384) NOT NULL,
    PRIMARY KEY (generation, scope, document_id, valid_from, chunk_index),
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX chunks_current_embedding_idx ON chunks USING hnsw (embedding vector_cosine_ops) WHERE valid_to IS NULL;
CREATE INDEX chunks_current_document_idx ON chunks (generation, scope, document_id) WHERE valid_to IS NULL;
CREATE INDEX chunks_scope_idx ON chunks (generation, scope);

-- Events the projector could not apply: parked here, never only logged, until `recall failures retry`.
CREATE TABLE projection_failures (
    generation       bigint      NOT NULL REFERENCES projections ON DELETE CASCADE,
    position         bigint      NOT NULL,
    event_id         uuid        NOT NULL,
    stream_id        text        NOT NULL,
    event_type       text        NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL DEFAULT 1,
    first_failed_at  timestamptz NOT NULL DEFAULT now(),
    last_failed_at   timestamptz NOT NULL DEFAULT now(),
    resolved_at      timestamptz,
    PRIMARY KEY (generation, position)
);
