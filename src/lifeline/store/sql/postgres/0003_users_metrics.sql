-- Users, revoked tokens, failed-login throttling, and per-queue attempt metrics (PostgreSQL).

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT             NOT NULL,
    password_hash TEXT             NOT NULL,
    display_name  TEXT,
    is_active     BOOLEAN          NOT NULL DEFAULT TRUE,
    is_superuser  BOOLEAN          NOT NULL DEFAULT FALSE,
    created_at    DOUBLE PRECISION NOT NULL
);
-- e-mail addresses are unique regardless of case (SQLite: COLLATE NOCASE)
CREATE UNIQUE INDEX users_email ON users (lower(email));

-- Logged-out tokens until they would have expired anyway.
CREATE TABLE revoked_tokens (
    token_id   TEXT PRIMARY KEY,
    expires_at DOUBLE PRECISION NOT NULL
);

-- Failed logins per key ("account:EMAIL" or "address:IP"), for slowing down brute force.
CREATE TABLE login_failures (
    key      TEXT PRIMARY KEY,
    failures INTEGER          NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,
    last_at  DOUBLE PRECISION NOT NULL
);

-- Attempt outcomes and durations per queue, kept as counters written in the transaction that
-- ends each attempt: exact across processes and hosts, and untouched by retention. The store adds
-- up a whole write batch first and upserts the sums in key order (one row lock each, always taken
-- in the same order, so two processes never deadlock on them).
CREATE TABLE attempt_metrics (
    queue        TEXT             NOT NULL,
    outcome      TEXT             NOT NULL,
    bucket       INTEGER          NOT NULL,
    count        BIGINT           NOT NULL,
    duration_sum DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (queue, outcome, bucket)
);
