-- The writer's one-round-trip append. An append used to take five round trips (BEGIN, the log_head lock,
-- the streams' versions, the insert, COMMIT), each a wake-up of a server process that waits for a CPU
-- when the projector keeps them busy. recall's writer remembers the head position and hash its own last
-- commit left, computes the next events' positions, versions and hashes from them, and sends everything
-- in one call of this function, outside an explicit transaction (so the call commits too). Under the
-- log_head lock the function checks that assumption: nothing was appended since, and every stream is at
-- the version the writer assumed. When the assumption holds it inserts, moves the head and notifies
-- (insert_events, which the five-step path calls too once it holds the lock); when it does not, it writes
-- nothing and returns false, and the writer takes the five-step path, which reads the head and versions
-- under the lock.

-- Writes worked-out events at the head and moves the head past them, with the notification tailers wait
-- for. The caller holds the log_head lock and has checked the streams' versions.
CREATE FUNCTION insert_events(
    positions         bigint[],
    event_ids         uuid[],
    event_streams     text[],
    scopes            text[],
    versions          bigint[],
    event_types       text[],
    schema_versions   integer[],
    payloads          text[],
    metadatas         text[],
    causation_ids     uuid[],
    correlation_ids   uuid[],
    actors            text[],
    recorded_ats      timestamptz[],
    hashes            bytea[],
    new_position      bigint,
    new_hash          bytea,
    channel           text
) RETURNS void LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    INSERT INTO events (position, event_id, stream_id, scope, version, event_type, schema_version,
                        payload, metadata, causation_id, correlation_id, actor, recorded_at, hash)
    SELECT p, e, s, sc, v, t, sv, pl::json, md::json, c, co, a, r, h
    FROM unnest(positions, event_ids, event_streams, scopes, versions, event_types, schema_versions,
                payloads, metadatas, causation_ids, correlation_ids, actors, recorded_ats, hashes)
         AS x(p, e, s, sc, v, t, sv, pl, md, c, co, a, r, h);
    UPDATE log_head SET position = new_position, last_hash = new_hash;
    PERFORM pg_notify(channel, new_position::text);
END $$;

CREATE FUNCTION append_at_head(
    expected_position bigint,
    expected_hash     bytea,
    stream_ids        text[],
    stream_versions   bigint[],
    positions         bigint[],
    event_ids         uuid[],
    event_streams     text[],
    scopes            text[],
    versions          bigint[],
    event_types       text[],
    schema_versions   integer[],
    payloads          text[],
    metadatas         text[],
    causation_ids     uuid[],
    correlation_ids   uuid[],
    actors            text[],
    recorded_ats      timestamptz[],
    hashes            bytea[],
    new_position      bigint,
    new_hash          bytea,
    channel           text
) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    head_position bigint;
    head_hash     bytea;
BEGIN
    SELECT position, last_hash INTO head_position, head_hash FROM log_head FOR UPDATE;
    IF head_position <> expected_position OR head_hash <> expected_hash THEN
        RETURN false;
    END IF;
    -- In a volatile function each statement takes a new snapshot, so this one, taken with the lock
    -- held, sees every append that committed before it.
    IF EXISTS (
        SELECT 1 FROM unnest(stream_ids, stream_versions) AS s(id, version)
        WHERE coalesce((SELECT max(e.version) FROM events e WHERE e.stream_id = s.id), 0) <> s.version
    ) THEN
        RETURN false;
    END IF;
    PERFORM insert_events(positions, event_ids, event_streams, scopes, versions, event_types,
                          schema_versions, payloads, metadatas, causation_ids, correlation_ids, actors,
                          recorded_ats, hashes, new_position, new_hash, channel);
    RETURN true;
END $$;
