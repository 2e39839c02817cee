-- What each version of a document said, as the projector decoded it (`DocumentEvent::decode`): the title,
-- metadata and text that as-of searches and document reads return, so that no reader parses event
-- payloads in SQL, and a later schema version of an event changes only its decoder.
CREATE TABLE document_versions (
    generation  bigint NOT NULL REFERENCES projections ON DELETE CASCADE,
    -- The position of the event that made this version (chunks.valid_from of its chunks).
    position    bigint NOT NULL,
    scope       text   NOT NULL,
    id          text   NOT NULL,
    title       text   NOT NULL,
    metadata    jsonb  NOT NULL,
    text        text   NOT NULL,
    PRIMARY KEY (generation, position)
);

-- Read models projected before this table existed: their versions taken from the log once, here (every
-- event so far is at schema version 1, whose payload holds title, text and metadata).
INSERT INTO document_versions (generation, position, scope, id, title, metadata, text)
SELECT DISTINCT ON (c.generation, c.valid_from)
       c.generation, c.valid_from, c.scope, c.document_id,
       coalesce(e.payload->>'title', ''), coalesce((e.payload->'metadata')::jsonb, '{}'::jsonb),
       coalesce(e.payload->>'text', '')
FROM chunks c
JOIN events e ON e.position = c.valid_from
ORDER BY c.generation, c.valid_from;
