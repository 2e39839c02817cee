-- The arithmetic a generation's vectors were computed in (issue 26): one model's vectors at two precisions
-- differ slightly, so a generation is built, extended and queried at one precision only.
ALTER TABLE projections
    ADD COLUMN precision text NOT NULL DEFAULT 'f32' CHECK (precision IN ('f32', 'bf16', 'int8'));
