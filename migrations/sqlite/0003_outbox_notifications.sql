-- Notifications (oslo Notifier format) go through the outbox too, so they
-- are sent exactly for committed ends. A workflow's end has no task: its
-- row names the workflow instead (task_id is then empty).
ALTER TABLE outbox ADD COLUMN workflow_id TEXT;
