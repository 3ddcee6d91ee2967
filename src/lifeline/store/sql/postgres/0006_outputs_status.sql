-- Lifeline schema, version 6 (PostgreSQL): outputs by status, for "the open action items of user
-- X, newest first" (search_outputs with status).
--
-- The search walks the user's recordings newest first (recordings_user) and, for each, probes
-- this index for the stage's outputs of that status in index order: outputs of another status are
-- skipped inside the index, without reading their rows (nor detoasting their JSON). The key holds
-- the status as search_outputs spells it, exactly (an output without one, or with null, is open);
-- it is not a partial index on the stage because a generic plan (a prepared statement run often)
-- cannot prove a partial index's WHERE from a parameter.
CREATE INDEX outputs_status ON outputs (recording_id, stage, (COALESCE(data ->> 'status', 'open')), idx);
