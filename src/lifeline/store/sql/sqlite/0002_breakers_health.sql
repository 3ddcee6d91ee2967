-- Lifeline schema, version 2: shared circuit breakers and the health monitor's history.
-- Times are Unix seconds (REAL).

-- One row per external service. Every process reads and changes these rows inside the writer's
-- BEGIN IMMEDIATE transaction, so the breaker is one breaker for the whole fleet.
CREATE TABLE breakers (
    name              TEXT PRIMARY KEY,
    state             TEXT    NOT NULL,             -- closed | open | half_open
    outcomes          TEXT    NOT NULL DEFAULT '',  -- the sliding window, oldest first: s = success, f = failure
    opened_at         REAL,
    open_until        REAL,
    consecutive_opens INTEGER NOT NULL DEFAULT 0,   -- the open wait doubles with each one
    probe_owner       TEXT,                         -- the half-open probe's lease: who holds it ...
    probe_expires_at  REAL,                         -- ... and until when
    last_error        TEXT,
    updated_at        REAL
);

-- Every state change of a breaker, with its reason (the newest few hundred per breaker are kept).
CREATE TABLE breaker_events (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    from_state TEXT NOT NULL,
    to_state   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    at         REAL NOT NULL
);
CREATE INDEX breaker_events_name ON breaker_events (name, id);

-- Each service's current health.
CREATE TABLE health_state (
    service              TEXT PRIMARY KEY,
    status               TEXT    NOT NULL,          -- healthy | degraded | unhealthy | unknown
    consecutive_failures INTEGER NOT NULL DEFAULT 0,
    last_error           TEXT,
    last_checked_at      REAL,
    last_latency         REAL,
    changed_at           REAL,
    detail               TEXT
);

-- The latest checks of each service (bounded per service): response times for p50/p95.
CREATE TABLE health_checks (
    id         INTEGER PRIMARY KEY,
    service    TEXT NOT NULL,
    status     TEXT NOT NULL,
    latency    REAL,                                -- seconds; NULL when the service did not answer
    error      TEXT,
    detail     TEXT,
    checked_at REAL NOT NULL
);
CREATE INDEX health_checks_service ON health_checks (service, id);

-- Changes of each service's status (bounded per service).
CREATE TABLE health_events (
    id          INTEGER PRIMARY KEY,
    service     TEXT NOT NULL,
    from_status TEXT NOT NULL,
    to_status   TEXT NOT NULL,
    reason      TEXT NOT NULL,
    at          REAL NOT NULL
);
CREATE INDEX health_events_service ON health_events (service, id);

-- The store's own health probe writes here: proof that a write reaches the disk.
CREATE TABLE store_ping (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at REAL NOT NULL
);
