-- SPEC 7.2: targeting servers by label.
-- The task's target as JSON ({labels, mode, batch, servers}), or NULL for a
-- task aimed at one server_id.
ALTER TABLE tasks ADD COLUMN target TEXT;
-- A group's child names its group.
ALTER TABLE tasks ADD COLUMN parent_id TEXT COLLATE "C";
CREATE INDEX tasks_by_parent ON tasks (parent_id);
