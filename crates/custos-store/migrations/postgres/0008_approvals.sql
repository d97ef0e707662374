-- Approval requests: a held Tier 3 call, bound to its task, exposed tool, canonical argument
-- digest and policy version. `pending` answers once (`approved` or `denied`); an approved one
-- is used once (`executed`). Expiry is a time, not a write: a pending or approved approval
-- past `expires_at` is expired whatever its stored state. `arguments` are redacted for review.
CREATE TABLE approvals (
    id              TEXT    PRIMARY KEY,
    task            TEXT    NOT NULL,
    agent           TEXT    NOT NULL,
    initiator       TEXT    NOT NULL,
    started_by      TEXT    NOT NULL,
    tool            TEXT    NOT NULL,
    upstream        TEXT    NOT NULL,
    arguments       TEXT    NOT NULL,
    digest          TEXT    NOT NULL,
    tier            BIGINT  NOT NULL,
    policy_version  BIGINT  NOT NULL,
    rule            TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    expires_at      BIGINT  NOT NULL,
    decided_at      BIGINT,
    decided_by      TEXT,
    note            TEXT,
    executed_at     BIGINT,
    expiry_reported BIGINT  NOT NULL DEFAULT 0
);
-- The hold stage finds the latest request for the exact call.
CREATE INDEX approvals_binding ON approvals (task, tool, digest, policy_version, created_at);
-- Listings: pending first, newest first.
CREATE INDEX approvals_state ON approvals (state, created_at);
