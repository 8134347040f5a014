-- bora's schema. Ids are UUID strings, times are microseconds since the Unix
-- epoch (BIGINT), JSON is TEXT: types that SQLite and PostgreSQL share.

CREATE TABLE workflows (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    cancelled   BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE tasks (
    id                    TEXT PRIMARY KEY,
    workflow_id           TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    server_id             TEXT NOT NULL,
    task_group            TEXT NOT NULL,
    config                TEXT NOT NULL,
    inputs                TEXT NOT NULL,
    outputs               TEXT NOT NULL,
    options               TEXT NOT NULL,
    on_dependency_failure TEXT NOT NULL,
    timeout_s             BIGINT NOT NULL,
    retries               BIGINT NOT NULL,
    retry_delay_s         BIGINT NOT NULL,
    delivery              TEXT NOT NULL,
    state                 TEXT NOT NULL,
    -- Incremented at each publish; results name the attempt they belong to.
    attempt               BIGINT NOT NULL DEFAULT 0,
    -- Attempts that failed or timed out (counted against retries).
    failures              BIGINT NOT NULL DEFAULT 0,
    -- Attempts lost with their worker (counted against dispatch.max_redeliveries).
    redeliveries          BIGINT NOT NULL DEFAULT 0,
    result                TEXT,
    created_at            BIGINT NOT NULL,
    queued_at             BIGINT,
    started_at            BIGINT,
    finished_at           BIGINT,
    last_heartbeat_at     BIGINT,
    updated_at            BIGINT NOT NULL,
    UNIQUE (workflow_id, name)
);
CREATE INDEX tasks_by_state ON tasks (workflow_id, state);
CREATE INDEX tasks_by_server ON tasks (server_id, state);

-- task_id depends on dep_id (both in the same workflow).
CREATE TABLE task_deps (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    dep_id  TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, dep_id)
);
CREATE INDEX task_deps_by_dep ON task_deps (dep_id);

-- Messages decided in a committed transaction and not yet confirmed by the
-- broker. The relay publishes them and deletes them once confirmed.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,   -- 'task' or 'cancel'
    task_id    TEXT NOT NULL,
    attempt    BIGINT NOT NULL,
    server_id  TEXT NOT NULL,
    not_before BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX outbox_by_due ON outbox (not_before);
CREATE INDEX outbox_by_task ON outbox (task_id);

CREATE TABLE servers (
    server_id  TEXT PRIMARY KEY,
    kind       TEXT NOT NULL DEFAULT 'guest',
    registered BIGINT NOT NULL DEFAULT 0,
    last_seen  BIGINT,
    created_at BIGINT NOT NULL
);

-- One row per state change, in commit order: the source of the SSE stream
-- (`id` is the event id a client resumes from with Last-Event-ID).
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT NOT NULL,
    task_id     TEXT,
    task_name   TEXT,
    server_id   TEXT,
    kind        TEXT NOT NULL,   -- 'task' or 'workflow'
    state       TEXT NOT NULL,
    attempt     BIGINT,
    at          BIGINT NOT NULL
);
CREATE INDEX events_by_workflow ON events (workflow_id, id);
