-- Lifeline schema, version 1 (PostgreSQL): jobs, their attempts, recordings, stage outputs, queue
-- flags, workers and recovery statistics. The same tables as the SQLite schema; times are Unix
-- seconds (double precision), taken from the store's clock so that tests can move time.

CREATE TABLE jobs (
    id               BIGSERIAL PRIMARY KEY,
    queue            TEXT             NOT NULL,
    state            TEXT             NOT NULL,
    priority         INTEGER          NOT NULL DEFAULT 0,
    run_at           DOUBLE PRECISION NOT NULL,
    payload          JSON             NOT NULL,     -- kept as sent (json, not jsonb)
    attempts         INTEGER          NOT NULL DEFAULT 0,
    max_attempts     INTEGER          NOT NULL,
    lost_count       INTEGER          NOT NULL DEFAULT 0,   -- leases that expired (worker lost)
    claims           INTEGER          NOT NULL DEFAULT 0,   -- every claim, deferred ones included
    lease_owner      TEXT,
    lease_expires_at DOUBLE PRECISION,
    recording_id     TEXT,
    user_id          TEXT,
    client_id        TEXT,
    idempotency_key  TEXT,
    last_error       TEXT,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    finished_at      DOUBLE PRECISION
);

-- Indexes are partial where they can be. A claim or a completion changes indexed columns, so it is
-- never a HOT update and adds an entry to every index whose WHERE the new row version matches:
-- the fewer of them, the less each state change writes (and the less VACUUM has to clean).
-- The claim walks this index in order (FOR UPDATE SKIP LOCKED); it holds only claimable rows.
CREATE INDEX jobs_claimable ON jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('pending', 'failed', 'retry');
-- The recovery manager's scan of expired leases.
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE state = 'processing';
-- Finished jobs: a row enters once, when it finishes. Counts, throughput, dead letters, retention.
CREATE INDEX jobs_finished ON jobs (queue, state, updated_at)
    WHERE state IN ('completed', 'cancelled', 'dead_letter');
CREATE UNIQUE INDEX jobs_idempotency ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_recording ON jobs (recording_id) WHERE recording_id IS NOT NULL;
CREATE INDEX jobs_client ON jobs (client_id) WHERE client_id IS NOT NULL;
CREATE INDEX jobs_user ON jobs (user_id) WHERE user_id IS NOT NULL;

-- The audit trail: one row per claim, written at the claim and closed when the attempt ends.
CREATE TABLE attempts (
    job_id      BIGINT           NOT NULL,          -- jobs.id; deleted with its job
    claim       INTEGER          NOT NULL,
    worker_id   TEXT             NOT NULL,
    started_at  DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    outcome     TEXT             NOT NULL,
    error       TEXT,
    PRIMARY KEY (job_id, claim)
);

CREATE TABLE recordings (
    audio_uuid TEXT PRIMARY KEY,
    user_id    TEXT,
    client_id  TEXT,
    created_at DOUBLE PRECISION NOT NULL
    -- no status column: a recording's status is derived from its jobs
);
CREATE INDEX recordings_user ON recordings (user_id, created_at);
CREATE INDEX recordings_client ON recordings (client_id, created_at);

-- Stage outputs keyed (recording, stage, index), written as upserts in the completing transaction.
CREATE TABLE outputs (
    recording_id TEXT             NOT NULL,
    stage        TEXT             NOT NULL,
    idx          INTEGER          NOT NULL,
    data         JSON             NOT NULL,
    job_id       BIGINT,
    revision     INTEGER          NOT NULL DEFAULT 1,  -- how many times this key was committed
    updated_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (recording_id, stage, idx)
);

CREATE TABLE queue_flags (
    queue      TEXT PRIMARY KEY,
    paused     BOOLEAN          NOT NULL DEFAULT FALSE,
    reason     TEXT,
    changed_at DOUBLE PRECISION NOT NULL
);

-- Workers register and heartbeat, so that recovery can tell a crashed worker from a slow one.
CREATE TABLE workers (
    worker_id    TEXT PRIMARY KEY,
    hostname     TEXT             NOT NULL,
    pid          INTEGER          NOT NULL,
    queues       TEXT             NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    stopped_at   DOUBLE PRECISION
);

-- One row: the recovery manager's counters, shared by every process on every host.
CREATE TABLE recovery_stats (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    runs           BIGINT  NOT NULL DEFAULT 0,
    attempted      BIGINT  NOT NULL DEFAULT 0,
    successful     BIGINT  NOT NULL DEFAULT 0,
    requeued       BIGINT  NOT NULL DEFAULT 0,
    escalated      BIGINT  NOT NULL DEFAULT 0,
    last_run_at    DOUBLE PRECISION,
    last_recovered INTEGER NOT NULL DEFAULT 0
);
INSERT INTO recovery_stats (id) VALUES (1);
