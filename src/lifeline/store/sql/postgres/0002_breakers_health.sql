-- Lifeline schema, version 2 (PostgreSQL): shared circuit breakers and the health monitor's
-- history. Times are Unix seconds (double precision).

-- One row per external service. A change runs inside one transaction that first takes a
-- transaction-scoped advisory lock on the breaker's name, so every process on every host sees one
-- breaker, and exactly one of them gets the half-open probe.
CREATE TABLE breakers (
    name              TEXT PRIMARY KEY,
    state             TEXT    NOT NULL,             -- closed | open | half_open
    outcomes          TEXT    NOT NULL DEFAULT '',  -- the sliding window, oldest first: s / f
    opened_at         DOUBLE PRECISION,
    open_until        DOUBLE PRECISION,
    consecutive_opens INTEGER NOT NULL DEFAULT 0,   -- the open wait doubles with each one
    probe_owner       TEXT,                         -- the half-open probe's lease: who holds it ...
    probe_expires_at  DOUBLE PRECISION,             -- ... and until when
    last_error        TEXT,
    updated_at        DOUBLE PRECISION
);

-- Every state change of a breaker, with its reason (the newest few hundred per breaker are kept).
CREATE TABLE breaker_events (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT             NOT NULL,
    from_state TEXT             NOT NULL,
    to_state   TEXT             NOT NULL,
    reason     TEXT             NOT NULL,
    at         DOUBLE PRECISION NOT NULL
);
CREATE INDEX breaker_events_name ON breaker_events (name, id);

-- Each service's current health.
CREATE TABLE health_state (
    service              TEXT PRIMARY KEY,
    status               TEXT    NOT NULL,          -- healthy | degraded | unhealthy | unknown
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_checked_at      DOUBLE PRECISION,
    last_latency         DOUBLE PRECISION,
    changed_at           DOUBLE PRECISION,
    detail               TEXT
);

-- The latest checks of each service (bounded per service): response times for p50/p95.
CREATE TABLE health_checks (
    id         BIGSERIAL PRIMARY KEY,
    service    TEXT             NOT NULL,
    status     TEXT             NOT NULL,
    latency    DOUBLE PRECISION,                    -- seconds; NULL when the service did not answer
    error      TEXT,
    detail     TEXT,
    checked_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX health_checks_service ON health_checks (service, id);

-- Changes of each service's status (bounded per service).
CREATE TABLE health_events (
    id          BIGSERIAL PRIMARY KEY,
    service     TEXT             NOT NULL,
    from_status TEXT             NOT NULL,
    to_status   TEXT             NOT NULL,
    reason      TEXT             NOT NULL,
    at          DOUBLE PRECISION NOT NULL
);
CREATE INDEX health_events_service ON health_events (service, id);

-- The store's own health probe writes here: proof that a write is committed.
CREATE TABLE store_ping (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at DOUBLE PRECISION NOT NULL
);
