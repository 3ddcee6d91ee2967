-- Lifeline schema, version 4: recordings carry their source and audio, and outputs are searchable.

-- Where a recording came from, and counters kept by append_audio in the chunk's transaction.
ALTER TABLE recordings ADD COLUMN source TEXT NOT NULL DEFAULT 'api';   -- upload | stream | api
ALTER TABLE recordings ADD COLUMN device_name TEXT;
ALTER TABLE recordings ADD COLUMN filename TEXT;
ALTER TABLE recordings ADD COLUMN audio_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN audio_chunks INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recordings ADD COLUMN last_audio_at REAL;
-- Listing all recordings newest first.
CREATE INDEX recordings_created ON recordings (created_at);
-- Finding recordings gone idle (the expression is written exactly so in unfinished_recordings).
CREATE INDEX recordings_idle ON recordings (COALESCE(last_audio_at, created_at));

-- 16 kHz mono s16le audio, one row per chunk (about 1 s from a stream, 10 s from an upload).
-- A rowid table: the blobs live in the table's own pages, and the (recording_id, seq) index
-- stays small and dense. pcm is the last column, so that reading the others never walks the
-- blob's overflow pages.
CREATE TABLE audio_chunks (
    id           INTEGER PRIMARY KEY,
    recording_id TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    created_at   REAL    NOT NULL,
    pcm          BLOB    NOT NULL,
    UNIQUE (recording_id, seq)
);

-- Full-text search over outputs' data ->> 'text'.
--
-- FTS5 needs a stable integer rowid per document, and outputs was a WITHOUT ROWID table, so it
-- is rebuilt with an INTEGER PRIMARY KEY (which, unlike an implicit rowid, survives VACUUM) and
-- its key (recording_id, stage, idx) becomes a UNIQUE constraint that the upserts still target.
-- outputs_fts is a contentless FTS5 table (content=''): it holds only the index, keyed by
-- outputs.id, so a transcript's text is not stored twice. Searching matches outputs_fts and joins
-- outputs on id for everything else (stage, owner, data). The triggers keep the index in step
-- with every insert, upsert, edit and delete in the same transaction; a contentless table is told
-- what to remove with the 'delete' command and the old text, which json_extract recomputes
-- exactly from the old row.
ALTER TABLE outputs RENAME TO outputs_v1;
CREATE TABLE outputs (
    id           INTEGER PRIMARY KEY,
    recording_id TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    idx          INTEGER NOT NULL,
    data         TEXT    NOT NULL,                  -- JSON
    job_id       INTEGER,
    revision     INTEGER NOT NULL DEFAULT 1,        -- how many times this key was committed
    updated_at   REAL    NOT NULL,
    UNIQUE (recording_id, stage, idx)
);
INSERT INTO outputs (recording_id, stage, idx, data, job_id, revision, updated_at)
SELECT recording_id, stage, idx, data, job_id, revision, updated_at FROM outputs_v1
 ORDER BY recording_id, stage, idx;
DROP TABLE outputs_v1;
-- A stage's outputs across recordings (the memories or action items of everyone).
CREATE INDEX outputs_stage ON outputs (stage, recording_id);

-- unicode61 without diacritic folding: words match exactly as PostgreSQL's 'simple' matches them.
CREATE VIRTUAL TABLE outputs_fts USING fts5 (text, content = '', tokenize = 'unicode61 remove_diacritics 0');
-- existing outputs are indexed too
INSERT INTO outputs_fts (rowid, text) SELECT id, json_extract(data, '$.text') FROM outputs;

CREATE TRIGGER outputs_fts_insert AFTER INSERT ON outputs BEGIN
    INSERT INTO outputs_fts (rowid, text) VALUES (new.id, json_extract(new.data, '$.text'));
END;
CREATE TRIGGER outputs_fts_update AFTER UPDATE OF data ON outputs BEGIN
    INSERT INTO outputs_fts (outputs_fts, rowid, text)
    VALUES ('delete', old.id, json_extract(old.data, '$.text'));
    INSERT INTO outputs_fts (rowid, text) VALUES (new.id, json_extract(new.data, '$.text'));
END;
CREATE TRIGGER outputs_fts_delete AFTER DELETE ON outputs BEGIN
    INSERT INTO outputs_fts (outputs_fts, rowid, text)
    VALUES ('delete', old.id, json_extract(old.data, '$.text'));
END;
