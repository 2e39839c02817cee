-- A projector that keeps failing is visible to every reader (`recall status`, /metrics, /readyz): how many
-- attempts in a row have failed at this checkpoint, since when, and the last error. A committed batch
-- clears them.
ALTER TABLE projections
    ADD COLUMN retry_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN retrying_since timestamptz,
    ADD COLUMN last_error     text;
