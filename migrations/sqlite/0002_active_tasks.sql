-- The scanner looks for running attempts whose worker went silent and for
-- attempts past their deadline: only queued and running tasks matter.
CREATE INDEX tasks_active ON tasks (state, queued_at) WHERE state IN ('queued', 'running');
