-- Audit records carry their format (their hash covers that format's fields), the call id that
-- links a decision to its result, and the policy version it was decided under.
ALTER TABLE audit_log ADD COLUMN format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN call_id TEXT;
ALTER TABLE audit_log ADD COLUMN policy_version INTEGER;
CREATE INDEX audit_log_call ON audit_log (call_id);

-- The operator who started a task: `started_by` everywhere ("initiator" is the human on whose
-- behalf, as in audit records).
ALTER TABLE tasks RENAME COLUMN initiator TO started_by;

-- The registry's policy version: bumped by every change to what decides calls (upstreams,
-- templates), read by every replica, recorded with every decision.
CREATE TABLE registry_meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    policy_version  INTEGER NOT NULL
);
INSERT INTO registry_meta (id, policy_version) VALUES (1, 1);
