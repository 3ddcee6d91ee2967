-- Lifeline schema, version 4 (PostgreSQL): recordings carry their source and audio, and outputs
-- are searchable.

-- Where a recording came from, and counters kept by append_audio in the chunk's transaction.
ALTER TABLE recordings
    ADD COLUMN source        TEXT    NOT NULL DEFAULT 'api',   -- upload | stream | api
    ADD COLUMN device_name   TEXT,
    ADD COLUMN filename      TEXT,
    ADD COLUMN audio_bytes   BIGINT  NOT NULL DEFAULT 0,
    ADD COLUMN audio_chunks  INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_audio_at DOUBLE PRECISION;
-- Listing all recordings newest first.
CREATE INDEX recordings_created ON recordings (created_at);
-- Finding recordings gone idle (the expression is written exactly so in unfinished_recordings).
CREATE INDEX recordings_idle ON recordings ((COALESCE(last_audio_at, created_at)));

-- 16 kHz mono s16le audio, one row per chunk (about 1 s from a stream, 10 s from an upload);
-- the bytea values are TOASTed out of line, so the heap and the key index stay small.
CREATE TABLE audio_chunks (
    recording_id TEXT             NOT NULL,
    seq          INTEGER          NOT NULL,
    created_at   DOUBLE PRECISION NOT NULL,
    pcm          BYTEA            NOT NULL,
    PRIMARY KEY (recording_id, seq)
);

-- A stage's outputs across recordings (the memories or action items of everyone).
CREATE INDEX outputs_stage ON outputs (stage, recording_id);

-- Full-text search over outputs' data ->> 'text': an expression index, so it is always in step
-- with the table (existing rows are indexed as it is built) and needs no triggers. 'simple'
-- lower-cases and splits words without stemming or stop words, like SQLite's unicode61; queries
-- must spell the same expression (to_tsvector('simple', data ->> 'text')) to use it.
CREATE INDEX outputs_text ON outputs USING gin (to_tsvector('simple', data ->> 'text'));
