-- SPEC 7.1: the values a task's input references resolved to when it was
-- released (JSON object: input name -> {value, from}); NULL until then.
ALTER TABLE tasks ADD COLUMN resolved_inputs TEXT;
