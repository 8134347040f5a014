-- SPEC 7.3: operating a run.
-- The retry policy beyond retries and retry_delay_s.
ALTER TABLE tasks ADD COLUMN retry_backoff REAL NOT NULL DEFAULT 1.0;
ALTER TABLE tasks ADD COLUMN retry_max_delay_s BIGINT NOT NULL DEFAULT 3600;
-- JSON list of exit codes, or NULL: every failure is retried.
ALTER TABLE tasks ADD COLUMN retry_exit_codes TEXT;
-- When a retry's message is due, while it waits for its delay.
ALTER TABLE tasks ADD COLUMN next_attempt_at BIGINT;
-- 1 once the current attempt was handed out; a waiting task with 0 waits for
-- the release rule (its dependencies, a resume, a rerun).
ALTER TABLE tasks ADD COLUMN released BIGINT NOT NULL DEFAULT 1;
UPDATE tasks SET released = 0 WHERE state = 'waiting' AND attempt = 0;

ALTER TABLE workflows ADD COLUMN paused BIGINT NOT NULL DEFAULT 0;

-- The results of attempts a later attempt replaced (the current one stays
-- on the task row): every attempt's result stays readable.
CREATE TABLE task_attempts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    result      TEXT NOT NULL,
    recorded_at BIGINT NOT NULL
);
CREATE INDEX task_attempts_by_task ON task_attempts (task_id, id);
