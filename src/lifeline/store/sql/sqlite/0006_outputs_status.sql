-- Lifeline schema, version 6: outputs by status, for "the open action items of user X, newest
-- first" (search_outputs with status).
--
-- The search walks the user's recordings newest first (recordings_user) and, for each, probes
-- this index for the stage's outputs of that status in index order: outputs of another status are
-- skipped inside the index, without reading their rows. The key holds the status as search_outputs
-- spells it, exactly (an output without one, or with null, is open); it is not a partial index on
-- the stage because SQLite proves a partial index's WHERE only from literals, and the stage is a
-- bound parameter.
CREATE INDEX outputs_status ON outputs (recording_id, stage, COALESCE(json_extract(data, '$.status'), 'open'), idx);
