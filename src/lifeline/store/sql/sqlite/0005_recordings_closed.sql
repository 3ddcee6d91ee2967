-- Lifeline schema, version 5: a recording is closed once it ever had a job.
--
-- closed_at is set by the first job inserted for the recording (its chunk job from an upload or a
-- stream, add_recording's first_job, any stage's next job), in the transaction that inserts it, and
-- is never cleared. Before, "unfinished" meant "has no row in jobs", so deleting a recording's jobs
-- (purge_dead_letters, retention) made a finished recording look unfinished again, and the sweeper
-- re-closed (re-transcribed) a stream or deleted an upload with its audio.
ALTER TABLE recordings ADD COLUMN closed_at REAL;

-- Recordings that already have a job are closed when their oldest job was created. (Retention
-- keeps the jobs of every recording that exists, so only a purge can have deleted them; such a
-- recording looked unfinished to the sweeper, which has re-closed or deleted it already.)
UPDATE recordings
   SET closed_at = (SELECT MIN(j.created_at) FROM jobs j WHERE j.recording_id = recordings.audio_uuid)
 WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.recording_id = recordings.audio_uuid);

-- Finding the unclosed recordings gone idle: the few unclosed ones only (live streams, uploads
-- being decoded), by the expression written exactly so in unfinished_recordings; it replaces
-- recordings_idle, whose only user that query was.
DROP INDEX recordings_idle;
CREATE INDEX recordings_unclosed ON recordings (COALESCE(last_audio_at, created_at)) WHERE closed_at IS NULL;

-- Every path that inserts a job (enqueue, enqueue_many, add_recording's first_job, complete's
-- next jobs) closes its recording here, in the same transaction. Once closed, a further job's
-- UPDATE finds no row (closed_at IS NULL fails on the primary-key probe) and writes nothing.
CREATE TRIGGER jobs_close_recording AFTER INSERT ON jobs
WHEN new.recording_id IS NOT NULL
BEGIN
    UPDATE recordings SET closed_at = new.created_at
     WHERE audio_uuid = new.recording_id AND closed_at IS NULL;
END;
