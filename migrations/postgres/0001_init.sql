-- bora's schema on PostgreSQL: the same tables, columns and indexes as
-- migrations/sqlite (which got there in three steps), so one set of queries
-- serves both. Ids are UUID strings in the "C" collation (byte order, which
-- for UUIDv7 is creation order), times are microseconds since the Unix epoch
-- (BIGINT), JSON is TEXT.

CREATE TABLE workflows (
    id          TEXT COLLATE "C" PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT,
    cancelled   BIGINT NOT NULL DEFAULT 0,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE tasks (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    workflow_id           TEXT COLLATE "C" NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    name                  TEXT NOT NULL,
    server_id             TEXT COLLATE "C" NOT NULL,
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
    attempt               BIGINT NOT NULL DEFAULT 0,
    failures              BIGINT NOT NULL DEFAULT 0,
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
CREATE INDEX tasks_active ON tasks (state, queued_at) WHERE state IN ('queued', 'running');

CREATE TABLE task_deps (
    task_id TEXT COLLATE "C" NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    dep_id  TEXT COLLATE "C" NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    PRIMARY KEY (task_id, dep_id)
);
CREATE INDEX task_deps_by_dep ON task_deps (dep_id);

-- Several dispatchers share this table: a relay claims due rows by setting
-- lease_until (FOR UPDATE SKIP LOCKED), or holds the rows its own commits
-- hand it, and deletes them once the broker confirmed them. A row whose
-- relay died is due again when its lease ends.
CREATE TABLE outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    task_id     TEXT COLLATE "C" NOT NULL,
    attempt     BIGINT NOT NULL,
    server_id   TEXT NOT NULL,
    not_before  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    workflow_id TEXT COLLATE "C",
    lease_until BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX outbox_by_due ON outbox (not_before);
CREATE INDEX outbox_by_task ON outbox (task_id);

CREATE TABLE servers (
    server_id  TEXT COLLATE "C" PRIMARY KEY,
    kind       TEXT NOT NULL DEFAULT 'guest',
    registered BIGINT NOT NULL DEFAULT 0,
    last_seen  BIGINT,
    created_at BIGINT NOT NULL
);

-- Event ids come from a sequence, so they are assigned at insert, not at
-- commit. Every transaction that appends a workflow's events holds that
-- workflow's row lock until it commits, so within one workflow (the unit an
-- event stream reads) ids still appear in commit order.
CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id TEXT COLLATE "C" NOT NULL,
    task_id     TEXT,
    task_name   TEXT,
    server_id   TEXT,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempt     BIGINT,
    at          BIGINT NOT NULL
);
CREATE INDEX events_by_workflow ON events (workflow_id, id);
