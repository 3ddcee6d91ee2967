-- Users, revoked tokens, failed-login throttling, and per-queue attempt metrics.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL COLLATE NOCASE UNIQUE,
    password_hash TEXT NOT NULL,
    display_name  TEXT,
    is_active     INTEGER NOT NULL DEFAULT 1,
    is_superuser  INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL
);

-- Logged-out tokens until they would have expired anyway.
CREATE TABLE revoked_tokens (
    token_id   TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
);

-- Failed logins per key ("account:EMAIL" or "address:IP"), for slowing down brute force.
CREATE TABLE login_failures (
    key        TEXT PRIMARY KEY,
    failures   INTEGER NOT NULL,
    first_at   REAL NOT NULL,
    last_at    REAL NOT NULL
);

-- Attempt outcomes and durations per queue, kept as counters written in the transaction that
-- ends each attempt: exact across processes and hosts, and untouched by retention.
-- bucket is the index of the first histogram bound the duration fits under (see metrics.py).
CREATE TABLE attempt_metrics (
    queue        TEXT    NOT NULL,
    outcome      TEXT    NOT NULL,
    bucket       INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    duration_sum REAL    NOT NULL,
    PRIMARY KEY (queue, outcome, bucket)
) WITHOUT ROWID;
