-- Taint: when an untrusted tool (web, e-mail, tickets) first returned content to the task,
-- and which tool. Policy raises later calls' tiers from then on.
ALTER TABLE tasks ADD COLUMN tainted_at BIGINT;
ALTER TABLE tasks ADD COLUMN tainted_by TEXT;
