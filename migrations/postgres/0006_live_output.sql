-- SPEC 7.5: the live output of running attempts, as workers sent it. One row
-- per chunk; a chunk sent again (after a reconnect) is the same row.
CREATE TABLE task_output (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id      TEXT COLLATE "C" NOT NULL,
    attempt      BIGINT NOT NULL,
    stream       TEXT NOT NULL,      -- 'stdout' or 'stderr'
    offset_bytes BIGINT NOT NULL,    -- where data starts in its stream
    data         TEXT NOT NULL,
    truncated    BIGINT NOT NULL DEFAULT 0,  -- 1: the stream's cap marker
    UNIQUE (task_id, attempt, stream, offset_bytes)
);
CREATE INDEX task_output_by_task ON task_output (task_id, id);
