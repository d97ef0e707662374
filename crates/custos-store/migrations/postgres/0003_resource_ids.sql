-- Every resource gets an immutable id when it is created; an update keeps it, a delete and
-- re-create under the same name gets a new one. Tasks bind to their agent's id, so an agent
-- deleted and re-created under the same name does not inherit the old one's tasks and tokens.
ALTER TABLE resources ADD COLUMN uid TEXT;
UPDATE resources SET uid = lower(kind) || '_' || md5(random()::text || clock_timestamp()::text || name) WHERE uid IS NULL;
CREATE UNIQUE INDEX resources_uid ON resources (uid);

ALTER TABLE tasks ADD COLUMN agent_uid TEXT;
-- Tasks from before ids existed belong to the agent registered under their name now, if any.
UPDATE tasks SET agent_uid = (
    SELECT r.uid FROM resources r WHERE r.kind = 'Agent' AND r.name = tasks.agent
);
UPDATE tasks SET agent_uid = 'agent_gone' WHERE agent_uid IS NULL;

-- The expiry watcher reads active tasks by expiry.
CREATE INDEX tasks_expiry ON tasks (state, expires_at);

-- No query reads audit records by call id (a trace reads a task's records in order); the index
-- cost a b-tree insert per record on the hot path.
DROP INDEX audit_log_call;
