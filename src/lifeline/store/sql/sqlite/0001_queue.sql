-- Lifeline schema, version 1: jobs, their attempts, recordings, stage outputs, queue flags,
-- workers and recovery statistics. Times are Unix seconds (REAL).

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY,
    queue            TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    run_at           REAL    NOT NULL,
    payload          TEXT    NOT NULL,              -- JSON
    attempts         INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lost_count       INTEGER NOT NULL DEFAULT 0,    -- leases that expired (worker lost)
    claims           INTEGER NOT NULL DEFAULT 0,    -- every claim, deferred ones included
    lease_owner      TEXT,
    lease_expires_at REAL,
    recording_id     TEXT,
    user_id          TEXT,
    client_id        TEXT,
    idempotency_key  TEXT,
    last_error       TEXT,
    created_at       REAL    NOT NULL,
    updated_at       REAL    NOT NULL,
    finished_at      REAL
);

-- Indexes are partial where they can be, so that a state change touches as few entries as
-- possible (each touched index page is written to the WAL at every commit):
-- The claim walks this index in order; it holds only claimable rows. state and updated_at make it
-- cover the per-queue counts of waiting jobs and the oldest waiting job.
CREATE INDEX jobs_claimable ON jobs (queue, priority DESC, run_at, id, state, updated_at)
    WHERE state IN ('pending', 'failed', 'retry');
-- The recovery manager's scan of expired leases; queue makes it cover the count of running jobs.
CREATE INDEX jobs_leased ON jobs (lease_expires_at, queue) WHERE state = 'processing';
-- Finished jobs: a row enters once, when it finishes. Counts, throughput, dead letters, retention.
CREATE INDEX jobs_finished ON jobs (queue, state, updated_at)
    WHERE state IN ('completed', 'cancelled', 'dead_letter');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_recording ON jobs (recording_id) WHERE recording_id IS NOT NULL;
CREATE INDEX jobs_client ON jobs (client_id) WHERE client_id IS NOT NULL;
CREATE INDEX jobs_user ON jobs (user_id) WHERE user_id IS NOT NULL;

-- The audit trail: one row per claim, written at the claim and closed when the attempt ends.
CREATE TABLE attempts (
    job_id      INTEGER NOT NULL,                  -- jobs.id; deleted with its job
    claim       INTEGER NOT NULL,
    worker_id   TEXT    NOT NULL,
    started_at  REAL    NOT NULL,
    finished_at REAL,
    outcome     TEXT    NOT NULL,
    error       TEXT,
    PRIMARY KEY (job_id, claim)
) WITHOUT ROWID;

CREATE TABLE recordings (
    audio_uuid TEXT PRIMARY KEY,
    user_id    TEXT,
    client_id  TEXT,
    created_at REAL NOT NULL
    -- no status column: a recording's status is derived from its jobs
);
CREATE INDEX recordings_user ON recordings (user_id, created_at);
CREATE INDEX recordings_client ON recordings (client_id, created_at);

-- Stage outputs keyed (recording, stage, index), written as upserts in the completing transaction.
CREATE TABLE outputs (
    recording_id TEXT    NOT NULL,
    stage        TEXT    NOT NULL,
    idx          INTEGER NOT NULL,
    data         TEXT    NOT NULL,                  -- JSON
    job_id       INTEGER,
    revision     INTEGER NOT NULL DEFAULT 1,        -- how many times this key was committed
    updated_at   REAL    NOT NULL,
    PRIMARY KEY (recording_id, stage, idx)
) WITHOUT ROWID;

CREATE TABLE queue_flags (
    queue     TEXT PRIMARY KEY,
    paused    INTEGER NOT NULL DEFAULT 0,
    reason    TEXT,
    changed_at REAL NOT NULL
);

-- Workers register and heartbeat, so that recovery can tell a crashed worker from a slow one.
CREATE TABLE workers (
    worker_id    TEXT PRIMARY KEY,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    queues       TEXT NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL
);

-- One row: the recovery manager's counters, shared by every process.
CREATE TABLE recovery_stats (
    id                  INTEGER PRIMARY KEY CHECK (id = 1),
    runs                INTEGER NOT NULL DEFAULT 0,
    attempted           INTEGER NOT NULL DEFAULT 0,
    successful          INTEGER NOT NULL DEFAULT 0,
    requeued            INTEGER NOT NULL DEFAULT 0,
    escalated           INTEGER NOT NULL DEFAULT 0,
    last_run_at         REAL,
    last_recovered      INTEGER NOT NULL DEFAULT 0
);
INSERT INTO recovery_stats (id) VALUES (1);
