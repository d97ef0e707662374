-- Credential leases. A lease is written as an intent (`pending`) before its credential exists
-- on the target server, so a crash between the two never leaves a credential nobody tracks;
-- `active` once minted; `revoked` once removed; `failed` when minting failed (the engine
-- removed what it made) or revocation gave up after its retries (kept and reported, never
-- dropped). Never a password or an admin URL.
CREATE TABLE leases (
    id              TEXT    PRIMARY KEY,
    role            TEXT    NOT NULL,
    engine          TEXT    NOT NULL,
    principal       TEXT    NOT NULL UNIQUE,
    task            TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    agent_uid       TEXT    NOT NULL,
    initiator       TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    state           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    revoked_at      INTEGER
);
-- The expiry worker claims active leases past their expiry.
CREATE INDEX leases_due ON leases (state, expires_at);
-- Ending a task revokes its leases.
CREATE INDEX leases_task ON leases (task, state);
-- Suspending an agent revokes its leases.
CREATE INDEX leases_agent ON leases (agent, state);

-- One row: this installation's lease scope, the first characters of every lease id it makes.
-- The reconciler removes only principals under its own scope, so two installations sharing a
-- database server never remove each other's credentials.
CREATE TABLE lease_scope (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    scope TEXT    NOT NULL
);
