-- Which log a read model was projected from. With the read model in a database of its own
-- (RECALL_READ_MODEL_URL), it could be pointed at another log, whose positions would then be taken for
-- its own: the projector refuses a generation claimed by another log.
ALTER TABLE log_head ADD COLUMN log_id uuid NOT NULL DEFAULT gen_random_uuid();
ALTER TABLE projections ADD COLUMN log_id uuid;
