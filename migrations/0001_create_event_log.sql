-- The append-only event log. Positions are gapless and commit-ordered because every append takes the
-- single `log_head` row lock, reads the head position, and bumps it inside its own transaction: a rolled-back
-- append bumps nothing, and a later append cannot take a position until the earlier one has committed.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE log_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position   bigint  NOT NULL,
    last_hash  bytea   NOT NULL
);
INSERT INTO log_head (singleton, position, last_hash) VALUES (true, 0, decode(repeat('00', 32), 'hex'));

CREATE TABLE events (
    position        bigint      PRIMARY KEY CHECK (position >= 1),
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    scope           text        NOT NULL,
    version         bigint      NOT NULL CHECK (version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    -- `json`, not `jsonb`: the stored text must be byte-for-byte the text that was hashed.
    payload         json        NOT NULL,
    metadata        json        NOT NULL,
    causation_id    uuid,
    correlation_id  uuid,
    actor           text,
    recorded_at     timestamptz NOT NULL,
    hash            bytea       NOT NULL,
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
CREATE INDEX events_scope_position_idx ON events (scope, position);

-- The log is append-only: the application role never needs UPDATE or DELETE, and a trigger makes an
-- accidental one fail loudly. (A superuser can still disable it; `recall verify` catches what follows.)
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only: % on events is not allowed', TG_OP;
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
